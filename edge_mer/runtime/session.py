"""One run of the device loop from its settings: source, backend and flow stage opened, the loop run, the
summary made. The policies live here: which flow stage a model gets (the one it was trained with; TV-L1 on
the GPU where the CUDA stage runs and passes its self-check, else OpenCV), and how a run is summarised and
matched against the demo's truth. ``edge-mer run`` parses its flags into ``RunSettings`` and calls ``run``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.flow.base import FlowStage, MotionOptions
from edge_mer.flow.cuda import CudaStage
from edge_mer.flow.opencv import has_tvl1
from edge_mer.flow.person import described, person_rms
from edge_mer.flow.stage import make_stage
from edge_mer.runtime.artifact import default_model
from edge_mer.runtime.backends import open_backend
from edge_mer.runtime.gpu import cuda_unavailable
from edge_mer.runtime.loop import LoopConfig, LoopStats, Recognizer, VideoOutput, run_loop
from edge_mer.runtime.serve import LiveView
from edge_mer.runtime.sinks import EventSinks, SinkURI
from edge_mer.runtime.sources import open_source
from edge_mer.runtime.timing import StageTimer, percentiles
from edge_mer.spot.metrics import evaluate_spots
from edge_mer.spot.truth import TruthInterval


@dataclass
class RunSettings:
    source: str  # a source URI (open_source)
    model: Path | None = None  # None: the packaged demo model
    backend: str = "auto"
    flow: str = "auto"
    threads: int | None = None
    events: list[SinkURI] = field(default_factory=list)  # where the events go besides stdout (--events)
    spool: Path | None = None  # where remote sinks keep undelivered events (None: sinks.default_spool())
    serve: tuple[str, int] | None = None  # the live view and metrics: (host, port)
    serve_token: str | None = None
    serve_fps: float = 10.0  # the stream's frame rate, at most
    stdout: bool = True  # print every event on stdout
    realtime: bool | None = None  # files and demo: None = the source's own pace
    loop: LoopConfig | None = None


def _feature_config(model_meta: dict[str, Any]) -> dict[str, Any]:
    """The feature cache's config that the model was trained on (empty when the model does not say)."""
    return dict((model_meta.get("features") or {}).get("feature") or {})


def check_texture(model_meta: dict[str, Any]) -> None:
    """A model trained on another texture input than the apex frame (``data prepare --texture difference``, an
    experiment) is refused: every flow stage computes the apex texture."""
    texture = _feature_config(model_meta).get("texture", "apex")
    if texture != "apex":
        raise UserError(f"the model was trained on {texture} textures (data prepare --texture {texture}); the "
                        "device runtime computes the apex texture: train it on features prepared with --texture apex")


def motion_options(model_meta: dict[str, Any]) -> MotionOptions:
    """How the model's flow was made beyond its method (``data prepare --oversample``, ``--head``)."""
    return MotionOptions.of(_feature_config(model_meta))


def pick_flow(name: str, model_meta: dict[str, Any]) -> str:
    """``auto``: the flow the model was trained with; TV-L1 on the GPU (``cuda``) where it runs, else OpenCV's."""
    if name != "auto":
        return name
    trained = _feature_config(model_meta).get("flow") or "tvl1"
    if trained == "tvl1" and cuda_unavailable() is None:
        return "cuda"
    return _opencv_flow(trained)


def _opencv_flow(trained: str) -> str:
    """OpenCV's stage for a model trained on ``trained`` flow: TV-L1 when contrib has it, else DIS."""
    return "opencv-tvl1" if trained == "tvl1" and has_tvl1() else "opencv-dis"


def open_stage(requested: str, flow: str, size: int, options: MotionOptions | None = None) -> tuple[str, FlowStage]:
    """The flow stage ``flow`` (as ``pick_flow`` chose it for ``requested``) for S = ``size``, its flow made as
    ``options`` say. Under ``auto`` the CUDA stage must pass its self-check against the numpy reference; when it
    cannot start or fails, OpenCV takes over with a note."""
    if requested != "auto" or flow != "cuda":
        return flow, make_stage(flow, size, options)
    try:
        cuda = CudaStage(size, options=options)
        reason = cuda.self_check()
    except UserError as exc:
        reason = str(exc)
    if reason is None:
        return flow, cuda
    print(f"note: {reason}; using OpenCV", file=sys.stderr)
    fallback = _opencv_flow("tvl1")  # auto picks cuda only for TV-L1 models
    return fallback, make_stage(fallback, size, options)


def model_meta(backend: Any) -> dict[str, Any]:
    """What the loaded model says of itself: its sidecar (ONNX file, engine) or its checkpoint's features."""
    art = getattr(backend, "artifact", None) or getattr(backend, "info", None)  # an ONNX file's, an engine's
    if art is not None:
        return dict(art.meta)
    ck = getattr(backend, "checkpoint", None)
    return {"features": ck.get("features"), "config": ck.get("config")} if ck else {}



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


