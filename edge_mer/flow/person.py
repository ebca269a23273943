"""How strongly a person moves, and their motion brought to a common strength (``MMTConfig.person_rms``).

People differ in how strongly they move: on the diverse synthetic composite one subject's expressions are half
as large as another's, and on real faces a weak mover's smile is barely above the flow's noise. A model that
takes ``person_rms`` > 0 reads each expression multiplied by one factor per person: ``person_rms`` over the
median RMS flow magnitude of that person's *other* expressions, at most ``MAX_GAIN`` (a person seen only still),
1 while none is known. Within a person, a stronger expression stays stronger than a weaker one; across people,
a typical expression reaches the model at one size.

Where the other expressions come from:

* training: every sample of the training subject (its labels are known; the levels use no label);
* evaluation (LOSO, k-fold): the held-out subject's other samples, never the sample itself, so a subject's
  gain is what a device would know once it has seen that person's other expressions;
* the device (``PersonLevel``): the events already classified in this run, the last ``keep`` of them.

Numpy only: the device runtime uses it as it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_GAIN = 4.0  # a person whose expressions all barely move is lifted four times at most
KEEP = 16  # the device's memory: the last 16 expressions of the person in front of the camera


def person_rms(model_meta: Mapping[str, Any]) -> float:
    """The person level of a model from what it says of itself (a sidecar's, an engine's or a checkpoint's
    ``config``): ``MMTConfig.person_rms``, 0 when the model reads the motion as it comes."""
    return float((model_meta.get("config") or {}).get("person_rms") or 0.0)


def described(target: float) -> str:
    """What a model of person level ``target`` reads, in words."""
    return f"each person's motion brought to RMS {target:g}" if target else "the motion as it comes"


def flow_rms(motion: np.ndarray) -> np.ndarray:
    """RMS magnitude of the flow (u, v) of each sample of ``motion`` (N, 3, S, S) or of one (3, S, S): (N,) or ()."""
    m = np.asarray(motion, np.float64)
    return np.sqrt((m[..., :2, :, :] ** 2).sum(-3).mean((-2, -1)))


def person_gain(levels: Sequence[float] | np.ndarray, target: float) -> float:
    """The factor for a person whose other expressions had RMS flow ``levels``: ``target`` over their median,
    at most ``MAX_GAIN``; 1 with no other expression."""
    if len(levels) == 0:
        return 1.0
    return float(target / max(float(np.median(levels)), target / MAX_GAIN))


def scaled_by_person(motion: np.ndarray, subjects: Sequence[str], target: float, others_only: bool) -> np.ndarray:
    """``motion`` (N, 3, S, S) with each sample multiplied by its subject's gain: from all of the subject's
    samples (``others_only`` False: training) or from its other samples only (True: the samples scored)."""
    levels = flow_rms(motion)
    names = np.asarray(subjects)
    gains = np.ones(len(motion), np.float32)
    for name in np.unique(names):
        mine = np.flatnonzero(names == name)
        for i in mine:
            gains[i] = person_gain(levels[mine[mine != i]] if others_only else levels[mine], target)
    return (motion * gains[:, None, None, None]).astype(motion.dtype, copy=False)


class PersonLevel:
    """The device's record of the person in front of the camera: the RMS flow of their last ``keep``
    expressions. ``__call__`` scales one expression by the gain those give, then records it."""

    def __init__(self, target: float, keep: int = KEEP) -> None:
        if not target > 0:
            raise ValueError(f"person level target must be positive, not {target}")
        self.target = target
        self.levels: deque[float] = deque(maxlen=keep)

    @property
    def gain(self) -> float:
        """The factor the next expression is multiplied by."""
        return person_gain(list(self.levels), self.target)

    def __call__(self, motion: np.ndarray) -> np.ndarray:
        """``motion`` (3, S, S) or (1, 3, S, S) scaled by the gain of the expressions before it."""
        scaled = (motion * np.float32(self.gain)).astype(motion.dtype, copy=False)
        self.levels.append(float(flow_rms(motion.reshape(motion.shape[-3:]))))
        return scaled

    def reset(self) -> None:
        """Forget the person (another face is tracked)."""
        self.levels.clear()
