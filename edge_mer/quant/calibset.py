"""Calibration sets: motion/texture samples drawn from a feature cache.

A calibration set decides the INT8 ranges, so it should look like what the
device will see: every dataset, every class and as many subjects as possible.
``build_set`` splits ``n`` over the (dataset, class) groups in proportion to
their size (at least one sample each), and inside a group takes one sample per
subject in turn (subjects in random order) before any subject gives a second.
The file is an ``.npz`` with the arrays, the sample ids and a JSON header
(crop size, normalisation constants, the features' config, the counts). A set
below :data:`MIN_CALIBRATION_SAMPLES` is neither written nor read.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.atomic import replacing
from edge_mer.data.labels import COMPOSITE_NAMES
from edge_mer.errors import UserError
from edge_mer.features.cache import NPZ_DAMAGED, FeatureSet
from edge_mer.flow.normalise import CONSTANTS
from edge_mer.flow.person import described

CALIBRATION_FORMAT = "edge-mer-calibration/1"
# The fewest samples INT8 ranges are taken from (PTQ, QAT, build-set). A max range is the largest of N samples'
# peaks, so an unseen sample exceeds it with probability about 1/(N + 1): 3 % at 32, where clipping just past the
# range costs little; below that single samples decide the ranges, and the quality gate's agreement over the set
# (one sample is 3 % of 32) says little. 256-512 are recommended.
MIN_CALIBRATION_SAMPLES = 32
_KEYS = ("motion", "texture", "labels", "ids", "meta")


@dataclass
class CalibrationSet:
    motion: np.ndarray
    texture: np.ndarray
    labels: np.ndarray
    ids: list[str]
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.motion.shape[-1])

    def __len__(self) -> int:
        return len(self.ids)


def _quotas(sizes: dict[tuple[str, int], int], n: int) -> dict[tuple[str, int], int]:
    """Largest-remainder split of n over groups, at least one each, never more than a group holds."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    quota = {g: min(s, max(1, int(n * s / total))) for g, s in sizes.items()}
    order = sorted(sizes, key=lambda g: (n * sizes[g] / total) - int(n * sizes[g] / total), reverse=True)
    while sum(quota.values()) < n:
        grew = False
        for g in order:
            if sum(quota.values()) >= n:
                break
            if quota[g] < sizes[g]:
                quota[g] += 1
                grew = True
        if not grew:
            break
    while sum(quota.values()) > n:  # the at-least-one rule overshot: trim the largest groups
        g = max(quota, key=lambda k: quota[k])
        quota[g] -= 1
    return quota


