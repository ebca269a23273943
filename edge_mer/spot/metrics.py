"""The MEGC spotting score: interval matches at IoU >= 0.5, precision, recall and F1.

Intervals are (onset, offset) frame indices with the offset inclusive; IoU counts frames,
as MEGC's evaluation does: ``|P & T| / |P | T|`` of the two frame sets. A predicted
interval is a true positive when it overlaps a truth interval with IoU >= 0.5; each truth
and each prediction is matched at most once, greedily from the highest IoU down.
Unmatched predictions are false positives, unmatched truth intervals false negatives.
A ratio whose denominator is 0 counts as 0, as in MEGC's scripts.

``f1_interval`` says how far a pooled F1 measured on a few videos can be trusted: a
bootstrap over the videos, alone or paired against another method on the same videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Tuple

import numpy as np

Interval = Tuple[int, int]


def iou(a: Interval, b: Interval) -> float:
    """Frame IoU of two inclusive intervals."""
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    if inter <= 0:
        return 0.0
    union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter
    return inter / union


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


@dataclass
class SpottingScore:
    tp: int
    fp: int
    fn: int
    matches: list[tuple[int, int, float]] = field(default_factory=list)  # (prediction, truth, IoU)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def __add__(self, other: SpottingScore) -> SpottingScore:
        """Pooled counts over videos (MEGC scores a dataset by its summed TP, FP and FN)."""
        return SpottingScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4)}


def evaluate_spots(predicted: Sequence[Interval], truth: Sequence[Interval], threshold: float = 0.5) -> SpottingScore:
    """Match ``predicted`` to ``truth`` intervals at IoU >= ``threshold``."""
    for a in (*predicted, *truth):
        if a[1] < a[0]:
            raise ValueError(f"interval {a} ends before it starts")
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)),
                   key=lambda x: (-x[0], x[1], x[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for value, i, j in pairs:
        if value < threshold:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((i, j, value))
    tp = len(matches)
    return SpottingScore(tp, len(predicted) - tp, len(truth) - tp, matches)


def _counts(scores: Sequence[SpottingScore]) -> np.ndarray:
    """(videos, 3): each video's TP, FP and FN."""
    return np.array([[s.tp, s.fp, s.fn] for s in scores])


def _pooled_f1(counts: np.ndarray) -> np.ndarray:
    """F1 of the counts summed over the last-but-one axis; ``counts[..., :]`` is (TP, FP, FN)."""
    tp, fp, fn = np.moveaxis(counts.sum(axis=-2), -1, 0).astype(float)
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def f1_interval(scores: Sequence[SpottingScore], against: Sequence[SpottingScore] | None = None,
                level: float = 0.95, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled F1 of per-video ``scores``.

    Videos are drawn with replacement and their counts pooled, as the score itself pools
    them. With ``against`` (the same videos scored by another method, in the same order)
    the interval is of the difference ``F1(scores) - F1(against)`` over the same draws, so
    that what the two share (which videos happen to be hard) cancels: an interval that
    holds 0 says the videos do not tell the two apart.
    """
    if not scores:
        raise ValueError("no videos to draw from")
    if against is not None and len(against) != len(scores):
        raise ValueError(f"{len(scores)} videos scored against {len(against)}")
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not between 0 and 1")
    rows = _counts(scores)
    pick = np.random.default_rng(seed).integers(0, len(rows), size=(draws, len(rows)))
    values = _pooled_f1(rows[pick])
    if against is not None:
        values = values - _pooled_f1(_counts(against)[pick])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
