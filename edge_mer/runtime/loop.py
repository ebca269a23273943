"""The device loop: source -> ring buffer -> face tracking -> spotting -> flow stage -> backend -> events.

A capture thread stamps frames into a preallocated ring and never waits for the
consumer; the consumer (this loop) takes every frame in order from the ring,
keeps the face transform fixed while a spot may be in progress, feeds the
motion signal and the spotter, and for each spot takes the onset and apex
frames that are still in the ring, runs the flow stage and the backend, and
writes an event at once. Stage timers cover every step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.events import Event, EventWriter
from edge_mer.runtime.timing import StageTimer, rss_mb

SIGNAL_SIZE = 128  # the crop of the spotting signal (measured best in benchmarks/results/spotting.md)


@dataclass
class LoopConfig:
    max_frames: int | None = None
    duration: float | None = None
    lost_warn_s: float = 5.0  # say so when no face has been seen for this long
    ring_seconds: float = 4.0  # how much video the ring holds (spots are classified from it)
    display: bool = False
    record: Path | None = None
    memory_every_s: float = 10.0


@dataclass
class LoopStats:
    frames: int = 0
    spots: int = 0
    events: int = 0
    skipped: int = 0  # frames that left the ring before the loop reached them
    missed_spots: int = 0  # spots whose onset or apex frame had already left the ring
    no_face_frames: int = 0
    face_detections: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    memory_mb: list[tuple[float, float]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    ring: dict[str, Any] = field(default_factory=dict)


class Recognizer:
    """Onset and apex frames + face transform -> class probabilities, through a flow stage and a backend.

    When the stage writes on the GPU (``write``) and the backend reads GPU buffers
    (``device_inputs``, ``infer_device``: TensorRT), the model inputs go from the flow
    stage to the engine without a trip through host memory.
    """

    def __init__(self, backend: Any, stage: Any) -> None:
        if backend.size != stage.size:
            raise UserError(f"the model takes {backend.size}x{backend.size} inputs; the flow stage makes "
                            f"{stage.size}x{stage.size}")
        self.backend = backend
        self.stage = stage
        self.fused = hasattr(stage, "write") and hasattr(backend, "device_inputs")

    def __call__(self, onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray,
                 timer: StageTimer) -> np.ndarray:
        if self.fused:
            inputs = self.backend.device_inputs()
            with timer.time("flow"):
                self.stage.write(onset, apex, matrix, inputs["motion"][0], inputs["texture"][0],
                                 inputs["motion"][2])
            with timer.time("inference"):
                return np.asarray(self.backend.infer_device(1)[0])
        with timer.time("flow"):
            motion, texture = self.stage(onset, apex, matrix)
        with timer.time("inference"):
            return np.asarray(self.backend.infer(motion, texture)[0])


def run_loop(source: Any, recognizer: Recognizer, writer: EventWriter, cfg: LoopConfig,
             on_event: Callable[[Event], None] | None = None, timer: StageTimer | None = None,
             stop: Callable[[], bool] | None = None) -> tuple[LoopStats, StageTimer]:
    """Run until the source ends, ``max_frames``/``duration`` is reached or ``stop()`` says so."""
    import cv2

    from edge_mer.runtime.capture import CaptureThread
    from edge_mer.runtime.ring import FrameRing
    from edge_mer.spot.spotter import FrameSpotter

    timer = timer or StageTimer()
    stats = LoopStats()
    fps = float(source.fps)
    ok, first = source.read()
    if not ok or first is None:
        raise UserError(f"{source.describe()} gave no frame")
    # the ring holds the frames of a spot until its report: at least the longest micro-expression plus the
    # spotter's report delay behind the onset, and a few seconds of slack for a busy consumer
    capacity = max(int(round(fps * cfg.ring_seconds)), int(round(fps * 1.5)) + 8)
    ring = FrameRing(capacity, first.shape, first.dtype)
    ring.push(first, time.monotonic())
    capture = CaptureThread(source, ring)
    capture.start()
    spotter = FrameSpotter(fps, SIGNAL_SIZE)
    numbers: deque[int] = deque(maxlen=capacity * 2)  # ring frame number of each frame given to the spotter
    names = recognizer.backend.class_names
    recorder = None
    start = time.monotonic()
    next_memory = start
    last_number = -1
    last_face = start
    try:
        while True:
            if stop is not None and stop():
                break
            if cfg.max_frames is not None and stats.frames >= cfg.max_frames:
                break
            if cfg.duration is not None and time.monotonic() - start >= cfg.duration:
                break
            t_wait = time.perf_counter()
            frame = ring.wait_newer(last_number, timeout=0.5)
            if frame is None:
                if capture.exception is not None:
                    raise UserError(f"capture stopped: {capture.exception}")
                if capture.finished or ring.closed:
                    break
                continue
            timer.add("capture", time.perf_counter() - t_wait)
            if frame.number > last_number + 1:
                stats.skipped += frame.number - last_number - 1
            last_number = frame.number
            t0 = time.perf_counter()
            image = frame.image
            gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            signal_before = spotter.signal_seconds
            t_spot = time.perf_counter()
            numbers.append(frame.number)
            spots = spotter.push(gray, frame.ts)
            spent = time.perf_counter() - t_spot
            in_signal = spotter.signal_seconds - signal_before
            timer.add("signal", in_signal)
            timer.add("face", max(0.0, spent - in_signal))  # face detection and the spotter's bookkeeping
            alignment = spotter.track.alignment
            if alignment is None:
                stats.no_face_frames += 1
                if frame.ts - last_face > cfg.lost_warn_s:
                    stats.messages.append(f"no face for {frame.ts - last_face:.0f} s (frame {frame.number}); "
                                          "still looking")
                    last_face = frame.ts
            else:
                last_face = frame.ts
            for spot in spots:
                stats.spots += 1
                first_index = spotter.index - len(numbers) + 1
                ids = [numbers[i - first_index] if i >= first_index else -1
                       for i in (spot.onset, spot.apex, spot.offset)]
                onset, apex, offset = (ring.get(n) if n >= 0 else None for n in ids)
                if onset is None or apex is None or alignment is None:
                    stats.missed_spots += 1
                    continue
                matrix = alignment.matrix * (recognizer.stage.size / SIGNAL_SIZE)  # same face, model's crop
                probs = recognizer(onset.image, apex.image, matrix, timer)
                offset_ts = offset.ts if offset is not None else frame.ts
                latency = (time.monotonic() - offset_ts) * 1e3
                k = int(np.argmax(probs))
                event = Event(onset_ts=round(onset.ts - start, 4), apex_ts=round(apex.ts - start, 4),
                              offset_ts=round(offset_ts - start, 4), onset=ids[0], apex=ids[1], offset=ids[2],
                              label=names[k],
                              probs={n: round(float(p), 4) for n, p in zip(names, probs)},
                              latency_ms=round(latency, 2), score=round(float(spot.score), 4))
                if on_event is not None:
                    on_event(event)
                writer.write(event)
                stats.events += 1
                stats.latencies_ms.append(latency)
            timer.add("total", time.perf_counter() - t0)
            stats.frames += 1
            if (cfg.display or cfg.record) and alignment is not None:
                recorder = _show(image, alignment.matrix, SIGNAL_SIZE, stats, cfg, recorder, fps)
            now = time.monotonic()
            if now >= next_memory:
                stats.memory_mb.append((round(now - start, 1), round(rss_mb(), 1)))
                next_memory = now + cfg.memory_every_s
    finally:
        capture.stop()
        stats.face_detections = spotter.alignments
        stats.messages.extend(m for m in [capture.error] if m)
        stats.memory_mb.append((round(time.monotonic() - start, 1), round(rss_mb(), 1)))
        stats.ring = dict(vars(ring.stats()))
        if recorder is not None:
            recorder.release()
        if cfg.display:
            cv2.destroyAllWindows()
    return stats, timer


def _show(image: np.ndarray, matrix: np.ndarray, size: int, stats: LoopStats, cfg: LoopConfig, recorder: Any,
          fps: float) -> Any:
    """Overlay (face box, counters) in a window and/or a recording."""
    import cv2

    view = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    inv = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [size, size, 1], [0, size, 1]], np.float64)
    pts = (corners @ inv.T).astype(np.int32)
    cv2.polylines(view, [pts], True, (0, 255, 0), 2)
    cv2.putText(view, f"frames {stats.frames} spots {stats.spots} events {stats.events}", (10, 24),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
    if cfg.record is not None:
        if recorder is None:
            h, w = view.shape[:2]
            recorder = cv2.VideoWriter(str(cfg.record), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
        recorder.write(view)
    if cfg.display:
        cv2.imshow("edge-mer", view)
        cv2.waitKey(1)
    return recorder
