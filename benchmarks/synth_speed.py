"""Generation speed of the synthetic micro-expression renderer.

Times ``write_video`` (render + encode, nuisances on) at a 112-pixel face crop and
at 640x480, and ``write_dataset`` for a CASME II layout at its real 640x480 and
200 fps, then writes a Markdown table and JSON to ``benchmarks/results/``.

    python benchmarks/synth_speed.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2

from edge_mer.data.synthetic import DatasetConfig, write_dataset
from edge_mer.errors import script_main
from edge_mer.synth.video import VideoConfig, write_video

RESULTS = Path(__file__).resolve().parent / "results"


def _video(size: tuple[int, int], seconds: float, tmp: Path, suffix: str) -> dict[str, float]:
    cfg = VideoConfig(seconds=seconds, fps=30.0, size=size)
    start = time.perf_counter()
    s = write_video(cfg, tmp / f"v{size[0]}{suffix}", progress=False)
    elapsed = time.perf_counter() - start
    return {"frames": s.frames, "seconds": round(elapsed, 3), "fps": round(s.frames / elapsed, 1)}


def _dataset(tmp: Path) -> dict[str, float]:
    cfg = DatasetConfig(layout="casme2", subjects=2, clips_per_subject=3)
    start = time.perf_counter()
    s = write_dataset(cfg, tmp / "casme2", progress=False)
    elapsed = time.perf_counter() - start
    return {"frames": s.frames, "seconds": round(elapsed, 3), "fps": round(s.frames / elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="video length per case")
    args = ap.parse_args()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows["video 112x112 (mp4)"] = _video((112, 112), args.seconds, tmp, ".mp4")
        rows["video 640x480 (mp4)"] = _video((640, 480), args.seconds, tmp, ".mp4")
        rows["video 640x480 (JPEG frame folder)"] = _video((640, 480), args.seconds, tmp, "")
        rows["dataset casme2 640x480 JPEG, 200 fps"] = _dataset(tmp)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OpenCV {cv2.__version__}"
    date = dt.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synth_speed.json").write_text(json.dumps({"date": date, "machine": machine, "results": rows},
                                                         indent=2) + "\n")
    lines = [f"# Synthetic generator speed ({date})", "", f"Machine: {machine}.", "",
             "Command: `python benchmarks/synth_speed.py`", "",
             "| case | frames | seconds | frames/s |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['frames']:.0f} | {v['seconds']:.2f} | {v['fps']:.1f} |" for k, v in rows.items()]
    (RESULTS / "synth_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
