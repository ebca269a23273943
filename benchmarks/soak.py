"""Soak test of the device loop: the demo source in real time for minutes, memory sampled as it goes.

Runs ``edge-mer run``'s loop (demo source at 640x480, 30 fps, ONNX Runtime with the
packaged model, OpenCV DIS flow) for ``--minutes``, records resident memory every
10 s, frames skipped, ring drops and event latency, and writes
``benchmarks/results/soak.md`` and ``.json``. Memory is flat when the last
minutes grow by no more than a few MB.

    python benchmarks/soak.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

from edge_mer.errors import script_main
from edge_mer.flow.stage import make_stage
from edge_mer.runtime.artifact import default_model
from edge_mer.runtime.backends import open_backend
from edge_mer.runtime.backends.onnxruntime import cpu_name
from edge_mer.runtime.events import EventWriter
from edge_mer.runtime.loop import LoopConfig, Recognizer, run_loop
from edge_mer.runtime.session import summarise
from edge_mer.runtime.sources import open_source

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    seconds = args.minutes * 60
    backend = open_backend("onnxruntime", default_model(), threads=args.threads)
    source = open_source(f"demo://?seconds={seconds + 5:g}&fps=30&size=640x480&seed=7")
    stats, timer = run_loop(source, Recognizer(backend, make_stage("opencv-dis", backend.size)),
                            EventWriter(None, stdout=False), LoopConfig(duration=seconds))
    source.close()
    s = summarise(stats, timer)
    mem = [m for _, m in stats.memory_mb]
    first_min = [m for t, m in stats.memory_mb if t <= 60] or mem[:1]
    doc = {"date": dt.date.today().isoformat(), "machine": f"{cpu_name()}, {os.cpu_count()} cores",
           "minutes": args.minutes, "backend": backend.describe(), "summary": s,
           "memory_after_first_minute_mb": max(first_min), "memory_end_mb": mem[-1], "memory_peak_mb": max(mem)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lat = s["event_latency_ms"] or {}
    lines = [f"# Soak: the device loop for {args.minutes:g} minutes ({doc['date']})", "",
             f"Machine: {doc['machine']}. Demo source 640x480 at 30 fps in real time, {doc['backend']}, OpenCV DIS.",
             "", "Command: `python benchmarks/soak.py`", "",
             "| frames | fps | skipped | ring drops | events | latency p50 / p95 (ms) | RSS after 1 min (MB) | "
             "RSS at end (MB) | peak RSS (MB) |", "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
             f"| {s['frames']} | {s['fps']:.1f} | {s['skipped_frames']} | {s['ring'].get('dropped', 0)} | "
             f"{s['events']} | {lat.get('p50', '')} / {lat.get('p95', '')} | "
             f"{doc['memory_after_first_minute_mb']:.0f} | "
             f"{doc['memory_end_mb']:.0f} | {doc['memory_peak_mb']:.0f} |", "",
             "Resident memory over time (s, MB): " + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in stats.memory_mb)]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
