"""Micro-expression intervals of a video file or a frame folder (``edge-mer spot``).

    edge-mer spot --video FILE|FOLDER [--fps N] [--truth FILE] [--json] [--plot FILE.png] [--size S]

The video runs through the streaming spotter (``FrameSpotter``: face track, motion signal,
spotter), exactly as a camera would feed it. With ``--truth`` (the generator's truth CSV,
a CAS(ME)^2 or a SAMM long-video sheet) the spots are scored as MEGC does (IoU >= 0.5).
A frame folder is read in the numeric order of its file names; it has no frame rate of its
own, so ``--fps`` is required there (for a video file it overrides the file's rate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_mer.errors import UserError
from edge_mer.runtime.sources import Source, open_path

if TYPE_CHECKING:
    import numpy as np

    from edge_mer.spot.metrics import SpottingScore
    from edge_mer.spot.spotter import Spot, SpotResult
    from edge_mer.spot.truth import TruthInterval


def open_frames(path: Path, fps: float | None = None) -> Source:
    """``path`` (a video file or a folder of numbered images) opened as the device loop opens it, read as fast
    as possible; a folder, which has no frame rate, needs ``fps``, and so does a file that does not say its
    rate."""
    if path.is_dir() and fps is None:
        raise UserError(f"{path} is a frame folder, which has no frame rate: give --fps")
    source = open_path(path, fps=fps)
    if not source.rate_known:
        source.close()
        raise UserError(f"{path} does not say its frame rate: give --fps")
    return source


def _frames(source: Source) -> Iterator[np.ndarray]:
    with source:
        while True:
            ok, frame = source.read()
            if not ok or frame is None:
                return
            yield frame


@dataclass
class SpotReport:
    video: str
    frames: int
    fps: float
    size: int
    result: SpotResult
    alignments: int
    elapsed_s: float
    signal_ms: float  # mean time of the motion signal per frame
    truth_path: str | None = None
    truth: list[TruthInterval] = field(default_factory=list)
    score: SpottingScore | None = None
    early_end: str | None = None  # the video ended before the frames it announced: why, in one line
    announced: int | None = None  # the frames the file or folder announced
    face: dict[str, Any] | None = None  # detector, method, box and eyes of the last face alignment
    face_misses: int = 0  # later looks for the face that did not find it
    blinks: int = 0  # candidates dropped as blinks

    @property
    def truth_after_end(self) -> int:
        """Micro-expressions of the truth that begin after the last frame read (scored as missed)."""
        return sum(t.kind == "micro" and t.onset >= self.frames for t in self.truth)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def to_dict(self) -> dict[str, Any]:
        s = self.score
        return {"video": self.video, "frames": self.frames, "fps": self.fps, "seconds": round(self.seconds, 3),
                "size": self.size, "intervals": [spot.to_dict() for spot in self.result.spots],
                "truth": self.truth_path, "micro_truth": sum(t.kind == "micro" for t in self.truth)
                if self.truth_path else None,
                "tp": s.tp if s else None, "fp": s.fp if s else None, "fn": s.fn if s else None,
                "precision": round(s.precision, 4) if s else None, "recall": round(s.recall, 4) if s else None,
                "f1": round(s.f1, 4) if s else None, "iou_threshold": 0.5,
                "face_alignments": self.alignments, "face": self.face, "face_misses": self.face_misses,
                "blinks_dropped": self.blinks,
                "elapsed_s": round(self.elapsed_s, 3),
                "signal_ms_per_frame": round(self.signal_ms, 3), "frames_announced": self.announced,
                "ended_early": self.early_end,
                "truth_after_end": self.truth_after_end if self.early_end and self.truth_path else None}


def spot_video(path: Path, fps: float | None = None, size: int | None = None, truth: Path | None = None,
               progress: bool | None = None, face: str = "largest") -> SpotReport:
    """Spot micro-expressions in ``path`` and score them against ``truth`` when given.

    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
    """
    import numpy as np
    from tqdm import tqdm

    from edge_mer.face.align import FaceAligner, NoFaceError
    from edge_mer.spot.metrics import evaluate_spots
    from edge_mer.spot.signal import DEFAULT_SIZE, FaceTrack
    from edge_mer.spot.spotter import FrameSpotter, SpotResult
    from edge_mer.spot.truth import micro_intervals, read_truth

    size = DEFAULT_SIZE if size is None else size
    if size < 32:
        raise UserError(f"--size must be at least 32, got {size}")
    intervals = read_truth(truth, video=path.stem) if truth is not None else []  # a bad truth file fails early
    source = open_frames(path, fps)
    runner = FrameSpotter(source.fps, size, track=FaceTrack(size, source.fps, FaceAligner(size, face=face)))
    values: list[float] = []
    threshold: list[float] = []
    eyes: list[float] = []
    spots: list[Spot] = []
    start = time.perf_counter()
    with tqdm(_frames(source), total=source.length, desc=f"spot {path.name}", unit="frame",
              disable=not progress if progress is not None else None, leave=False) as bar:
        for frame in bar:
            spots += runner.push(frame)
            values.append(math.nan if runner.value is None else runner.value)
            eyes.append(math.nan if runner.eyes is None else runner.eyes)
            threshold.append(runner.spotter.shown_threshold)
    spots += runner.finish()
    elapsed = time.perf_counter() - start
    n = len(values)
    if n == 0:
        raise UserError(f"no frames could be read from {path} (empty or corrupt)")
    if runner.alignments == 0:
        raise NoFaceError(f"no face found in any of the {n} frames of {path} (looked on {runner.track.searches} of "
                          f"them: {runner.track.searched})")
    result = SpotResult(source.fps, np.array(values), np.array(threshold), spots, np.array(eyes))
    report = SpotReport(str(path), n, source.fps, size, result, runner.alignments, elapsed,
                        1000 * runner.signal_seconds / max(1, n), early_end=source.early_end(),
                        announced=source.length)
    report.face, report.face_misses = _face_summary(runner.track), runner.track.misses
    report.blinks = runner.spotter.blinks
    if truth is not None:
        report.truth_path, report.truth = str(truth), intervals
        report.score = evaluate_spots(result.intervals(), micro_intervals(intervals))
    return report


def _face_summary(track: Any) -> dict[str, Any] | None:
    """The face the spots were measured on: detector, alignment method and box of the last alignment adopted."""
    a = track.alignment
    if a is None:
        return None
    return {"detector": track.aligner.detector, "method": a.method, "box": list(a.box),
            "eyes": [[round(v, 2) for v in e] for e in a.eyes] if a.eyes else None}


def format_report(r: SpotReport) -> str:
    lines = [f"{r.video}: {r.frames} frames at {r.fps:g} fps ({r.seconds:.1f} s), face crop {r.size} px, "
             f"{len(r.result.spots)} micro-expression{'s' if len(r.result.spots) != 1 else ''}"
             + (f" ({r.blinks} more candidate{'s' if r.blinks != 1 else ''} dropped as blinks)" if r.blinks else "")
             + ":"]
    for s in r.result.spots:
        lines.append(f"  frames {s.onset}-{s.offset} (apex {s.apex})  {s.onset / r.fps:.2f}-{s.offset / r.fps:.2f} s"
                     f"  score {s.score:.1f}")
    if r.score is not None:
        sc = r.score
        lines.append(f"truth {r.truth_path}: {sc.tp + sc.fn} micro-expressions; TP {sc.tp}, FP {sc.fp}, FN {sc.fn}; "
                     f"precision {sc.precision:.3f}, recall {sc.recall:.3f}, F1 {sc.f1:.3f} (IoU >= 0.5)")
    if r.early_end is not None:
        after = f"; {r.truth_after_end} of the truth's micro-expressions begin after it and count as missed" \
            if r.truth_path else ""
        lines.append(f"warning: {r.early_end}: the results cover the frames read{after}")
    lines.append(f"{r.elapsed_s:.1f} s ({r.frames / max(r.elapsed_s, 1e-9):.0f} frames/s; motion signal "
                 f"{r.signal_ms:.2f} ms/frame); face aligned {r.alignments} time{'s' if r.alignments != 1 else ''}"
                 + (f" ({r.face['detector']}, {r.face['method']})" if r.face else "")
                 + (f"; face not found on {r.face_misses} later look{'s' if r.face_misses != 1 else ''}"
                    if r.face_misses else ""))
    return "\n".join(lines)
