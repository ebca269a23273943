"""Feature preparation speed: samples per second for TV-L1 and DIS at S = 112.

Generates a synthetic CASME II dataset at its real frame size (640x480, 200 fps),
then times ``edge-mer data prepare`` (read onset and apex, detect and align the
face, flow, strain, write) for each flow method with all cores, and writes a
Markdown table and JSON to ``benchmarks/results/``.

    python benchmarks/features_speed.py [--subjects 4] [--clips 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
from pathlib import Path

import cv2

from edge_mer.data.synthetic import DatasetConfig, write_dataset
from edge_mer.errors import script_main
from edge_mer.features.prepare import FeatureConfig, prepare

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--clips", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_dataset(DatasetConfig(layout="casme2", subjects=args.subjects, clips_per_subject=args.clips),
                      tmp / "casme2", progress=False)
        for method in ("tvl1", "dis"):
            s = prepare("casme2", tmp / "casme2", tmp / f"f_{method}", FeatureConfig(size=112, flow=method),
                        workers=args.workers, progress=False)
            rows[method] = {"samples": s.written, "seconds": s.seconds, "samples_per_second": s.samples_per_second}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.workers} workers, OpenCV {cv2.__version__}"
    date = dt.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "features_speed.json").write_text(json.dumps({"date": date, "machine": machine, "results": rows},
                                                            indent=2) + "\n")
    lines = [f"# Feature preparation speed ({date})", "", f"Machine: {machine}. Synthetic CASME II, 640x480 "
             "JPEG frames, S = 112.", "", "Command: `python benchmarks/features_speed.py`", "",
             "| flow | samples | seconds | samples/s |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['samples']} | {v['seconds']:.2f} | {v['samples_per_second']:.2f} |"
              for k, v in rows.items()]
    (RESULTS / "features_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
