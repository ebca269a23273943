"""From the motion signal to micro-expression spots (onset, apex, offset), streaming or offline.

The spotter receives one value per frame from ``MotionSignal`` (and, optionally, its
``back`` value) and works on

    s(t) = min(value(t), value(t + k)),   k = lag_frames(fps)

(the face at t is displaced both from the face k frames before and k frames after), which
keeps an event and drops the echo the signal's lag leaves k frames after it. Then:

* adaptive threshold: ``median + c * MAD`` of s over the trailing ``window_s`` (5) seconds,
  MAD scaled by 1.4826 to a standard deviation, c = 5.5. Median and MAD follow slow changes
  of the noise (lighting, compression, distance) and ignore the sparse events;
* a candidate starts where s rises above the threshold (after ``warmup_s`` seconds of s,
  and only once s has been below the threshold since the last candidate); its apex is the
  highest s before s falls to half its height above the median;
* interval: an expression's intensity rises and falls smoothly, so its half-height
  crossings sit about halfway between apex and onset and between apex and offset. The
  onset and offset are the crossings moved away from the apex to ``extend`` (2) times
  their distance, which does not depend on the threshold and stays stable under noise;
* candidates closer than ``merge_s`` seconds (2 frames at 30 fps) are merged into one;
* length bounds from the frame rate: a micro-expression lasts from 1/25 s (at least 2
  frames) to 0.5 s (the usual definition, MEGC); with the inclusive offset and 1/30 s of
  estimation slack an interval may span ``floor(0.5 fps) + 1 + round(fps / 30)`` frames
  (17 at 30 fps, 6 at 10 fps, 108 at 200 fps).
  Longer intervals, merged or not, are macro-expressions and are rejected;
* back to rest: the rise of a macro-expression can look like a short event in s; after a
  micro-expression, though, the face returns to where it was before the onset. A candidate
  is rejected when the value (lag k, for intervals shorter than k) or the back value (lag
  0.6 s) shows the face after the offset still away from the face before the onset
  (above median + ``rest_c`` * MAD of that series). Without the back value the benchmark's
  false positives go from 1 to 11, nearly all on macro-expressions;
* a spot that overlaps one already reported is suppressed (the first one stands).

Latency: a spot is reported once nothing can merge into it any more, i.e. when s is
known ``merge_s`` after its offset; s(t) needs the value at t + k, so the report comes
k + merge frames after the offset: 14 frames (0.47 s) at 30 fps, within the 0.5 s bound.

``spot_series`` runs the same streaming code over a whole series and also returns s and
the threshold per frame.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_mer.spot.signal import (
    BACK_S,
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

    The defaults are the measured ones (benchmarks/spotting.py); ``lag_s`` and ``back_s``
    must be the signal's (``SignalConfig``).
    """

    lag_s: float = LAG_S  # k: the lag of the signal's value
    back_s: float = BACK_S  # the lag of the signal's back value
    c: float = 5.5  # threshold = median + c * MAD
    window_s: float = 5.0  # trailing window of median and MAD
    warmup_s: float = 0.5  # no spots before this much s
    extend: float = 2.0  # onset/offset = half-height crossings moved to this many times their distance to the apex
    merge_s: float = 0.067  # candidates closer than this are one
    rest_c: float = 3.0  # at rest: value <= its median + rest_c * MAD
    rest_s: float = 0.1  # frames after the offset the back value is checked over
    min_s: float = MICRO_MIN_S
    max_s: float = MICRO_MAX_S


@dataclass
class _Candidate:
    onset: int
    apex: int
    offset: int
    peak: float  # s at the apex, minus the median there
    score: float
    apex_ts: float
    too_long: bool = False


