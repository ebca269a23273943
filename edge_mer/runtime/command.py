"""``edge-mer run`` and ``edge-mer bench``: the device loop from the command line (no torch needed)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edge_mer.errors import UserError
from edge_mer.runtime.selftest import PACKAGED

FLOWS = ("auto", "cuda", "opencv", "opencv-tvl1", "opencv-dis", "reference")


def default_model() -> Path:
    if not PACKAGED.is_file():
        raise UserError(f"the packaged demo model is missing ({PACKAGED}); pass --model MODEL.onnx")
    return PACKAGED


def pick_flow(name: str, model_meta: dict[str, Any]) -> str:
    """``auto``: the flow the model was trained with; TV-L1 on the GPU (``cuda``) where it runs, else OpenCV's."""
    if name != "auto":
        return name
    features = model_meta.get("features") or {}
    trained = (features.get("feature") or {}).get("flow") or "tvl1"
    if trained == "tvl1":
        from edge_mer.flow.stage import cuda_unavailable

        if cuda_unavailable() is None:
            return "cuda"
    return _opencv_flow(trained)


def _opencv_flow(trained: str) -> str:
    """OpenCV's stage for a model trained on ``trained`` flow: TV-L1 when contrib has it, else DIS."""
    from edge_mer.features.flow import has_tvl1

    return "opencv-tvl1" if trained == "tvl1" and has_tvl1() else "opencv-dis"


def open_stage(requested: str, flow: str, size: int) -> tuple[str, Any]:
    """The flow stage ``flow`` (as ``pick_flow`` chose it for ``requested``). Under ``auto`` the CUDA stage must
    pass its self-check against the numpy reference; when it cannot start or fails, OpenCV takes over with a
    note."""
    from edge_mer.flow.stage import make_stage

    if requested != "auto" or flow != "cuda":
        return flow, make_stage(flow, size)
    try:
        from edge_mer.flow.cuda import CudaStage

        stage = CudaStage(size)
        reason = stage.self_check()
    except UserError as exc:
        reason = str(exc)
    if reason is None:
        return flow, stage
    print(f"note: {reason}; using OpenCV", file=sys.stderr)
    fallback = _opencv_flow("tvl1")  # auto picks cuda only for TV-L1 models
    return fallback, make_stage(fallback, size)


def _meta(backend: Any) -> dict[str, Any]:
    art = getattr(backend, "artifact", None) or getattr(backend, "info", None)  # an ONNX file's, an engine's
    if art is not None:
        return dict(art.meta)
    ck = getattr(backend, "checkpoint", None)
    return {"features": ck.get("features")} if ck else {}


def source_uri(args: argparse.Namespace) -> str:
    chosen = [x for x in (args.camera is not None, bool(args.source), args.demo) if x]
    if len(chosen) > 1:
        raise UserError("choose one of --camera, --source and --demo")
    if args.camera is not None:
        return str(args.camera)
    if args.source:
        return str(args.source)
    if args.demo:
        return f"demo://?seconds={args.demo_seconds:g}&fps=30&size=640x480&seed={args.seed}"
    raise UserError("no source: give --camera N, --source URI or --demo")


def check_display() -> None:
    """``--display`` needs OpenCV built with a GUI and a desktop session: one clear line when either is missing."""
    import cv2

    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if gui is None or gui.group(1).upper() == "NONE":
        raise UserError("--display needs OpenCV with a GUI, and this one is headless (install opencv-contrib-python "
                        "instead of the -headless wheel, or use JetPack's OpenCV); --record FILE writes the overlay "
                        "to a video instead")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("--display needs a desktop session (DISPLAY is not set); --record FILE writes the overlay "
                        "to a video instead")


