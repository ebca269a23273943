"""Long videos with micro-expressions, macro-expressions and blinks at known times.

Output: a video file (``.mp4``: MPEG-4 Part 2, ``.avi``: MJPEG) or a frame
folder (a path without a suffix: ``frame_000000.jpg`` ...), and the truth:

* a CSV with a header: ``onset,apex,offset,type,label,aus,amplitude``; frame
  indices 0-based, offset inclusive; ``type`` is ``micro``, ``macro`` or
  ``blink``; ``label`` is the MEGC composite class of an expression.
* optionally an annotation sheet in the CAS(ME)^2 style (``casme2lv``: no header;
  participant, video, onset, apex, offset, AUs, emotion, expression type) or the
  SAMM long-video style (``sammlv``: Subject, Filename, Inducement Code, Onset,
  Apex, Offset, Duration, Type, Action Units, Notes). Both number frames from 1,
  like the frame files of those datasets, and, like them, do not annotate blinks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer.atomic import replacing
from edge_mer.errors import UserError
from edge_mer.outputs import staged_folder
from edge_mer.synth.aus import EMOTION_PATTERNS, format_aus, parse_aus
from edge_mer.synth.faces import make_subject
from edge_mer.synth.images import write_image
from edge_mer.synth.render import FaceRenderer, Nuisances, default_face_iod
from edge_mer.synth.sheets import write_csv, write_xlsx
from edge_mer.synth.timeline import (
    PlannedExpression,
    Ranges,
    blink_event,
    macro_event,
    micro_event,
    render_sequence,
)

TRUTH_HEADER = ["onset", "apex", "offset", "type", "label", "aus", "amplitude"]
TRUTH_STYLES = ("casme2lv", "sammlv")


@dataclass(frozen=True)
class VideoConfig:
    seconds: float = 60.0
    fps: float = 30.0
    size: tuple[int, int] = (640, 480)
    subject: int = 0
    seed: int = 0
    micro_per_minute: float = 8.0
    macro_per_minute: float = 2.0
    blinks_per_minute: float = 12.0
    gray: bool = False
    nuisances: Nuisances = Nuisances()
    ranges: Ranges = Ranges()


@dataclass
class VideoSummary:
    path: str
    truth: str | None
    frames: int
    fps: float
    size: tuple[int, int]
    events: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    render_fps: float = 0.0


def plan_events(cfg: VideoConfig) -> list[PlannedExpression]:
    """Non-overlapping events with at least 0.4 s of rest between them."""
    rng = np.random.default_rng([cfg.seed, 31337, cfg.subject])
    n = int(round(cfg.seconds * cfg.fps))
    rates = {"micro": cfg.micro_per_minute,
             "macro": cfg.macro_per_minute if cfg.nuisances.macro else 0.0,
             "blink": cfg.blinks_per_minute if cfg.nuisances.blinks else 0.0}
    total = sum(rates.values())
    if total <= 0:
        return []
    kinds = sorted(rates)
    p = np.array([rates[k] for k in kinds]) / total
    mean_gap = max(0.4, 60.0 / total - 0.5)
    composite = EMOTION_PATTERNS["composite"]
    events: list[PlannedExpression] = []
    t = int(round(rng.uniform(0.5, 1.5) * cfg.fps))
    while True:
        kind = str(rng.choice(kinds, p=p))
        if kind == "micro":
            label = str(rng.choice(sorted(composite)))
            aus = parse_aus(str(rng.choice(composite[label])))
            ev = micro_event(rng, cfg.fps, t, aus, label, cfg.ranges)
        elif kind == "macro":
            ev = macro_event(rng, cfg.fps, t, cfg.ranges)
        else:
            ev = blink_event(rng, cfg.fps, t, cfg.ranges)
        if ev.offset >= n - int(0.3 * cfg.fps):
            break
        events.append(ev)
        t = ev.offset + int(round((0.4 + rng.exponential(mean_gap - 0.4 + 1e-6)) * cfg.fps))
    return events


FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def check_video_path(path: Path) -> None:
    """A video file name OpenCV can write, or a folder (a path without a suffix)."""
    if path.suffix and path.suffix.lower() not in FOURCC:
        raise UserError(f"cannot write {path.name}: use .mp4, .avi or a folder path without a suffix")


class FrameSink:
    """A video file (its codec from the path's suffix) or, with ``folder``, a frame folder."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], gray: bool, folder: bool) -> None:
        self.path = path
        self.folder = folder
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer: Any = None
        if self.folder:
            path.mkdir(parents=True, exist_ok=True)
            return
        check_video_path(path)
        fourcc = FOURCC[path.suffix.lower()]
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size, not gray)
        if not self.writer.isOpened():
            raise UserError(f"OpenCV cannot open a {path.suffix} writer here (no FFmpeg support?); "
                            "write a frame folder instead (a path without a suffix)")

    def write(self, frame: np.ndarray) -> None:
        if self.folder:
            write_image(self.path / f"frame_{self.count:06d}.jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        else:
            self.writer.write(frame)
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _check_video(written: Path, out: Path, frames: int) -> None:
    """OpenCV's writer reports nothing when the disk fills up: the file is read back before it replaces
    ``out``."""
    cap = cv2.VideoCapture(str(written))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    if count != frames:
        raise UserError(f"{out}: the video came out with {max(count, 0)} of its {frames} frames (disk full, or the "
                        "folder not writable?); nothing was replaced")


def truth_rows(events: list[PlannedExpression]) -> list[list[str | int | float | None]]:
    return [[e.onset, e.apex, e.offset, e.kind, "" if e.kind == "blink" else e.emotion,
             format_aus(list(e.aus)), round(e.amplitude, 4)] for e in events]


def write_truth_sheet(path: Path, events: list[PlannedExpression], style: str, subject: int, video: str) -> None:
    expressions = [e for e in events if e.kind != "blink"]
    if style == "casme2lv":
        rows: list[list[str | int | float | None]] = [
            [subject + 1, video, e.onset + 1, e.apex + 1, e.offset + 1, format_aus(list(e.aus)), e.emotion,
             "micro-expression" if e.kind == "micro" else "macro-expression"] for e in expressions]
        write_xlsx(path, rows, "Sheet1")
    elif style == "sammlv":
        head: list[list[str | int | float | None]] = [
            ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type",
             "Action Units", "Notes"]]
        body: list[list[str | int | float | None]] = [
            [subject + 1, video, 1, e.onset + 1, e.apex + 1, e.offset + 1, e.offset - e.onset + 1,
             "Micro - 1/2" if e.kind == "micro" else "Macro", format_aus(list(e.aus)), None]
            for e in expressions]
        write_xlsx(path, head + body, "Sheet1")
    else:
        raise UserError(f"unknown truth style {style!r}; choose from {', '.join(TRUTH_STYLES)}")