@dataclass
class SpotResult:
    """An offline run: the input values, s, the threshold (NaN where undefined) and the spots."""

    fps: float
    values: np.ndarray  # (N,) the signal's values, NaN where it had none
    signal: np.ndarray  # (N,) s(t) = min(value(t), value(t + k))
    threshold: np.ndarray  # (N,)
    spots: list[Spot] = field(default_factory=list)
    back: np.ndarray | None = None  # (N,) the signal's back values, when it gave them

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
        self.merge = max(1, int(round(cfg.merge_s * fps)))
        self.min_frames = max(2, int(math.ceil(cfg.min_s * fps - 1e-9)))
        # inclusive offset (+1) and about 1/30 s of slack for the interval estimate
        self.max_frames = int(math.floor(cfg.max_s * fps + 1e-9)) + 1 + int(round(fps / 30))
        self.rest = max(2, int(round(cfg.rest_s * fps)))
        self.back_lag = lag_frames(fps, cfg.back_s)
        self.reset()

    def reset(self) -> None:
        """Start over (a new video, or a new face alignment whose values do not continue the old ones)."""
        self._values: deque[tuple[int, float, float]] = deque(maxlen=self.lag + 1)  # (index, ts, value)
        self._v: deque[float] = deque(maxlen=self.window + self.lag + 1)  # values, newest last
        self._b: deque[float] = deque(maxlen=self.window + self.lag + 1)  # back values, newest last
        self._s: deque[float] = deque(maxlen=self.window)  # s over the trailing window, newest last
        self._s_index = -1  # frame index of the newest s
        self._next_index: int | None = None
        self._seen = 0  # finite s values so far
        self._armed = True
        self._active: _Candidate | None = None  # between a rising edge and the half-height crossing
        self._base = 0.0
        self._mad = 1.0
        self._pending: _Candidate | None = None
        self._last_offset = -1
        self._ready: list[Spot] = []
        self.last: tuple[int, float, float] | None = None  # (index, s, threshold) of the newest s

    @property
    def busy(self) -> bool:
        """Whether a candidate is open (between its rising edge and its report or rejection)."""
        return self._active is not None or self._pending is not None

    def active_since(self) -> int | None:
        """First frame of the open candidate (its rising edge or estimated onset), None when idle.

        A live loop keeps the face transform and the frames from here on while this is not None.
        """
        if self._pending is not None:
            return self._pending.onset
        return self._active.onset if self._active is not None else None

    # -- input -----------------------------------------------------------------------------------------

    def update(self, frame_index: int, ts: float, value: float | None, back: float | None = None) -> list[Spot]:
        """Add frame ``frame_index``'s value and return the spots this confirms.

        ``value`` is ``MotionSignal.push``'s result (None: none for this frame); ``back`` is
        ``MotionSignal.back`` (None: not known), for the return-to-rest check. Skipped frame
        indices count as frames without a value.
        """
        if self._next_index is not None and frame_index < self._next_index:
            raise ValueError(f"frame {frame_index} after frame {self._next_index - 1}: frames must come in order "
                             "(reset() to start over)")
        out: list[Spot] = []
        if self._next_index is not None:
            for missing in range(self._next_index, frame_index):  # dropped frames carry no value
                out += self._push(missing, math.nan, None, None)
        out += self._push(frame_index, ts, value, back)
        self._next_index = frame_index + 1
        return out

    def finish(self) -> list[Spot]:
        """End of the stream: report what is still pending (the last k frames have no s)."""
        if self._active is not None:
            self._close_active(self._s_index)
        self._finalize(self._s_index)
        out, self._ready = self._ready, []
        return out

    def _push(self, index: int, ts: float, value: float | None, back: float | None) -> list[Spot]:
        v = math.nan if value is None or not math.isfinite(value) else float(value)
        self._values.append((index, ts, v))
        self._v.append(v)
        self._b.append(math.nan if back is None or not math.isfinite(back) else float(back))
        if len(self._values) <= self.lag:
            return []
        j, tj, vj = self._values[0]
        s = min(vj, v) if math.isfinite(vj) and math.isfinite(v) else math.nan
        return self._step(j, tj, s)

    # -- the rules -------------------------------------------------------------------------------------

    def _step(self, j: int, ts: float, s: float) -> list[Spot]:
        self._s.append(s)
        self._s_index = j
        finite = math.isfinite(s)
        if finite:
            self._seen += 1
        window = np.asarray(self._s)
        window = window[np.isfinite(window)]
        if len(window):
            self._base = float(np.median(window))
            self._mad = MAD_TO_SIGMA * float(np.median(np.abs(window - self._base))) + 1e-9
        thr = self._base + self.config.c * self._mad
        self.last = (j, s, thr)
        above = finite and s > thr
        if self._active is not None:
            self._follow(j, ts, s)
        elif above and self._armed and self._seen > self.warmup:
            self._active = _Candidate(j, j, j, s - self._base, (s - self._base) / self._mad, ts)
            self._armed = False
        if not above:
            self._armed = True
        if self._pending is not None and j >= self._pending.offset + self.merge:
            self._finalize(j)
        out, self._ready = self._ready, []
        return out

    def _follow(self, j: int, ts: float, s: float) -> None:
        """Track the apex of the active candidate until s falls to half its height."""
        a = self._active
        assert a is not None
        if math.isfinite(s) and s - self._base > a.peak:
            a.apex, a.peak, a.score, a.apex_ts = j, s - self._base, (s - self._base) / self._mad, ts
        half = self._base + 0.5 * a.peak
        if not math.isfinite(s) or s <= half:
            self._close_active(j)
        elif j - a.onset > 3 * self.max_frames:  # still high: a macro-expression or a head turn
            a.offset, a.too_long = j, True
            self._queue(a)
            self._active = None

    def _close_active(self, j: int) -> None:
        """The active candidate's s crossed half height at j: estimate its interval and queue it."""
        a = self._active
        assert a is not None
        self._active = None
        s = np.asarray(self._s)  # s[-1] is frame self._s_index
        pos = len(s) - 1 - (self._s_index - a.apex)  # apex position in s
        half = self._base + 0.5 * a.peak
        right = self._crossing(s, pos, half, +1)
        left = self._crossing(s, pos, half, -1)
        if left is None:  # no crossing within reach before the apex: it started long ago
            a.onset, a.offset, a.too_long = a.apex - 2 * self.max_frames, j, True
        else:
            a.onset = int(round(a.apex - self.config.extend * (a.apex - (self._s_index - (len(s) - 1 - left)))))
            right_index = self._s_index - (len(s) - 1 - right) if right is not None else float(j)
            a.offset = int(round(a.apex + self.config.extend * (right_index - a.apex)))
            a.onset = min(a.onset, a.apex)
            a.offset = max(a.offset, a.apex)
        self._queue(a)

    def _crossing(self, s: np.ndarray, pos: int, level: float, step: int) -> float | None:
        """Fractional position in ``s`` where it falls to ``level`` walking from ``pos`` by ``step``."""
        i = pos
        for _ in range(2 * self.max_frames):
            k = i + step
            if k < 0 or k >= len(s):
                return None
            if not math.isfinite(s[k]) or s[k] <= level:
                if not math.isfinite(s[k]) or s[i] == s[k]:
                    return float(k)
                return i + step * (s[i] - level) / (s[i] - s[k])
            i = k
        return None

    def _queue(self, c: _Candidate) -> None:
        p = self._pending
        if p is not None and c.onset <= p.offset + self.merge:
            stronger = c if c.peak > p.peak else p
            self._pending = _Candidate(min(p.onset, c.onset), stronger.apex, max(p.offset, c.offset), stronger.peak,
                                       stronger.score, stronger.apex_ts, p.too_long or c.too_long)
            return
        if p is not None:  # nothing can merge into it any more
            self._finalize(self._s_index)
        self._pending = c

    def _at_rest(self, c: _Candidate) -> bool:
        """Whether the face is back where it was before the onset (not a step into a longer expression).

        A macro-expression's rise or fall can look like a micro-expression in s; what tells
        them apart is that after a micro-expression the face returns to rest. Two checks:

        * value(t), t in (offset, onset + k): the face after the offset against the face
          before the onset (possible when the interval is shorter than k);
        * back(t), t in (offset, offset + rest]: the same with the signal's longer lag
          (0.6 s), which reaches before the onset for every micro-expression length.

        "Back at rest": the largest of those values <= median + rest_c * MAD of that series.
        """
        newest = self._s_index + self.lag  # frame index of the newest value
        return (_rests(self._v, newest, c.offset + 1, c.onset + self.lag - 1, self.config.rest_c)
                and _rests(self._b, newest, c.offset + 1, min(c.onset - 1 + self.back_lag, c.offset + self.rest),
                           self.config.rest_c))

    def _finalize(self, j: int) -> None:
        """Report the pending candidate (s known up to frame j) if it has a micro-expression's length."""
        c, self._pending = self._pending, None
        if c is None:
            return
        length = c.offset - c.onset + 1
        if c.too_long or not self.min_frames <= length <= self.max_frames:
            return
        if c.onset <= self._last_offset:  # overlaps a spot already reported
            return
        if not self._at_rest(c):
            return
        self._ready.append(Spot(c.onset, c.apex, c.offset, c.score, j + self.lag, c.apex_ts))
        self._last_offset = c.offset