def run(settings: RunSettings, stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Open everything ``settings`` names (a bad source fails first), run the loop until the source ends, a limit
    is reached or ``stop()`` says so, close everything and return the summary."""
    cfg = settings.loop or LoopConfig()
    if cfg.display:
        check_display()
    if cfg.record is not None:
        VideoOutput.check_record(cfg.record)
    model = settings.model or default_model()
    seen: list[tuple[int, int, str]] = []
    view = None
    with ExitStack() as opened:  # whatever was opened is closed, also when a later step fails
        if settings.serve is not None:  # a port in use is found before anything else opens
            view = LiveView(settings.serve, token=settings.serve_token, fps=settings.serve_fps)
            opened.callback(view.close)
        source = open_source(settings.source, realtime=settings.realtime)
        opened.callback(source.close)
        backend = open_backend(settings.backend, model, threads=settings.threads)
        opened.callback(backend.close)
        meta = model_meta(backend)
        if meta.get("demo"):
            print("note: the packaged DEMO model was trained on synthetic data only", file=sys.stderr)
        check_texture(meta)
        flow, stage = open_stage(settings.flow, pick_flow(settings.flow, meta), backend.size, motion_options(meta))
        writer = EventSinks(settings.events, spool=settings.spool, stdout=settings.stdout)
        opened.callback(writer.close)
        if view is not None:
            view.sinks = writer
            print(f"live view: {view.url}" + (" (with the token)" if settings.serve_token else ""), file=sys.stderr)
        person = person_rms(meta)
        reads = f" ({described(person)})" if person else ""
        print(f"edge-mer run: {source.describe()} -> {flow}{stage.options.describe()} -> {backend.describe()}{reads}",
              file=sys.stderr)
        stats, timer = run_loop(source, Recognizer(backend, stage, person), writer, cfg, stop=stop,
                                on_event=lambda e: seen.append((e.onset, e.offset, e.label)), view=view)
    summary = summarise(stats, timer)
    summary["sinks"], warnings = writer.report()
    summary["messages"].extend(warnings)
    if view is not None:
        summary["serve"] = view.report()
    truth = getattr(source, "truth", None)
    if truth is not None:
        summary["truth"] = match_truth(seen, truth, stats.frames)
    return summary


def summarise(stats: LoopStats, timer: StageTimer) -> dict[str, Any]:
    t = timer.summary()
    lat = np.asarray(stats.latencies_ms) if stats.latencies_ms else None
    return {"frames": stats.frames, "spots": stats.spots, "events": stats.events, "skipped_frames": stats.skipped,
            "missed_spots": stats.missed_spots, "blink_spots": stats.blink_spots,
            "no_face_frames": stats.no_face_frames, "face": stats.face,
            "ring": stats.ring,
            "fps": round(stats.frames / max(t["wall_s"], 1e-9), 2), "timing": t,
            "event_latency_ms": None if lat is None else
            {**percentiles(lat, (50, 95), digits=2), "max": round(float(lat.max()), 2)},
            "memory_mb": stats.memory_mb, "messages": stats.messages,
            "source": {"frames": stats.source_frames, "announced": stats.source_announced,
                       "ended_early": stats.ended_early}}


def match_truth(pred: list[tuple[int, int, str]], truth: list[TruthInterval], frames: int) -> dict[str, Any]:
    """MEGC spotting match (IoU >= 0.5) of the events' (onset, offset, label) against the demo source's
    micro-expressions, and how many of the found ones the model labelled as the truth does."""
    micro = [t for t in truth if t.kind == "micro" and t.offset < frames]
    m = evaluate_spots([(onset, offset) for onset, offset, _ in pred], [(t.onset, t.offset) for t in micro])
    labelled = [(pred[i][2], micro[j].label) for i, j, _ in m.matches if micro[j].label]
    return {**{k: getattr(m, k) for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
            "labelled": len(labelled), "labelled_right": sum(got == want for got, want in labelled)}


def format_summary(s: dict[str, Any], stopped_by: str | None = None) -> str:
    """The summary in words; ``stopped_by``: what ended the run early (``Ctrl-C``, ``SIGTERM``), if anything."""
    lines = [(f"stopped by {stopped_by}: " if stopped_by else "") +
             f"{s['frames']} frames at {s['fps']:.1f} fps, {s['spots']} spots"
             + (f" ({s['blink_spots']} more dropped as blinks)" if s.get("blink_spots") else "")
             + f", {s['events']} events; "
             f"{s['skipped_frames']} frames skipped, ring drops {s['ring'].get('dropped', 0)}"]
    if s["event_latency_ms"]:
        lat = s["event_latency_ms"]
        lines.append(f"event latency after offset: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms")
    st = s["timing"]["stages_ms"]
    lines.append("stage p50/p95 ms: " + ", ".join(f"{k} {v['p50']:.2f}/{v['p95']:.2f}" for k, v in st.items()))
    lines.append(f"peak memory {s['timing']['peak_rss_mb']:.0f} MB, CPU share {s['timing']['cpu_share']:.0%}")
    if s.get("sinks"):
        lines.append("events to: " + "; ".join(
            f"{r['sink']} {r['delivered']}" + (f" delivered, {r['backlog']} waiting" if "backlog" in r else "")
            for r in s["sinks"]))
    if "truth" in s:
        t = s["truth"]
        lines.append(f"against the demo's truth (IoU >= 0.5): TP {t['tp']}, FP {t['fp']}, FN {t['fn']}, "
                     f"precision {t['precision']:.2f}, recall {t['recall']:.2f}, F1 {t['f1']:.2f}"
                     + (f"; {t['labelled_right']} of the {t['labelled']} found labelled as the truth"
                        if t.get("labelled") else ""))
    lines.extend(s["messages"])
    return "\n".join(lines)


