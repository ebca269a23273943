"""Timing of the device loop for every backend x flow pair available, and of the backends alone."""

from __future__ import annotations

import contextlib
import sys
import threading
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from edge_mer.errors import UserError
from edge_mer.runtime.backends import available, open_backend
from edge_mer.runtime.backends.base import sample_inputs
from edge_mer.runtime.gpu import cuda_unavailable
from edge_mer.runtime.sinks import EventSinks, SinkURI
from edge_mer.runtime.timing import call_times_ms, percentiles


def _targets(model: Path, backends: list[str] | None, checkpoint: Path | None) -> list[tuple[str, Path, str]]:
    """(backend, file, precision) to time; unavailable ones are skipped."""
    have = available()
    wanted = backends or [b for b in ("tensorrt", "onnxruntime", "torch", "torch-tensorrt") if have[b]]
    out: list[tuple[str, Path, str]] = []
    for b in wanted:
        if not have.get(b):
            print(f"bench: {b} is not available here, skipped", file=sys.stderr)
            continue
        if b == "onnxruntime":
            out.append((b, model, "file"))
            from edge_mer.runtime.artifact import load_artifact

            other = load_artifact(model).companion()
            if other is not None:
                out.append((b, other.path, "file"))
        elif b == "tensorrt":
            out.append((b, model, "file"))
        elif checkpoint is not None:
            out.append((b, checkpoint, "file"))
    if not out:
        raise UserError("no backend to time here")
    return out


def bench_models(model: Path, backends: list[str] | None = None, runs: int = 200, threads: int | None = 2,
                 checkpoint: Path | None = None) -> list[dict[str, Any]]:
    """Batch-1 latency of each backend on the model (and its companion file)."""
    rows = []
    for name, path, precision in _targets(model, backends, checkpoint):
        be = open_backend(name, path, threads=threads, precision=precision)
        m, t = sample_inputs(1, be.size)
        ms = call_times_ms(partial(be.infer, m, t), runs, warmup=10)
        rows.append({"backend": be.describe(), "file": path.name, "precision": be.precision,
                     "bytes": path.stat().st_size, **percentiles(ms), "throughput_per_s": round(1e3 / ms.mean(), 1)})
        be.close()
    return rows


def bench_loop(model: Path, backends: list[str] | None = None, flows: list[str] | None = None, frames: int = 600,
               threads: int | None = 2, serve: bool = False, sinks: list[SinkURI] | None = None,
               spool: Path | None = None) -> list[dict[str, Any]]:
    """The loop, headless, on the demo source (as fast as it goes), for every backend x flow pair. ``serve``: with
    the live view on a loopback port and one client reading its stream; ``sinks``: events also to these."""
    from edge_mer.flow.opencv import has_tvl1
    from edge_mer.flow.person import person_rms
    from edge_mer.flow.stage import make_stage
    from edge_mer.runtime.loop import LoopConfig, Recognizer, run_loop
    from edge_mer.runtime.serve import LiveView
    from edge_mer.runtime.session import model_meta, motion_options
    from edge_mer.runtime.sources import open_source

    if flows is None:
        flows = (["cuda"] if cuda_unavailable() is None else []) + ["opencv-dis"] + \
            (["opencv-tvl1"] if has_tvl1() else [])
    rows = []
    for name, path, _ in _targets(model, backends, None):
        for flow in flows:
            be = open_backend(name, path, threads=threads, precision="file")
            try:  # the model's own crop size and flow resolution
                stage = make_stage(flow, be.size, motion_options(model_meta(be)))
            except UserError as exc:
                be.close()
                print(f"bench: flow {flow} skipped: {exc}", file=sys.stderr)
                continue
            source = open_source(f"demo://?seconds={frames / 30 + 1:g}&fps=30&size=640x480&seed=0", realtime=False)
            writer = EventSinks(sinks or [], spool=spool, stdout=False)
            view = LiveView(("127.0.0.1", 0), fps=10.0, sinks=writer) if serve else None
            watcher = _watch(view) if view is not None else None
            try:
                recognizer = Recognizer(be, stage, person_rms(model_meta(be)))
                stats, timer = run_loop(source, recognizer, writer, LoopConfig(max_frames=frames), view=view)
            finally:
                if view is not None:
                    view.close()
                writer.close()
                source.close()
            s = timer.summary()
            row = {"backend": be.describe(), "precision": be.precision, "file": path.name, "flow": flow,
                   "frames": stats.frames, "events": stats.events,
                   "fps": round(stats.frames / max(s["wall_s"], 1e-9), 1), "stages_ms": s["stages_ms"],
                   "cpu_share": s["cpu_share"], "peak_rss_mb": s["peak_rss_mb"]}
            if view is not None:
                assert watcher is not None
                watcher.join(5.0)
                row["serve"] = view.report()
            if sinks:
                row["sinks"] = writer.report()[0]
            rows.append(row)
            be.close()
    return rows


def _watch(view: Any) -> threading.Thread:
    """A client that reads the view's MJPEG stream until the view closes (what a browser costs the device)."""
    def read() -> None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{view.url}stream.mjpg", timeout=30) as stream:
            while stream.read(65536):
                pass
    thread = threading.Thread(target=read, name="bench-stream-client", daemon=True)
    thread.start()
    return thread


def format_table(rows: list[dict[str, Any]], model_only: bool = False) -> str:
    if model_only:
        lines = ["| backend | file | MB | p50 ms | p95 ms | p99 ms | per s |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['backend']} | {r['file']} | {r['bytes'] / 1e6:.2f} | {r['p50']:.3f} | {r['p95']:.3f} "
                         f"| {r['p99']:.3f} | {r['throughput_per_s']:.0f} |")
        return "\n".join(lines)
    stages = ("capture", "face", "signal", "flow", "inference", "total",
              *(x for x in ("serve", "sinks") if any(x in r["stages_ms"] for r in rows)))
    lines = ["| backend | flow | fps | " + " | ".join(f"{s} p50/p95/p99 ms" for s in stages) +
             " | CPU | peak MB | events |", "|---|---|---:|" + "---:|" * len(stages) + "---:|---:|---:|"]
    for r in rows:
        cells = []
        for s in stages:
            v = r["stages_ms"].get(s)
            cells.append(f"{v['p50']:.2f}/{v['p95']:.2f}/{v['p99']:.2f}" if v else "")
        lines.append(f"| {r['backend']} | {r['flow']} | {r['fps']:.1f} | " + " | ".join(cells) +
                     f" | {r['cpu_share']:.0%} | {r['peak_rss_mb']:.0f} | {r['events']} |")
    return "\n".join(lines)