def _rests(series: deque[float], newest: int, first: int, last: int, c: float) -> bool:
    """Whether ``series`` (newest value at frame ``newest``) stays <= median + c * MAD over frames first..last.

    True when the frames are not there (none, before the buffer, or not finite): no evidence against rest.
    """
    last = min(last, newest)
    if first > last:
        return True
    values = np.asarray(series)
    finite = values[np.isfinite(values)]
    if len(finite) < 3:
        return True
    median = float(np.median(finite))
    level = median + c * MAD_TO_SIGMA * float(np.median(np.abs(finite - median)))
    lo, hi = len(values) - 1 - (newest - first), len(values) - 1 - (newest - last)
    part = values[max(0, lo):max(0, hi + 1)]
    part = part[np.isfinite(part)]
    return len(part) == 0 or float(part.max()) <= level


def spot_series(values: Iterable[float | None], fps: float, config: SpotterConfig | None = None,
                back: Iterable[float | None] | None = None) -> SpotResult:
    """Spot a whole series with the streaming ``Spotter`` (same code, same spots)."""
    spotter = Spotter(fps, config)
    vals = np.array([math.nan if v is None else float(v) for v in values], np.float64)
    n = len(vals)
    signal = np.full(n, math.nan)
    threshold = np.full(n, math.nan)
    spots: list[Spot] = []
    backs = [None] * n if back is None else [None if b is None or math.isnan(b) else float(b) for b in back]
    for i, v in enumerate(vals):
        spots += spotter.update(i, i / fps, None if math.isnan(v) else float(v), backs[i])
        if spotter.last is not None:
            j, s, thr = spotter.last
            signal[j], threshold[j] = s, thr
    spots += spotter.finish()
    backs_array = None if back is None else np.array([math.nan if b is None else b for b in backs], np.float64)
    return SpotResult(float(fps), vals, signal, threshold, spots, backs_array)