def cmd_run(args: argparse.Namespace) -> int:
    from edge_mer.runtime.backends import open_backend
    from edge_mer.runtime.events import EventWriter
    from edge_mer.runtime.loop import LoopConfig, Recognizer, run_loop
    from edge_mer.runtime.sources import open_source

    if args.display:
        check_display()
    model = Path(args.model) if args.model else default_model()
    uri = source_uri(args)
    source = open_source(uri, realtime=False if args.no_realtime else None)  # a bad source fails first
    backend = open_backend(args.backend, model, threads=args.threads)
    meta = _meta(backend)
    if meta.get("demo"):
        print("note: the packaged DEMO model was trained on synthetic data only", file=sys.stderr)
    flow, stage = open_stage(args.flow, pick_flow(args.flow, meta), backend.size)
    recognizer = Recognizer(backend, stage)
    writer = EventWriter(Path(args.events) if args.events else None, stdout=not args.quiet)
    stopping = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["flag"] = True

    old = signal.signal(signal.SIGINT, on_signal)
    cfg = LoopConfig(max_frames=args.max_frames, duration=args.duration, display=args.display,
                     record=Path(args.record) if args.record else None)
    print(f"edge-mer run: {source.describe()} -> {flow} -> {backend.describe()}", file=sys.stderr)
    try:
        seen: list[tuple[int, int]] = []
        stats, timer = run_loop(source, recognizer, writer, cfg, stop=lambda: stopping["flag"],
                                on_event=lambda e: seen.append((e.onset, e.offset)))
    finally:
        signal.signal(signal.SIGINT, old)
        writer.close()
        source.close()
        backend.close()
    summary = summarise(stats, timer)
    truth = getattr(source, "truth", None)
    if truth is not None:
        summary["truth"] = match_truth(seen, truth, stats.frames)
    if args.json_summary:
        Path(args.json_summary).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(format_summary(summary, interrupted=stopping["flag"]), file=sys.stderr)
    return 0


def summarise(stats: Any, timer: Any) -> dict[str, Any]:
    import numpy as np

    t = timer.summary()
    lat = np.asarray(stats.latencies_ms) if stats.latencies_ms else None
    return {"frames": stats.frames, "spots": stats.spots, "events": stats.events, "skipped_frames": stats.skipped,
            "missed_spots": stats.missed_spots, "no_face_frames": stats.no_face_frames, "ring": stats.ring,
            "fps": round(stats.frames / max(t["wall_s"], 1e-9), 2), "timing": t,
            "event_latency_ms": None if lat is None else
            {"p50": round(float(np.percentile(lat, 50)), 2), "p95": round(float(np.percentile(lat, 95)), 2),
             "max": round(float(lat.max()), 2)},
            "memory_mb": stats.memory_mb, "messages": stats.messages}


def match_truth(pred: list[tuple[int, int]], truth: Any, frames: int) -> dict[str, Any]:
    """MEGC spotting match (IoU >= 0.5) of the events' intervals against the demo source's micro-expressions."""
    from edge_mer.spot.metrics import evaluate_spots

    micro = [(e.onset, e.offset) for e in truth if e.type == "micro" and e.offset < frames]
    m = evaluate_spots(pred, micro)
    return {k: getattr(m, k) for k in ("tp", "fp", "fn", "precision", "recall", "f1")}


