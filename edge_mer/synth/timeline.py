"""Events in time: micro-expressions, macro-expressions and blinks, and head motion.

Frame indices are 0-based. An event rises from its onset to its apex and falls
back to rest at its offset with raised-cosine profiles, so the intensity is 0 at
onset and offset and 1 at the apex.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from edge_mer.synth.aus import EMOTION_PATTERNS, AUCode, parse_aus
from edge_mer.synth.render import FaceRenderer, Nuisances, Pose

#: Micro-expression bounds: total 1/25 s to 1/2 s, onset to apex at most 0.26 s.
MICRO_MAX_S = 0.5
MICRO_MIN_S = 1 / 25
MICRO_ONSET_MAX_S = 0.26


@dataclass(frozen=True)
class PlannedExpression:
    """A micro- or macro-expression or a blink the generator renders (its truth row), with its AUs."""

    kind: str  # "micro", "macro" or "blink"
    onset: int
    apex: int
    offset: int
    aus: tuple[AUCode, ...]
    amplitude: float  # apex displacement, pixels at 112 (blink: eye closure 0..1)
    emotion: str = ""
    gains: tuple[float, ...] = ()  # per AU, on top of the amplitude (empty: 1 each)

    def intensity(self, t: float) -> float:
        if t <= self.onset or t >= self.offset:
            return 0.0
        if t <= self.apex:
            s = (t - self.onset) / max(self.apex - self.onset, 1e-9)
        else:
            s = (self.offset - t) / max(self.offset - self.apex, 1e-9)
        return float(0.5 - 0.5 * np.cos(np.pi * s))


@dataclass(frozen=True)
class Ranges:
    """What events look like; seconds and pixels at 112."""

    micro_seconds: tuple[float, float] = (0.2, 0.5)
    micro_amplitude: tuple[float, float] = (0.5, 2.0)
    macro_seconds: tuple[float, float] = (0.6, 3.0)
    macro_amplitude: tuple[float, float] = (3.0, 6.0)
    blink_seconds: tuple[float, float] = (0.15, 0.4)


def micro_event(rng: np.random.Generator, fps: float, start: int, aus: list[AUCode], emotion: str,
                ranges: Ranges = Ranges(), rise_share: tuple[float, float] = (0.3, 0.6)) -> PlannedExpression:
    """A micro-expression starting at frame ``start``, drawn within ``ranges``; onset to apex takes
    ``rise_share`` of its duration (at most 0.26 s)."""
    lo = max(ranges.micro_seconds[0], MICRO_MIN_S, 2.0 / fps)
    hi = min(max(ranges.micro_seconds[1], lo), MICRO_MAX_S)
    frames = max(2, int(round(rng.uniform(lo, hi) * fps)))
    rise = min(rng.uniform(*rise_share) * frames, MICRO_ONSET_MAX_S * fps)
    apex = start + max(1, int(round(rise)))
    amp = float(rng.uniform(*ranges.micro_amplitude))
    return PlannedExpression("micro", start, min(apex, start + frames - 1), start + frames, tuple(aus), amp, emotion)


def macro_event(rng: np.random.Generator, fps: float, start: int, ranges: Ranges = Ranges()) -> PlannedExpression:
    layout = EMOTION_PATTERNS["composite"]
    emotion = str(rng.choice(sorted(layout)))
    aus = parse_aus(str(rng.choice(layout[emotion])))
    frames = max(3, int(round(rng.uniform(*ranges.macro_seconds) * fps)))
    apex = start + max(1, int(round(rng.uniform(0.2, 0.45) * frames)))
    amp = float(rng.uniform(*ranges.macro_amplitude))
    return PlannedExpression("macro", start, apex, start + frames, tuple(aus), amp, emotion)


def blink_event(rng: np.random.Generator, fps: float, start: int, ranges: Ranges = Ranges()) -> PlannedExpression:
    frames = max(2, int(round(rng.uniform(*ranges.blink_seconds) * fps)))
    apex = start + max(1, frames // 3)
    return PlannedExpression("blink", start, apex, start + frames, (AUCode(43),), 1.0, "blink")


@dataclass
class HeadPath:
    """Smooth head trajectories: slow drift plus low-pass jitter, precomputed per frame."""

    frames: int
    fps: float
    iod: float
    nuisances: Nuisances
    rng: np.random.Generator
    poses: list[Pose] = field(init=False)

    def __post_init__(self) -> None:
        n, nz = self.frames, self.nuisances
        t = np.arange(n) / self.fps
        rng = self.rng

        def drift(amplitude: float) -> np.ndarray:
            out = np.zeros(n)
            for _ in range(2):
                f = rng.uniform(0.03, 0.25)
                out += amplitude / 2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
            return out

        def jitter(amplitude: float) -> np.ndarray:
            white = rng.standard_normal(n)
            alpha = min(1.0, 8.0 / self.fps)  # ~8 Hz bandwidth whatever the frame rate
            out = np.zeros(n)
            acc = 0.0
            for i in range(n):
                acc += alpha * (white[i] - acc)
                out[i] = acc
            return out * amplitude / max(float(out.std()), 1e-9) if n > 1 else out

        tx = drift(nz.head_drift * self.iod) + jitter(nz.head_jitter * self.iod)
        ty = drift(nz.head_drift * self.iod * 0.6) + jitter(nz.head_jitter * self.iod)
        angle = drift(nz.head_rotation) + jitter(nz.head_rotation * 0.05)
        scale = 1 + drift(nz.head_drift * 0.1)
        self.poses = [Pose(float(a), float(b), float(c), float(d))
                      for a, b, c, d in zip(tx, ty, angle, scale)]


def flicker_gains(frames: int, fps: float, amount: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(frames) / fps
    slow = np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t + rng.uniform(0, 2 * np.pi))
    return 1 + amount * (slow + 0.3 * rng.standard_normal(frames))


def activations(events: list[PlannedExpression], t: float) -> tuple[dict[AUCode, float], float]:
    """AU amplitudes (pixels at 112) and blink closure at frame ``t``."""
    acts: dict[AUCode, float] = {}
    blink = 0.0
    for ev in events:
        k = ev.intensity(t)
        if k <= 0:
            continue
        if ev.kind == "blink":
            blink = max(blink, k * ev.amplitude)
            acts[AUCode(43)] = acts.get(AUCode(43), 0.0) + k * 4.0  # the lid travels ~4 px at 112
            continue
        gains = ev.gains or (1.0,) * len(ev.aus)
        for code, gain in zip(ev.aus, gains):
            acts[code] = acts.get(code, 0.0) + k * ev.amplitude * gain
    return acts, blink


def render_sequence(renderer: FaceRenderer, events: list[PlannedExpression], frames: int, fps: float,
                    nuisances: Nuisances, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield ``frames`` rendered frames of ``events`` under ``nuisances``."""
    head = HeadPath(frames, fps, renderer.face_iod, nuisances, rng)
    gains = flicker_gains(frames, fps, nuisances.flicker, rng)
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))
    for i in range(frames):
        acts, blink = activations(events, i)
        yield renderer.render(acts, blink, head.poses[i], float(gains[i]), nuisances.noise, noise_rng,
                              nuisances.jpeg_quality)
