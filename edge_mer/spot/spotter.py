"""From the motion signal to micro-expression spots (onset, apex, offset), streaming, reported as they end.

The spotter receives one value per frame from ``MotionSignal``: how far the face at t
moved since the face k = 0.5 s before (``edge_mer.spot.signal``). While t - k is before an
expression's onset, that is the face's displacement from rest, so the value traces the
expression as it happens: it rises from the onset, peaks at the apex and falls back to
rest at the offset. The rules, all causal (each frame's decision uses values up to it):

* adaptive threshold: ``median + c * MAD`` of the values over the trailing ``window_s``
  (5) seconds, MAD scaled by 1.4826 to a standard deviation, c = 5. Median and MAD follow
  slow changes of the noise (lighting, compression, distance) and ignore the sparse events;
* a candidate opens where the value rises above the threshold (after ``warmup_s`` seconds
  of values, only once the value has been below the threshold since the last candidate,
  and not on an echo, see below); its apex is the highest value while it is open;
* return to rest: after the value has fallen below half the apex height, the candidate is
  decided at the first frame where it is back at rest, at most ``median + min(rest_c *
  MAD, rest_frac * height)`` (3 MADs or 0.3 of the height, whichever is lower). That
  frame's value compares the face with the face k frames before, which is a face from
  before the rise as long as t - k is before the rise (the first frame above the
  threshold, displaced by more than the rest level). A candidate that has not come back
  by then is not a micro-expression (the rise of a macro-expression, a head turn, a
  lasting change of pose) and is dropped;
* interval: an expression's intensity rises and falls smoothly, so its half-height
  crossings sit about halfway between apex and onset and between apex and offset. The
  onset and offset are the crossings moved away from the apex to ``extend`` (2) times
  their distance, which does not depend on the threshold and stays stable under noise;
  when the value dips below half height and rises again before coming back to rest, the
  two humps are one candidate;
* length bounds from the frame rate: a micro-expression lasts from 1/25 s (at least 2
  frames) to 0.5 s (the usual definition, MEGC); with the inclusive offset and 1/30 s of
  estimation slack an interval may span ``floor(0.5 fps) + 1 + round(fps / 30)`` frames
  (17 at 30 fps, 6 at 10 fps, 108 at 200 fps). Longer intervals are macro-expressions;
* glitches: a candidate must stay above half its height for ``glitch_s`` (2 frames at 30
  fps); one bad frame (a compression artefact, a torn frame) never makes a spot;
* echoes: k frames after any candidate the crop at t - k is the displaced one, and the
  value rises again while the face is at rest; rises whose t - k falls inside an earlier
  candidate are ignored;
* blinks: the signal leaves the brows out while an eye moves more than 6 times its usual
  motion, but a closing lid still moves the skin next to the eyes (the upper quarters of
  nose and cheeks) and the frames where the lid starts or stops moving pass under the
  gate. A candidate during at least ``blink_share`` (half) of whose frames, onset to
  offset, an eye moved more than ``blink_eyes`` (5) times its usual motion
  (``MotionSignal.eyes``, given to ``update``) lies on a blink and is dropped; ``blinks``
  counts them. Without the eyes' motion (None) no candidate is dropped for it. Chosen
  on the spotting benchmark's twelve videos (F1 0.833 against 0.815 without it, within
  their chance) and checked on twelve others with other subjects: 0.787 against 0.764,
  95 % interval of the gain +0.009 to +0.037 (benchmarks/results/spotting_heldout.md);
* a spot that overlaps one already reported is suppressed (the first one stands).

Latency: a spot is reported at its estimated offset frame or at the frame that shows the
face back at rest, whichever comes later: on the benchmark's videos at the offset frame
for 95 % of the spots and never more than 4 frames (0.13 s at 30 fps) after it
(benchmarks/results/spotting.md).

``spot_series`` runs the same streaming code over a whole series and also returns the
threshold per frame.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_mer.spot.signal import (
    DEFAULT_SIZE,
    LAG_S,
    FaceTrack,
    MotionSignal,
    SignalConfig,
    lag_frames,
    to_gray,
)

MICRO_MAX_S = 0.5
MICRO_MIN_S = 1 / 25
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Spot:
    """A spotted micro-expression: 0-based frame indices, offset inclusive; score in MADs above the median."""

    onset: int
    apex: int
    offset: int
    score: float
    emitted_at: int = -1  # the frame whose update reported this spot
    apex_ts: float = math.nan  # timestamp given with the apex frame

    def to_dict(self) -> dict[str, int | float]:
        return {"onset": self.onset, "apex": self.apex, "offset": self.offset, "score": round(self.score, 3)}


@dataclass(frozen=True)
class SpotterConfig:
    """The spotting rules; times in seconds, turned into frames with the frame rate.

    The defaults are the measured ones (benchmarks/spotting.py); ``lag_s`` must be the
    signal's (``SignalConfig``).
    """

    lag_s: float = LAG_S  # k: the lag of the signal's value
    c: float = 5.0  # threshold = median + c * MAD
    window_s: float = 5.0  # trailing window of median and MAD
    warmup_s: float = 0.5  # no spots before this much signal
    extend: float = 2.0  # onset/offset = half-height crossings moved to this many times their distance to the apex
    rest_c: float = 3.0  # back at rest: value <= median + min(rest_c * MAD, rest_frac * height)
    rest_frac: float = 0.3
    glitch_s: float = 0.067  # a candidate stays above half height at least this long (2 frames at 30 fps)
    min_s: float = MICRO_MIN_S
    max_s: float = MICRO_MAX_S
    blink_eyes: float = 5.0  # eye motion (times usual) that marks a blink frame
    blink_share: float = 0.5  # a candidate with at least this share of blink frames is a blink (above 1: never)


@dataclass
class _Candidate:
    rise: int  # first frame above the threshold
    apex: int
    height: float  # value at the apex minus the median at the rise
    base: float  # median and MAD at the rise
    mad: float
    apex_ts: float
    above: int = 1  # frames above half height
    cross: float | None = None  # where the value fell below half height (fractional frame), None while above
    decided: tuple[int, int] | None = None  # (onset, offset) once back at rest


@dataclass
class SpotResult:
    """An offline run: the signal's values, the threshold and the eyes' motion per frame (NaN where undefined)
    and the spots."""

    fps: float
    values: np.ndarray  # (N,) the signal's values, NaN where it had none
    threshold: np.ndarray  # (N,)
    spots: list[Spot] = field(default_factory=list)
    eyes: np.ndarray | None = None  # (N,) the eyes' motion (MotionSignal.eyes), None: not given

    def intervals(self) -> list[tuple[int, int]]:
        return [(s.onset, s.offset) for s in self.spots]


class Spotter:
    """Streaming spotter: ``update(frame_index, ts, value)`` per frame returns the spots confirmed by it."""

    def __init__(self, fps: float, config: SpotterConfig | None = None) -> None:
        self.config = cfg = config or SpotterConfig()
        self.fps = float(fps)
        self.lag = lag_frames(fps, cfg.lag_s)
        self.window = max(5, int(round(cfg.window_s * fps)))
        self.warmup = max(1, int(round(cfg.warmup_s * fps)))
        self.glitch = max(1, int(round(cfg.glitch_s * fps)))
        self.min_frames = max(2, int(math.ceil(cfg.min_s * fps - 1e-9)))
        # inclusive offset (+1) and about 1/30 s of slack for the interval estimate
        self.max_frames = int(math.floor(cfg.max_s * fps + 1e-9)) + 1 + int(round(fps / 30))
        self.blinks = 0  # candidates dropped as blinks
        self.reset()

    def reset(self) -> None:
        """Start over (a new video, or a new face alignment whose values do not continue the old ones)."""
        self._v: deque[float] = deque(maxlen=max(self.window, self.lag + 2 * self.max_frames + 2))
        self._e: deque[float] = deque(maxlen=self._v.maxlen)  # the eyes' motion, NaN where not given
        self._index = -1  # frame index of the newest value
        self._next_index: int | None = None
        self._seen = 0  # finite values so far
        self._armed = True
        self._open: _Candidate | None = None
        self._spans: deque[tuple[int, int]] = deque(maxlen=8)  # frames of recent candidates (echo check)
        self._last_offset = -1
        self.last: tuple[int, float, float] | None = None  # (index, value, threshold) of the newest frame

    @property
    def shown_threshold(self) -> float:
        """The newest frame's threshold as plots show it: NaN where that frame had no value."""
        last = self.last
        return last[2] if last is not None and math.isfinite(last[1]) else math.nan

    @property
    def busy(self) -> bool:
        """Whether a candidate is open (between its rise and its report or rejection)."""
        return self._open is not None

    # -- input -----------------------------------------------------------------------------------------

    def update(self, frame_index: int, ts: float, value: float | None, eyes: float | None = None) -> list[Spot]:
        """Add frame ``frame_index``'s value (``MotionSignal.push``'s result, None: none) and the eyes' motion
        with it (``MotionSignal.eyes``), and return the spots this confirms. Skipped frame indices count as
        frames without a value."""
        if self._next_index is not None and frame_index < self._next_index:
            raise ValueError(f"frame {frame_index} after frame {self._next_index - 1}: frames must come in order "
                             "(reset() to start over)")
        out: list[Spot] = []
        if self._next_index is not None:
            for missing in range(self._next_index, frame_index):  # dropped frames carry no value
                out += self._step(missing, math.nan, None, None)
        out += self._step(frame_index, ts, value, eyes)
        self._next_index = frame_index + 1
        return out

    def finish(self) -> list[Spot]:
        """End of the stream: report the open candidate if it is already back at rest (its offset clamped to
        the last frame); one that has not come back cannot be told from a longer expression and is dropped."""
        c, self._open = self._open, None
        if c is None or c.decided is None:
            return []
        onset, offset = c.decided
        return self._report(c, self._index, onset, min(offset, self._index))

    # -- the rules -------------------------------------------------------------------------------------

    def _step(self, t: int, ts: float, value: float | None, eyes: float | None) -> list[Spot]:
        v = math.nan if value is None or not math.isfinite(value) else float(value)
        self._v.append(v)
        self._e.append(math.nan if eyes is None else float(eyes))
        self._index = t
        finite = math.isfinite(v)
        if finite:
            self._seen += 1
        window = np.asarray(self._v)[-self.window:]
        window = window[np.isfinite(window)]
        base, mad = 0.0, 1.0
        if len(window):
            base = float(np.median(window))
            mad = MAD_TO_SIGMA * float(np.median(np.abs(window - base))) + 1e-9
        thr = base + self.config.c * mad
        self.last = (t, v, thr)
        above = finite and v > thr
        out: list[Spot] = []
        if self._open is not None:
            out = self._follow(t, ts, v)
        elif above and self._armed and self._seen > self.warmup and not self._echo(t):
            self._open = _Candidate(t, t, v - base, base, mad, ts)
            self._armed = False
        if not above:
            self._armed = True
        return out

    def _echo(self, t: int) -> bool:
        """Whether the value at t compares with a face inside an earlier candidate."""
        return any(first <= t - self.lag <= last for first, last in self._spans)

    def _follow(self, t: int, ts: float, v: float) -> list[Spot]:
        """Track the open candidate: apex, fall below half height, return to rest, report or drop."""
        c = self._open
        assert c is not None
        if not math.isfinite(v):  # the signal stopped (a new face alignment, dropped frames): give up
            return self._drop(c, t)
        if c.decided is None:
            if v - c.base > c.height:
                c.apex, c.height, c.apex_ts = t, v - c.base, ts
            half = c.base + 0.5 * c.height
            if v > half:
                c.cross = None  # (again) above half height: one candidate, not two
                c.above += 1
            elif c.cross is None:
                prev = self._v[-2]
                c.cross = t - 1 + (prev - half) / (prev - v) if math.isfinite(prev) and prev > half else float(t)
            rest = c.base + min(self.config.rest_c * c.mad, self.config.rest_frac * c.height)
            if c.cross is not None and v <= rest:
                c.decided = self._interval(c, t)
        if c.decided is not None:
            onset, offset = c.decided
            if t >= offset:  # the offset frame exists: report now
                self._open = None
                return self._report(c, t, onset, offset)
        elif t >= c.rise + self.lag - 1:  # from the next frame on, t - k is past the rise: it did not come back
            return self._drop(c, t)
        return []

    def _drop(self, c: _Candidate, t: int) -> list[Spot]:
        self._open = None
        self._spans.append((c.rise - self.glitch, t))
        return []

    def _interval(self, c: _Candidate, t: int) -> tuple[int, int]:
        """(onset, offset) from the half-height crossings on either side of the apex."""
        assert c.cross is not None
        v = np.asarray(self._v)
        half = c.base + 0.5 * c.height
        i = len(v) - 1 - (t - c.apex)  # position of the apex
        left = float(c.apex - 2 * self.max_frames)  # no crossing within reach: it started long ago
        for _ in range(2 * self.max_frames):
            k = i - 1
            if k < 0:
                break
            if not math.isfinite(v[k]) or v[k] <= half:
                frac = 1.0 if not math.isfinite(v[k]) or v[i] == v[k] else (v[i] - half) / (v[i] - v[k])
                left = t - (len(v) - 1 - i) - frac
                break
            i = k
        extend = self.config.extend
        onset = min(int(round(c.apex - extend * (c.apex - left))), c.apex)
        offset = max(int(round(c.apex + extend * (c.cross - c.apex))), c.apex)
        return onset, offset

    def _on_blink(self, onset: int, offset: int) -> bool:
        """Whether the eyes moved like a blink in at least ``blink_share`` of the frames onset..offset."""
        moved = np.asarray(self._e)
        last = len(moved) - 1 - (self._index - offset)
        if last < 0:
            return False
        frames = np.nan_to_num(moved[max(0, last - (offset - onset)):last + 1])  # NaN (not given): not a blink
        return bool(np.mean(frames > self.config.blink_eyes) >= self.config.blink_share)

    def _report(self, c: _Candidate, t: int, onset: int, offset: int) -> list[Spot]:
        """The candidate came back to rest at ``t``: a spot if it has a micro-expression's length and shape."""
        self._spans.append((onset, max(offset, t - 1)))
        length = offset - onset + 1
        if c.above < self.glitch or not self.min_frames <= length <= self.max_frames:
            return []
        if self._on_blink(onset, offset):
            self.blinks += 1
            return []
        if onset <= self._last_offset:  # overlaps a spot already reported
            return []
        self._last_offset = offset
        return [Spot(onset, c.apex, offset, c.height / c.mad, t, c.apex_ts)]


