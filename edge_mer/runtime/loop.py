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
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np

from edge_mer.atomic import writable_folder
from edge_mer.errors import UserError
from edge_mer.face.align import FaceAligner, FaceAlignment
from edge_mer.flow.base import FlowStage, MotionOptions
from edge_mer.flow.person import PersonLevel
from edge_mer.runtime.backends.base import Backend
from edge_mer.runtime.capture import CaptureThread
from edge_mer.runtime.events import Event, EventOut
from edge_mer.runtime.ring import Frame, FrameRing
from edge_mer.runtime.sources import Source
from edge_mer.runtime.timing import StageTimer, rss_mb
from edge_mer.spot.signal import FaceTrack
from edge_mer.spot.spotter import FrameSpotter, Spot

if TYPE_CHECKING:
    from edge_mer.flow.cuda import CudaStage
    from edge_mer.runtime.backends.tensorrt import TensorRTBackend
    from edge_mer.runtime.serve import LiveView

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
    face: str = "largest"  # which face to follow when there are several (--face)


@dataclass
class LoopStats:
    frames: int = 0
    spots: int = 0
    events: int = 0
    skipped: int = 0  # frames that left the ring before the loop reached them
    missed_spots: int = 0  # spots whose onset or apex frame had already left the ring
    blink_spots: int = 0  # candidates the spotter dropped as blinks
    no_face_frames: int = 0
    face_detections: int = 0
    face: dict[str, Any] = field(default_factory=dict)  # detector, alignments, misses, the last method and box
    latencies_ms: list[float] = field(default_factory=list)
    memory_mb: list[tuple[float, float]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    ring: dict[str, Any] = field(default_factory=dict)
    source_frames: int = 0  # frames the source gave
    source_announced: int | None = None  # frames a file or folder announced
    ended_early: str | None = None  # the file or folder ended before the frames it announced: why, in one line


class Recognizer:
    """Onset and apex frames + face transform -> class probabilities, through a flow stage and a backend.

    When the stage writes on the GPU (``write``) and the backend reads GPU buffers
    (``device_inputs``, ``infer_device``: TensorRT), the model inputs go from the flow
    stage to the engine without a trip through host memory.
    """

    def __init__(self, backend: Backend, stage: FlowStage, person_rms: float = 0.0) -> None:
        if backend.size != stage.size:
            raise UserError(f"the model takes {backend.size}x{backend.size} inputs; the flow stage makes "
                            f"{stage.size}x{stage.size}")
        self.backend = backend
        self.stage = stage
        # a model that reads each person's motion at one strength (MMTConfig.person_rms): the person in front of
        # the camera, known by the expressions already classified
        self.person = PersonLevel(person_rms) if person_rms > 0 else None
        self.last_gain: float | None = None  # the factor the last expression's motion was multiplied by
        # write computes the plain flow only (flow/cuda.py): a model of other flow, or one whose motion is scaled
        # by the person's gain on the host, gets the stage's __call__
        plain = stage.options == MotionOptions() and self.person is None
        self.fused = plain and hasattr(stage, "write") and hasattr(backend, "device_inputs")

    def __call__(self, onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray,
                 timer: StageTimer) -> np.ndarray:
        if self.fused:  # a stage that writes GPU buffers (CudaStage), a backend that reads them (TensorRT)
            backend, stage = cast("TensorRTBackend", self.backend), cast("CudaStage", self.stage)
            inputs = backend.device_inputs()
            with timer.time("flow"):
                stage.write(onset, apex, matrix, inputs["motion"][0], inputs["texture"][0])
            with timer.time("inference"):
                return np.asarray(backend.infer_device(1)[0])
        with timer.time("flow"):
            motion, texture = self.stage(onset, apex, matrix)
            if self.person is not None:
                self.last_gain = self.person.gain
                motion = self.person(motion)
        with timer.time("inference"):
            return np.asarray(self.backend.infer(motion, texture)[0])


class SpotFrames:
    """Which ring frame each frame given to the spotter was, so that a spot's onset, apex and offset (spotter
    indices) are found in the ring when the spot is reported (``None`` for one that has already left it)."""

    def __init__(self, ring: FrameRing, capacity: int) -> None:
        self.ring = ring
        self._numbers: deque[int] = deque(maxlen=capacity)

    def add(self, number: int) -> None:
        self._numbers.append(number)

    def numbers(self, last_index: int, indices: tuple[int, ...]) -> list[int]:
        """Ring numbers of spotter ``indices`` (-1 when no longer known); ``last_index``: the spotter's newest."""
        first_index = last_index - len(self._numbers) + 1
        return [self._numbers[i - first_index] if i >= first_index else -1 for i in indices]

    def frames(self, numbers: list[int]) -> list[Frame | None]:
        return [self.ring.get(n) if n >= 0 else None for n in numbers]


class VideoOutput:
    """The overlay (face box, counters) in a window and/or a recording, like a camera's video output."""

    RECORD_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")  # what OpenCV's MPEG-4 writer fills

    def __init__(self, display: bool, record: Path | None, fps: float) -> None:
        self.display = display
        self.record = record
        self.fps = fps
        self._writer: Any = None

    @classmethod
    def check_record(cls, record: Path) -> None:
        """Refuse a recording that cannot be written before the run, instead of finding it missing after."""
        if record.suffix.lower() not in cls.RECORD_SUFFIXES:
            raise UserError(f"--record {record}: cannot record to a {record.suffix or 'suffix-less'} file; use "
                            f"{', '.join(cls.RECORD_SUFFIXES)}")
        if not writable_folder(record):
            raise UserError(f"--record {record}: the folder {record.parent} does not exist or is not writable")

    def render(self, image: np.ndarray, matrix: np.ndarray, size: int, stats: LoopStats) -> None:
        view = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size, 0, 1], [size, size, 1], [0, size, 1]], np.float64)
        pts = (corners @ inv.T).astype(np.int32)
        cv2.polylines(view, [pts], True, (0, 255, 0), 2)
        cv2.putText(view, f"frames {stats.frames} spots {stats.spots} events {stats.events}", (10, 24),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
        if self.record is not None:
            if self._writer is None:
                h, w = view.shape[:2]
                self._writer = cv2.VideoWriter(str(self.record), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h))
                if not self._writer.isOpened():
                    raise UserError(f"--record {self.record}: OpenCV cannot write this video here")
            self._writer.write(view)
        if self.display:
            cv2.imshow("edge-mer", view)
            cv2.waitKey(1)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        if self.display:
            cv2.destroyAllWindows()