def select(fs: FeatureSet, n: int, seed: int = 0, only_ids: set[str] | None = None) -> np.ndarray:
    """Indices of a calibration sample stratified by dataset, class and subject."""
    rng = np.random.default_rng(seed)
    pool = [i for i in range(len(fs)) if only_ids is None or fs.ids[i] in only_ids]
    if not pool:
        raise UserError("no samples to draw a calibration set from (none of the features were used to train the "
                        "given checkpoint)")
    groups: dict[tuple[str, int], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in pool:
        groups[(fs.datasets[i], int(fs.labels[i]))][fs.subjects[i]].append(i)
    quota = _quotas({g: sum(len(v) for v in by_subject.values()) for g, by_subject in groups.items()}, n)
    chosen: list[int] = []
    for g in sorted(groups):
        by_subject = {s: list(rng.permutation(v)) for s, v in groups[g].items()}
        subjects = list(rng.permutation(sorted(by_subject)))
        taken = 0
        while taken < quota[g]:
            for s in subjects:
                if taken < quota[g] and by_subject[s]:
                    chosen.append(int(by_subject[s].pop()))
                    taken += 1
    return np.array(sorted(chosen), np.int64)


def build_set(fs: FeatureSet, n: int, seed: int = 0, only_ids: set[str] | None = None,
              person_rms: float = 0.0) -> CalibrationSet:
    """A calibration set of ``n`` samples, their motion as a model of ``person_rms`` reads it in training."""
    idx = select(fs, n, seed, only_ids)
    meta = {"format": CALIBRATION_FORMAT, "size": int(fs.motion.shape[-1]), "n": len(idx), "requested": n,
            "seed": seed, "normalisation": CONSTANTS, "features": fs.config, "person_rms": person_rms,
            "counts": {"dataset": dict(Counter(fs.datasets[i] for i in idx)),
                       "class": dict(Counter(COMPOSITE_NAMES[int(fs.labels[i])] for i in idx)),
                       "subjects": len({fs.subjects[i] for i in idx})}}
    motion = fs.motion_as_read(person_rms, scored=False)[idx]
    return CalibrationSet(motion, fs.texture[idx], fs.labels[idx], [fs.ids[i] for i in idx], meta)


def save_set(cs: CalibrationSet, path: Path) -> None:
    with replacing(path, ".npz") as tmp:
        np.savez_compressed(tmp, motion=cs.motion, texture=cs.texture, labels=cs.labels, ids=np.array(cs.ids),
                            meta=np.array(json.dumps(cs.meta, sort_keys=True)))


def check_person_level(set_meta: dict[str, Any], reads: float, set_path: Path, model_path: Path) -> None:
    """A model that reads each person's motion at one strength (person level ``reads``) is calibrated on motion
    scaled as it was trained on, and any other model on motion as it comes: one line when the set was built
    otherwise."""
    built = float(set_meta.get("person_rms") or 0.0)
    if built != reads:
        raise UserError(f"{set_path} holds {described(built)}, but {model_path.name} reads {described(reads)}: "
                        "build the set again with "
                        f"edge-mer calibrate build-set --checkpoint (the model's checkpoint)")


def too_few(what: str) -> UserError:
    """The one-line refusal of a calibration set below :data:`MIN_CALIBRATION_SAMPLES`; ``what`` says how many
    there are."""
    return UserError(f"{what}; INT8 calibration needs at least {MIN_CALIBRATION_SAMPLES} samples "
                     "(256-512 recommended)")


def load_set(path: Path, size: int | None = None, minimum: int = MIN_CALIBRATION_SAMPLES) -> CalibrationSet:
    """Read a calibration set; ``size`` checks it against a model's crop size, ``minimum`` its sample count."""
    if not path.is_file():
        raise UserError(f"calibration set not found: {path}")
    rebuild = "build it again with edge-mer calibrate build-set"
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty file, not a calibration set: {rebuild}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in getattr(z, "files", ())]
            if missing:
                raise UserError(f"{path} is not a calibration set (no {', '.join(missing)}): {rebuild}")
            meta = json.loads(str(z["meta"]))
            cs = CalibrationSet(z["motion"], z["texture"], z["labels"], [str(s) for s in z["ids"]], meta)
    except (*NPZ_DAMAGED, KeyError) as exc:
        raise UserError(f"{path} cannot be read as a calibration set (damaged or truncated: "
                        f"{type(exc).__name__}): {rebuild}") from None
    if not isinstance(meta, dict) or meta.get("format") != CALIBRATION_FORMAT:
        raise UserError(f"{path} is not an edge-mer calibration set")
    if meta.get("normalisation") != CONSTANTS:
        raise UserError(f"{path} was normalised with other constants ({meta.get('normalisation')}); rebuild it")
    n = len(cs.ids)
    if (cs.motion.ndim != 4 or cs.motion.shape[:2] != (n, 3) or cs.texture.shape != (n, 1, *cs.motion.shape[2:])
            or cs.motion.shape[2] != cs.motion.shape[3] or len(cs.labels) != n):
        raise UserError(f"{path} holds arrays of inconsistent shapes (motion {cs.motion.shape}, texture "
                        f"{cs.texture.shape}, {n} ids): {rebuild}")
    if cs.motion.dtype != np.float32 or cs.texture.dtype != np.float32:
        raise UserError(f"{path} holds {cs.motion.dtype}/{cs.texture.dtype} samples, not float32: {rebuild}")
    if size is not None and cs.size != size:
        raise UserError(f"calibration set {path.name} holds {cs.size}x{cs.size} samples; the model takes "
                        f"{size}x{size}")
    if n < minimum:
        raise too_few(f"calibration set {path} holds {n} samples")
    return cs