def spot_series(values: Iterable[float | None], fps: float, config: SpotterConfig | None = None,
                eyes: Iterable[float | None] | None = None) -> SpotResult:
    """Spot a whole series with the streaming ``Spotter`` (same code, same spots); ``eyes``: the eyes' motion
    per frame (``MotionSignal.eyes``, None or NaN where not known)."""
    spotter = Spotter(fps, config)
    vals = np.array([math.nan if v is None else float(v) for v in values], np.float64)
    moved = None if eyes is None else np.array([math.nan if e is None else float(e) for e in eyes], np.float64)
    if moved is not None and len(moved) != len(vals):
        raise ValueError(f"{len(vals)} values but the eyes' motion of {len(moved)} frames")
    threshold = np.full(len(vals), math.nan)
    spots: list[Spot] = []
    for i, v in enumerate(vals):
        e = None if moved is None or math.isnan(moved[i]) else float(moved[i])
        spots += spotter.update(i, i / fps, None if math.isnan(v) else float(v), e)
        threshold[i] = spotter.shown_threshold
    spots += spotter.finish()
    return SpotResult(float(fps), vals, threshold, spots, moved)


class FrameSpotter:
    """Camera frames in, spots out: ``FaceTrack``, ``MotionSignal`` and ``Spotter`` in one streaming object.

    ``push(frame, ts)`` takes the next frame (BGR or grey, any size) and returns the spots
    confirmed by it; frame indices count pushes from 0. When the face track adopts a new
    alignment, the buffered frames are re-cropped under it and fed to a fresh signal, so
    the values go on without a gap. ``value`` and ``last`` (index, value, threshold)
    describe the newest frame; ``alignments`` counts adopted face alignments.
    """

    def __init__(self, fps: float, size: int = DEFAULT_SIZE, signal: SignalConfig | None = None,
                 spotter: SpotterConfig | None = None, track: FaceTrack | None = None) -> None:
        self.fps = float(fps)
        self.signal = MotionSignal(fps, size, signal)
        cfg = spotter or SpotterConfig()
        sig = self.signal.config
        if cfg.lag_s != sig.lag_s:
            raise ValueError("the spotter's lag_s must be the signal's")
        self.spotter = Spotter(fps, cfg)
        self.track = track or FaceTrack(size, fps)
        self._frames: deque[np.ndarray] = deque(maxlen=self.signal.lag + 1)
        self.index = -1
        self.value: float | None = None
        self.eyes: float | None = None  # the eyes' motion with the value (MotionSignal.eyes)
        self.signal_seconds = 0.0  # time spent in the motion signal (crops and flows)

    @property
    def alignments(self) -> int:
        return self.track.alignments

    @property
    def last(self) -> tuple[int, float, float] | None:
        return self.spotter.last

    def push(self, frame: np.ndarray, ts: float | None = None) -> list[Spot]:
        self.index += 1
        gray = to_gray(frame)
        self._frames.append(gray)
        idle = self.spotter.busy is False
        self.value = self.eyes = None
        if self.track.update(gray, self.index, idle, self.signal.head if self.signal.regions else None):
            start = time.perf_counter()
            if self.track.changed:  # re-crop the buffered frames under the new transform
                self.signal.reset(keep_usual=self.index > 0)
                alignment = self.track.alignment
                self.signal.set_regions(alignment.crop_points() if alignment is not None else None)
                for earlier in list(self._frames)[:-1]:
                    self.signal.push(self.track.crop(earlier))
            self.value = self.signal.push(self.track.crop(gray))
            self.eyes = self.signal.eyes if self.value is not None else None
            self.signal_seconds += time.perf_counter() - start
        stamp = self.index / self.fps if ts is None else ts
        return self.spotter.update(self.index, stamp, self.value, self.eyes)

    def finish(self) -> list[Spot]:
        return self.spotter.finish()
