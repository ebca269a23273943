"""Evaluation protocols and the MEGC prediction log.

* Leave-one-subject-out (LOSO): one fold per subject; subjects of different
  datasets are different people (``dataset/subject``). The MEGC2019 composite
  protocol is LOSO over the 68 subjects of CASME II, SAMM and SMIC-HS together,
  training on all three datasets and scoring the pooled predictions, overall
  and per dataset.
* The MEGC log: per fold a line ``<dataset> <subject>``, then one line per test
  sample ``<clip> <predicted> <truth>`` with composite labels 0/1/2, e.g.::

      casme2 sub01
      EP02_01f 1 1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    subject: str  # dataset/subject left out
    train: np.ndarray  # sample indices
    test: np.ndarray


def loso_folds(subjects: Sequence[str]) -> list[Fold]:
    """One fold per subject, in sorted order; every sample is tested exactly once."""
    keys = np.asarray(subjects)
    folds = []
    for s in sorted(set(subjects)):
        test = np.flatnonzero(keys == s)
        train = np.flatnonzero(keys != s)
        folds.append(Fold(str(s), train, test))
    return folds


def megc_log(folds: Sequence[Fold], ids: Sequence[str], pred: Sequence[int] | np.ndarray,
             truth: Sequence[int] | np.ndarray) -> str:
    """The MEGC-format log of pooled predictions; ``ids`` are ``dataset/subject/clip``.

    One block per held-out subject, in fold order (a fold that holds out several subjects gives several)."""
    lines = []
    for fold in folds:
        blocks: dict[str, list[str]] = {}
        for i in fold.test:
            dataset, subject, clip = ids[i].split("/", 2)
            blocks.setdefault(f"{dataset} {subject}", []).append(f"{clip} {int(pred[i])} {int(truth[i])}")
        for head, rows in blocks.items():
            lines += [head, *rows]
    return "\n".join(lines) + "\n"