class DeviceLoop:
    """One run of the loop: the ring and its capture thread, the spotter, and per spot one classification."""

    def __init__(self, source: Source, recognizer: Recognizer, writer: EventOut, cfg: LoopConfig,
                 on_event: Callable[[Event], None] | None = None, timer: StageTimer | None = None,
                 view: LiveView | None = None) -> None:
        self.source = source
        self.recognizer = recognizer
        self.writer = writer
        self.cfg = cfg
        self.on_event = on_event
        self.timer = timer or StageTimer()
        self.stats = LoopStats()
        self.fps = float(source.fps)
        ok, first = source.read()
        if not ok or first is None:
            raise UserError(f"{source.describe()} gave no frame")
        # the ring holds the frames of a spot until its report: at least the longest micro-expression plus the
        # spotter's report delay behind the onset, and a few seconds of slack for a busy consumer
        history = int(round(self.fps * 1.5)) + 8
        capacity = max(int(round(self.fps * cfg.ring_seconds)), history)
        self.ring = FrameRing(capacity, first.shape, first.dtype)
        self.ring.push(first, time.monotonic())
        self.capture = CaptureThread(source, self.ring, keep=history)
        self.spotter = FrameSpotter(self.fps, SIGNAL_SIZE,
                                    track=FaceTrack(SIGNAL_SIZE, self.fps, FaceAligner(SIGNAL_SIZE, face=cfg.face)))
        self.spot_frames = SpotFrames(self.ring, capacity * 2)
        self.output = VideoOutput(cfg.display, cfg.record, self.fps) if cfg.display or cfg.record else None
        self.start = time.monotonic()
        self._next_memory = self.start
        self._last_number = -1
        self._last_face = self.start
        self.view = view
        if view is not None:
            view.loop = self

    def run(self, stop: Callable[[], bool] | None = None) -> tuple[LoopStats, StageTimer]:
        """Until the source ends, ``max_frames``/``duration`` is reached or ``stop()`` says so."""
        self.capture.start()
        try:
            while not self._done(stop):
                frame = self._next_frame()
                if frame is None:
                    if self.capture.finished or self.ring.closed:
                        break
                    continue
                self._process(frame)
        finally:
            self._finish()
        return self.stats, self.timer

    def _done(self, stop: Callable[[], bool] | None) -> bool:
        cfg = self.cfg
        return bool((stop is not None and stop())
                    or (cfg.max_frames is not None and self.stats.frames >= cfg.max_frames)
                    or (cfg.duration is not None and time.monotonic() - self.start >= cfg.duration))

    def _next_frame(self) -> Frame | None:
        """The next frame in order (counting those that left the ring unread), or None after a short wait."""
        t_wait = time.perf_counter()
        frame = self.ring.wait_newer(self._last_number, timeout=0.5)
        if frame is None:
            if self.capture.exception is not None:
                raise UserError(f"capture stopped: {self.capture.exception}")
            return None
        self.timer.add("capture", time.perf_counter() - t_wait)
        if frame.number > self._last_number + 1:
            self.stats.skipped += frame.number - self._last_number - 1
        self._last_number = frame.number
        return frame

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        spots = self._spot(frame)
        alignment = self.spotter.track.alignment
        self._note_face(frame, alignment is not None)
        for spot in spots:
            self.stats.spots += 1
            event = self._classify(spot, alignment, frame) if alignment is not None else None
            if event is None:
                self.stats.missed_spots += 1
            else:
                self._emit(event)
        self.timer.add("total", time.perf_counter() - t0)
        self.stats.frames += 1
        if self.output is not None and alignment is not None:
            self.output.render(frame.image, alignment.matrix, SIGNAL_SIZE, self.stats)
        if self.view is not None:
            t_view = time.perf_counter()
            self.view.frame(frame.image, frame.number, alignment, self.spotter.last, self.fps)
            self.timer.add("serve", time.perf_counter() - t_view)
        self._sample_memory()

    def _spot(self, frame: Frame) -> list[Spot]:
        """Feed the spotter one frame; the motion signal's time and the rest (face tracking) timed apart."""
        image = frame.image
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        signal_before = self.spotter.signal_seconds
        t_spot = time.perf_counter()
        self.spot_frames.add(frame.number)
        spots = self.spotter.push(gray, frame.ts)
        spent = time.perf_counter() - t_spot
        in_signal = self.spotter.signal_seconds - signal_before
        self.timer.add("signal", in_signal)
        self.timer.add("face", max(0.0, spent - in_signal))  # face detection and the spotter's bookkeeping
        return spots

    def _note_face(self, frame: Frame, found: bool) -> None:
        if found:
            self._last_face = frame.ts
            return
        self.stats.no_face_frames += 1
        if frame.ts - self._last_face > self.cfg.lost_warn_s:
            if self.recognizer.person is not None:  # the face that comes back may be another person's
                self.recognizer.person.reset()
            self.stats.messages.append(f"no face for {frame.ts - self._last_face:.0f} s (frame {frame.number}); "
                                       "still looking")
            self._last_face = frame.ts

    def _classify(self, spot: Spot, alignment: FaceAlignment, frame: Frame) -> Event | None:
        """The spot's event from its onset and apex frames in the ring, or None when they have left it."""
        ids = self.spot_frames.numbers(self.spotter.index, (spot.onset, spot.apex, spot.offset))
        onset, apex, offset = self.spot_frames.frames(ids)
        if onset is None or apex is None:
            return None
        matrix = alignment.matrix * (self.recognizer.stage.size / SIGNAL_SIZE)  # same face, the model's crop
        probs = self.recognizer(onset.image, apex.image, matrix, self.timer)
        offset_ts = offset.ts if offset is not None else frame.ts
        names = self.recognizer.backend.class_names
        k = int(np.argmax(probs))
        start = self.start
        return Event(onset_ts=round(onset.ts - start, 4), apex_ts=round(apex.ts - start, 4),
                     offset_ts=round(offset_ts - start, 4), onset=ids[0], apex=ids[1], offset=ids[2],
                     label=names[k], probs={n: round(float(p), 4) for n, p in zip(names, probs)},
                     latency_ms=round((time.monotonic() - offset_ts) * 1e3, 2), score=round(float(spot.score), 4),
                     face={"box": list(alignment.box), "method": alignment.method},
                     person_gain=None if self.recognizer.last_gain is None else round(self.recognizer.last_gain, 4))

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        with self.timer.time("sinks"):  # the loop's part: files written, remote sinks handed the event
            self.writer.write(event)
        if self.view is not None:
            self.view.event(event)
        self.stats.events += 1
        self.stats.latencies_ms.append(event.latency_ms)

    def _sample_memory(self) -> None:
        now = time.monotonic()
        if now >= self._next_memory:
            self.stats.memory_mb.append((round(now - self.start, 1), round(rss_mb(), 1)))
            self._next_memory = now + self.cfg.memory_every_s

    def _finish(self) -> None:
        self.capture.stop()
        self.stats.face_detections = self.spotter.alignments
        self.stats.blink_spots = self.spotter.spotter.blinks
        track = self.spotter.track
        self.stats.face = {"detector": track.aligner.detector, "alignments": track.alignments,
                           "nudges": track.nudges, "misses": track.misses,
                           "method": track.alignment.method if track.alignment else None,
                           "box": list(track.alignment.box) if track.alignment else None}
        self.stats.source_frames = self.source.frames_read
        self.stats.source_announced = self.source.length
        self.stats.ended_early = self.source.early_end()  # it names the capture's error, if there was one
        if self.stats.ended_early is not None:
            self.stats.messages.append(f"warning: {self.stats.ended_early}: the results cover the frames read")
        elif self.capture.error:
            self.stats.messages.append(self.capture.error)
        self.stats.memory_mb.append((round(time.monotonic() - self.start, 1), round(rss_mb(), 1)))
        self.stats.ring = dict(vars(self.ring.stats()))
        if self.output is not None:
            self.output.close()


def run_loop(source: Source, recognizer: Recognizer, writer: EventOut, cfg: LoopConfig,
             on_event: Callable[[Event], None] | None = None, timer: StageTimer | None = None,
             stop: Callable[[], bool] | None = None, view: LiveView | None = None) -> tuple[LoopStats, StageTimer]:
    """Run until the source ends, ``max_frames``/``duration`` is reached or ``stop()`` says so."""
    return DeviceLoop(source, recognizer, writer, cfg, on_event, timer, view).run(stop)