def video_frames(cfg: VideoConfig, events: list[PlannedExpression]) -> Iterator[np.ndarray]:
    """The frames of ``cfg``'s video with the planned ``events``, rendered one at a time (what ``write_video``
    writes and ``demo://`` plays)."""
    renderer = FaceRenderer(make_subject(cfg.subject, cfg.seed), cfg.size, default_face_iod(cfg.size),
                            gray=cfg.gray)
    rng = np.random.default_rng([cfg.seed, 4242, cfg.subject])
    return render_sequence(renderer, events, int(round(cfg.seconds * cfg.fps)), cfg.fps, cfg.nuisances, rng)


def write_video(cfg: VideoConfig, out: Path, truth: Path | None = None, sheet: Path | None = None,
                style: str = "casme2lv", progress: bool = True) -> VideoSummary:
    """Render the video of ``cfg`` to ``out`` and write its truth."""
    if cfg.seconds <= 0 or cfg.fps <= 0:
        raise UserError("--seconds and --fps must be positive")
    if min(cfg.size) < 32:
        raise UserError("--size must be at least 32x32")
    from tqdm import tqdm

    start = time.perf_counter()
    events = plan_events(cfg)
    frames = int(round(cfg.seconds * cfg.fps))
    # the video, its truth and its sheet are written beside where they go and renamed together when all are
    # complete: a kill or a full disk leaves the earlier ones, never a cut video or a video without its truth
    check_video_path(out)
    folder = out.suffix == ""
    with ExitStack() as files:
        target = files.enter_context(staged_folder(out) if folder else replacing(out, suffix=out.suffix))
        sink = FrameSink(target, cfg.fps, cfg.size, cfg.gray, folder)
        try:
            for frame in tqdm(video_frames(cfg, events), total=frames, desc="synth video", unit="frame",
                              disable=not progress):
                sink.write(frame)
        finally:
            sink.close()
        if not folder:
            _check_video(target, out, frames)

        def beside(path: Path) -> Path:
            """Where ``path`` is written until the end: in the staged frame folder when it lies in it."""
            if folder and path.parent.resolve() == out.resolve():
                return target / path.name
            return files.enter_context(replacing(path, suffix=path.suffix))

        if truth is not None:
            write_csv(beside(truth), truth_rows(events), TRUTH_HEADER)
        if sheet is not None:
            write_truth_sheet(beside(sheet), events, style, cfg.subject, out.stem)
    elapsed = time.perf_counter() - start
    counts: dict[str, int] = {}
    for e in events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return VideoSummary(str(out), str(truth) if truth else None, frames, cfg.fps, cfg.size, counts,
                        round(elapsed, 3), round(frames / max(elapsed, 1e-9), 1))