class FrameSpotter:
    """Camera frames in, spots out: ``FaceTrack``, ``MotionSignal`` and ``Spotter`` in one streaming object.

    ``push(frame, ts)`` takes the next frame (BGR or grey, any size) and returns the spots
    confirmed by it; frame indices count pushes from 0. When the face track adopts a new
    alignment, the buffered frames are re-cropped under it and fed to a fresh signal, so
    the values go on without a gap. ``value``, ``back`` and ``last`` (index, s, threshold)
    describe the newest frame; ``alignments`` counts adopted face alignments.
    """

    def __init__(self, fps: float, size: int = DEFAULT_SIZE, signal: SignalConfig | None = None,
                 spotter: SpotterConfig | None = None, track: FaceTrack | None = None) -> None:
        self.fps = float(fps)
        self.signal = MotionSignal(fps, size, signal)
        cfg = spotter or SpotterConfig()
        sig = self.signal.config
        if cfg.lag_s != sig.lag_s or (sig.back_s > 0 and cfg.back_s != sig.back_s):
            raise ValueError("the spotter's lag_s and back_s must be the signal's")
        self.spotter = Spotter(fps, cfg)
        self.track = track or FaceTrack(size, fps)
        self._frames: deque[np.ndarray] = deque(maxlen=max(self.signal.lag, self.signal.back_lag) + 1)
        self.index = -1
        self.value: float | None = None
        self.back: float | None = None
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
        self.value = self.back = None
        if self.track.update(gray, self.index, idle, self.signal.head if self.signal.regions else None):
            start = time.perf_counter()
            if self.track.changed:  # re-crop the buffered frames under the new transform
                self.signal.reset(keep_usual=self.index > 0)
                for earlier in list(self._frames)[:-1]:
                    self.signal.push(self.track.crop(earlier))
            self.value = self.signal.push(self.track.crop(gray))
            self.back = self.signal.back
            self.signal_seconds += time.perf_counter() - start
        stamp = self.index / self.fps if ts is None else ts
        return self.spotter.update(self.index, stamp, self.value, self.back)

    def finish(self) -> list[Spot]:
        return self.spotter.finish()
