"""Reading a feature cache back: arrays for training, with labels and subjects."""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.data.labels import COMPOSITE_LABELS
from edge_mer.errors import UserError
from edge_mer.flow.person import scaled_by_person

RERUN = "rerun edge-mer data prepare with the same arguments"


class SampleFileError(Exception):
    """A sample's ``.npz`` cannot be used; the message says why, in a few words."""


# what numpy, zipfile and zlib raise for a truncated, overwritten or damaged .npz (a lone .npy is no context manager)
NPZ_DAMAGED = (OSError, EOFError, ValueError, TypeError, AttributeError, zipfile.BadZipFile, zlib.error)


@dataclass
class SampleFile:
    """What one sample's ``.npz`` holds."""

    motion: np.ndarray  # (3, S, S)
    texture: np.ndarray  # (1, S, S)
    key: str | None  # of what the file was made from; None in a version 1 cache
    apex: int | None
    alignment: str | None  # the alignment method


def read_sample(path: Path, size: int | None = None) -> SampleFile:
    """Read one sample's file whole (so a truncated or corrupt one fails here); raises SampleFileError."""
    if not path.is_file():
        raise SampleFileError("missing")
    if path.stat().st_size == 0:
        raise SampleFileError("empty")
    try:
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":  # np.load would take anything else for a pickle and say so
                raise SampleFileError("truncated or corrupt (not an .npz archive)")
        with np.load(path) as z:
            motion, texture = z["motion"], z["texture"]
            key = str(z["key"]) if "key" in z.files else None
            apex = int(z["apex"]) if "apex" in z.files else None
            alignment = json.loads(str(z["alignment"])).get("method") if "alignment" in z.files else None
    except KeyError as exc:
        raise SampleFileError(f"no {exc} array in it") from None
    except NPZ_DAMAGED as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SampleFileError(f"truncated or corrupt ({why})") from None
    side = motion.shape[-1] if size is None else size
    if motion.shape != (3, side, side) or texture.shape != (1, side, side):
        raise SampleFileError(f"arrays of shapes {motion.shape} and {texture.shape} (expected (3, {side}, {side}) "
                              f"and (1, {side}, {side}))")
    return SampleFile(motion, texture, key, apex, alignment)


@dataclass
class FeatureSet:
    motion: np.ndarray  # (N, 3, S, S) float32
    texture: np.ndarray  # (N, 1, S, S) float32
    labels: np.ndarray  # (N,) int64, composite classes 0 negative / 1 positive / 2 surprise
    subjects: list[str]  # dataset/subject, the LOSO unit
    datasets: list[str]
    ids: list[str]
    config: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)

    def motion_as_read(self, person_rms: float, scored: bool) -> np.ndarray:
        """The motion of every sample as a model of ``person_rms`` (``MMTConfig``) reads it: each subject's
        expressions scaled by their gain (``flow.person``), from all of the subject's samples where they are
        trained on, from the subject's other samples where they are ``scored``; the motion itself when 0. Every
        protocol keeps a subject's samples together, so the gains of the whole set are those of any fold."""
        if person_rms <= 0:
            return self.motion
        return scaled_by_person(self.motion, self.subjects, person_rms, others_only=scored)

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        index = path / "index.jsonl"
        if not index.is_file():
            raise UserError(f"{path} is not a feature cache (no index.jsonl): run edge-mer data prepare")
        try:
            rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is not a readable feature cache ({exc}): {RERUN}") from None
        pending = [r for r in rows if r.get("status") == "pending"]
        if pending:
            raise UserError(f"{path}: {len(pending)} samples not computed yet, e.g. {pending[0].get('id')} (the "
                            f"edge-mer data prepare run that wrote it was stopped): {RERUN}")
        rows = [r for r in rows if r.get("status") == "ok" and r.get("composite")]
        if not rows:
            raise UserError(f"{path} holds no usable samples")
        size = (config.get("feature") or {}).get("size")
        motion, texture = [], []
        for r in rows:
            file = path / r["file"]
            try:
                sample = read_sample(file, size)
            except SampleFileError as exc:
                raise UserError(f"feature file {file}: {exc}; {RERUN} to recompute it") from None
            if r.get("key") and sample.key != r["key"]:
                # the file was rewritten by a later run whose index.jsonl never got written (killed)
                raise UserError(f"feature file {file} was made from other inputs than {index} says "
                                f"(the cache is inconsistent): {RERUN}")
            motion.append(sample.motion)
            texture.append(sample.texture)
        return cls(np.stack(motion), np.stack(texture),
                   np.array([COMPOSITE_LABELS[r["composite"]] for r in rows], np.int64),
                   [f"{r['dataset']}/{r['subject']}" for r in rows], [r["dataset"] for r in rows],
                   [r["id"] for r in rows], config)