def format_summary(s: dict[str, Any], interrupted: bool = False) -> str:
    lines = [("stopped by Ctrl-C: " if interrupted else "") +
             f"{s['frames']} frames at {s['fps']:.1f} fps, {s['spots']} spots, {s['events']} events; "
             f"{s['skipped_frames']} frames skipped, ring drops {s['ring'].get('dropped', 0)}"]
    if s["event_latency_ms"]:
        lat = s["event_latency_ms"]
        lines.append(f"event latency after offset: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms")
    st = s["timing"]["stages_ms"]
    lines.append("stage p50/p95 ms: " + ", ".join(f"{k} {v['p50']:.2f}/{v['p95']:.2f}" for k, v in st.items()))
    lines.append(f"peak memory {s['timing']['peak_rss_mb']:.0f} MB, CPU share {s['timing']['cpu_share']:.0%}")
    if "truth" in s:
        t = s["truth"]
        lines.append(f"against the demo's truth (IoU >= 0.5): TP {t['tp']}, FP {t['fp']}, FN {t['fn']}, "
                     f"precision {t['precision']:.2f}, recall {t['recall']:.2f}, F1 {t['f1']:.2f}")
    lines.extend(s["messages"])
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_mer.runtime.bench import bench_loop, bench_models, format_table

    model = Path(args.model) if args.model else default_model()
    if args.model_only:
        rows = bench_models(model, backends=args.backend, runs=args.runs, threads=args.threads,
                            checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    else:
        rows = bench_loop(model, backends=args.backend, flows=args.flow, frames=args.frames, threads=args.threads)
    doc = {"model": str(model), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(format_table(rows, model_only=args.model_only))
    return 0


def add_parsers(sub: Any) -> None:
    from edge_mer.runtime.backends import BACKENDS

    r = sub.add_parser("run", help="the camera loop: spot micro-expressions and classify them, events as JSON lines",
                       description="Read a camera, stream, video or the synthetic demo into a ring buffer, spot "
                                   "micro-expressions, classify each from its onset and apex frames and print one "
                                   "JSON event per line (flushed at once). Ctrl-C stops and prints a summary. "
                                   "Example: edge-mer run --demo")
    r.add_argument("--camera", type=int, metavar="N", help="V4L2 camera index")
    r.add_argument("--source", help="v4l2:///dev/videoN, csi://N, picam://N, rtsp://..., a video file, a frame "
                                    "folder or demo://")
    r.add_argument("--demo", action="store_true", help="play a synthetic clip with known micro-expressions")
    r.add_argument("--demo-seconds", type=float, default=60.0)
    r.add_argument("--seed", type=int, default=0, help="demo clip seed")
    r.add_argument("--backend", choices=BACKENDS, default="auto")
    r.add_argument("--model", help="ONNX model, engine or checkpoint (default: the packaged demo model)")
    r.add_argument("--flow", choices=FLOWS, default="auto")
    r.add_argument("--threads", type=int, help="CPU threads of the backend")
    r.add_argument("--events", help="also append the events to this JSON-lines file")
    r.add_argument("--json-summary", help="write the end-of-run summary as JSON here")
    r.add_argument("--display", action="store_true", help="show an overlay window")
    r.add_argument("--record", help="record the overlay to this video file")
    r.add_argument("--no-realtime", action="store_true", help="files and demo: as fast as possible instead of at "
                                                                 "their frame rate")
    r.add_argument("--max-frames", type=int)
    r.add_argument("--duration", type=float, help="seconds")
    r.add_argument("--quiet", action="store_true", help="no events on stdout (use --events)")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="per-stage timings of the loop (or of the backends) for every backend x flow "
                                     "available here",
                       description="Run the loop headless on the synthetic demo source and report capture, face, "
                                   "spot signal, flow, inference and total p50/p95/p99, throughput, CPU share and "
                                   "peak memory, as a table and JSON.")
    b.add_argument("--backend", nargs="*", choices=[x for x in BACKENDS if x != "auto"],
                   help="backends to time (default: all available)")
    b.add_argument("--flow", nargs="*", choices=[x for x in FLOWS if x != "auto"],
                   help="flow stages to time (default: cuda where available, opencv-dis, opencv-tvl1)")
    b.add_argument("--frames", type=int, default=600)
    b.add_argument("--runs", type=int, default=200, help="--model-only: timed runs per backend")
    b.add_argument("--model", help="ONNX model (default: the packaged demo model)")
    b.add_argument("--checkpoint", help="--model-only: also time this torch checkpoint (torch, torch-tensorrt)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--model-only", action="store_true", help="time the backends alone (batch 1)")
    b.add_argument("--json", help="write the results as JSON here")
    b.set_defaults(func=cmd_bench)
