"""``edge-mer run`` and ``edge-mer bench``: the device loop from the command line (no torch needed)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edge_mer.cli.output import write_json
from edge_mer.cli.types import FACE_HELP, at_least, face_choice, positive, serve_address, sink_uri
from edge_mer.errors import UserError
from edge_mer.flow import STAGES
from edge_mer.outputs import check_file
from edge_mer.runtime.artifact import default_model
from edge_mer.runtime.backends import BACKENDS
from edge_mer.runtime.bench import bench_loop, bench_models, format_table
from edge_mer.runtime.sinks import SINK_HELP

FLOWS = ("auto", *STAGES)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def cmd_run(args: argparse.Namespace) -> int:
    # OpenCV is an optional dependency: the loop's modules are imported by the command that runs it
    from edge_mer.runtime.loop import LoopConfig
    from edge_mer.runtime.session import RunSettings, format_summary, run

    # outputs refused now, not after an hour of video; none of them may be the video or the model it reads
    inputs = [p for p in (args.source, args.model, args.model and args.model + ".json") if p and Path(p).exists()]
    files = [(s.uri, "--events") for s in args.events if s.kind == "file"]
    for value, flag in ((args.json_summary, "--json-summary"), *files, (args.record, "--record")):
        if value:
            check_file(Path(value), inputs=inputs, force=True, flag=flag)
    if len({s.uri for s in args.events}) < len(args.events):
        raise UserError("--events: the same sink is named twice")
    settings = RunSettings(
        source=source_uri(args), model=Path(args.model) if args.model else None, backend=args.backend,
        flow=args.flow, threads=args.threads, events=args.events,
        spool=Path(args.spool) if args.spool else None, serve=args.serve,
        serve_token=args.serve_token or os.environ.get("EDGE_MER_SERVE_TOKEN") or None, serve_fps=args.serve_fps,
        stdout=not args.quiet, realtime=False if args.no_realtime else None,
        loop=LoopConfig(max_frames=args.max_frames, duration=args.duration, display=args.display,
                        record=Path(args.record) if args.record else None, face=args.face))
    stopped: list[str] = []  # the name of the signal that asked the loop to stop

    def on_signal(signum: int, frame: Any) -> None:
        stopped.append("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)

    # SIGTERM is how systemd stops the service, SIGHUP a closed terminal: each ends the run like Ctrl-C
    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        summary = run(settings, stop=lambda: bool(stopped))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    summary["stopped_by"] = stopped[0] if stopped else None
    print(format_summary(summary, stopped_by=summary["stopped_by"]), file=sys.stderr)
    if args.json_summary:
        write_json(Path(args.json_summary), summary, "summary")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    model = Path(args.model) if args.model else default_model()
    if args.json:
        check_file(Path(args.json), force=True, flag="--json")
    if args.model_only:
        rows = bench_models(model, backends=args.backend, runs=args.runs, threads=args.threads,
                            checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    else:
        rows = bench_loop(model, backends=args.backend, flows=args.flow, frames=args.frames, threads=args.threads,
                          serve=args.serve, sinks=args.events, spool=Path(args.spool) if args.spool else None)
    doc = {"model": str(model), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        write_json(Path(args.json), doc, "results")
    print(format_table(rows, model_only=args.model_only))
    return 0


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("run", help="the camera loop: spot micro-expressions and classify them, events as JSON lines",
                       description="Read a camera, stream, video or the synthetic demo into a ring buffer, spot "
                                   "micro-expressions, classify each from its onset and apex frames and print one "
                                   "JSON event per line (flushed at once). Ctrl-C, SIGTERM or SIGHUP stops it "
                                   "with a summary. Example: edge-mer run --demo")
    r.add_argument("--camera", type=int, metavar="N", help="V4L2 camera index")
    r.add_argument("--source", help="v4l2:///dev/videoN, csi://N, picam://N, rtsp://..., a video file, a frame "
                                    "folder or demo://")
    r.add_argument("--demo", action="store_true", help="play a synthetic clip with known micro-expressions")
    r.add_argument("--demo-seconds", type=positive, default=60.0)
    r.add_argument("--seed", type=int, default=0, help="demo clip seed")
    r.add_argument("--backend", choices=BACKENDS, default="auto")
    r.add_argument("--model", help="ONNX model, engine or checkpoint (default: the packaged demo model)")
    r.add_argument("--flow", choices=FLOWS, default="auto")
    r.add_argument("--threads", type=at_least(1), help="CPU threads of the backend")
    r.add_argument("--events", type=sink_uri, action="append", default=[], metavar="SINK", help=SINK_HELP)
    r.add_argument("--spool", metavar="DIR", help="where MQTT and HTTP sinks keep the events they could not deliver "
                                                  "yet (default: ~/.local/state/edge-mer/spool)")
    r.add_argument("--serve", type=serve_address, metavar="[HOST:]PORT",
                   help="a live view in the browser (/), MJPEG (/stream.mjpg), Server-Sent Events (/events), "
                        "Prometheus metrics (/metrics) and /healthz; on 127.0.0.1 unless HOST is given")
    r.add_argument("--serve-token", metavar="TOKEN", help="--serve wants this token (?token= or Authorization: "
                                                          "Bearer) everywhere but /healthz; or EDGE_MER_SERVE_TOKEN")
    r.add_argument("--serve-fps", type=positive, default=10.0, help="the stream's frame rate, at most (default 10)")
    r.add_argument("--json-summary", help="write the end-of-run summary as JSON here")
    r.add_argument("--display", action="store_true", help="show an overlay window")
    r.add_argument("--record", help="record the overlay to this video file")
    r.add_argument("--no-realtime", action="store_true", help="files and demo: as fast as possible instead of at "
                                                                 "their frame rate")
    r.add_argument("--face", type=face_choice, default="largest", help=FACE_HELP)
    r.add_argument("--max-frames", type=at_least(1))
    r.add_argument("--duration", type=positive, help="seconds")
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
    b.add_argument("--frames", type=at_least(1), default=600)
    b.add_argument("--runs", type=at_least(1), default=200, help="--model-only: timed runs per backend")
    b.add_argument("--model", help="ONNX model (default: the packaged demo model)")
    b.add_argument("--checkpoint", help="--model-only: also time this torch checkpoint (torch, torch-tensorrt)")
    b.add_argument("--threads", type=at_least(1), default=2)
    b.add_argument("--model-only", action="store_true", help="time the backends alone (batch 1)")
    b.add_argument("--serve", action="store_true", help="with the live view on a loopback port and one client "
                                                         "reading its stream (what serving costs)")
    b.add_argument("--events", type=sink_uri, action="append", default=[], metavar="SINK",
                   help="events also to this sink, repeatable (what the sinks cost the loop)")
    b.add_argument("--spool", metavar="DIR", help="the remote sinks' spool (as run --spool)")
    b.add_argument("--json", help="write the results as JSON here")
    b.set_defaults(func=cmd_bench)
