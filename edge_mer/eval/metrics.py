"""UF1, UAR, accuracy, per-class F1 and confusion matrices, as MEGC defines them.

All scores are computed on predictions pooled over every fold (never averaged
over folds):

* per class c: TP_c, FP_c, FN_c and N_c (true samples of c) from the pooled
  confusion matrix; F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); recall_c = TP_c / N_c;
* UF1 = mean of F1_c over the classes; UAR = mean of recall_c over the classes.

Every declared class takes part. A class with no true sample has no recall; if
it was also never predicted its F1 is 0/0. Such a class is left out of the means
and named in ``absent`` (never silently); a class with no true sample that was
predicted has F1_c = 0 and counts. The usual case, MEGC's pooled composite,
has every class present.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

Labels = Union[Sequence[int], np.ndarray]


def confusion(truth: Labels, pred: Labels, classes: int) -> np.ndarray:
    """(classes, classes) counts; rows are the truth, columns the prediction."""
    t, p = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} truths but {p.shape[0]} predictions")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= classes or p.max() >= classes):
        raise ValueError(f"labels outside 0..{classes - 1}")
    cm = np.zeros((classes, classes), np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


@dataclass
class Scores:
    uf1: float
    uar: float
    accuracy: float
    samples: int
    f1: dict[str, float | None]
    recall: dict[str, float | None]
    support: dict[str, int]
    confusion: list[list[int]]
    absent: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"uf1": self.uf1, "uar": self.uar, "accuracy": self.accuracy, "samples": self.samples,
                "f1": self.f1, "recall": self.recall, "support": self.support, "confusion": self.confusion,
                "absent_classes": self.absent}


@dataclass
class Averaged:
    """Several runs' class probabilities averaged (an ensemble of the seeds): its scores, and the share of
    answers the runs give alike (each later run's agreement with the first, averaged; 1 for one run)."""

    scores: Scores
    shared: float


def averaged(truth: Labels, probs: Sequence[np.ndarray], names: Sequence[str]) -> Averaged:
    """``probs``: one (N, classes) array a run, the same samples in the same order."""
    if not probs:
        raise ValueError("no run's probabilities to average")
    answers = [np.asarray(p).argmax(1) for p in probs]
    shared = float(np.mean([(a == answers[0]).mean() for a in answers[1:]])) if len(answers) > 1 else 1.0
    return Averaged(scores(truth, np.mean(probs, 0).argmax(1), names), shared)


def scores(truth: Labels, pred: Labels, names: Sequence[str]) -> Scores:
    c = len(names)
    cm = confusion(truth, pred, c)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    n = cm.sum(1)
    f1: dict[str, float | None] = {}
    recall: dict[str, float | None] = {}
    absent = []
    for i, name in enumerate(names):
        denom = 2 * tp[i] + fp[i] + fn[i]
        f1[name] = float(2 * tp[i] / denom) if denom > 0 else None
        recall[name] = float(tp[i] / n[i]) if n[i] > 0 else None
        if n[i] == 0:
            absent.append(name)
    f1_values = [v for v in f1.values() if v is not None]
    recall_values = [v for v in recall.values() if v is not None]
    total = int(cm.sum())
    return Scores(
        uf1=float(np.mean(f1_values)) if f1_values else 0.0,
        uar=float(np.mean(recall_values)) if recall_values else 0.0,
        accuracy=float(tp.sum() / total) if total else 0.0,
        samples=total, f1=f1, recall=recall,
        support={name: int(n[i]) for i, name in enumerate(names)},
        confusion=cm.tolist(), absent=absent)


def per_group(truth: Labels, pred: Labels, groups: Sequence[str],
              names: Sequence[str]) -> dict[str, Scores]:
    """Scores of each group (e.g. dataset) on the pooled predictions."""
    t, p, g = np.asarray(truth), np.asarray(pred), np.asarray(groups)
    return {str(k): scores(t[g == k], p[g == k], names) for k in sorted(set(groups))}


def plot_confusion(cm: np.ndarray | list[list[int]], names: Sequence[str], path: str, title: str = "") -> None:
    """A confusion-matrix PNG with counts and row-normalised shading (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm, np.float64)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(m[i, j])}\n{frac[i, j]:.0%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_and_spread(values: Sequence[float]) -> str:
    """``mean ± standard deviation`` of a score over runs (seeds) for a table; the mean alone for one run."""
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"
