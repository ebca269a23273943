"""Score any model artefact on a feature cache through a backend.

A torch checkpoint, an FP32 or Q/DQ INT8 ONNX file or a TensorRT engine all go
through the same metrics code, so the INT8 model is judged exactly like the
FP32 one. ``unseen=True`` scores only the samples the model was not trained on
(the artefact records its training ids).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.eval.metrics import per_group, scores
from edge_mer.features.cache import FeatureSet
from edge_mer.flow.person import person_rms
from edge_mer.runtime.backends import Backend, open_backend
from edge_mer.runtime.session import model_meta


def trained_ids(be: Backend) -> set[str] | None:
    """The ids the model was trained on, when the artefact records them."""
    ck = getattr(be, "checkpoint", None)
    if ck is not None:
        return set(ck.get("trained_on", []))
    art = getattr(be, "artifact", None)
    if art is not None:
        return set(art.meta.get("trained_on", []))
    return None


def predict(be: Backend, motion: np.ndarray, texture: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([be.infer(motion[s:s + batch], texture[s:s + batch])
                           for s in range(0, len(motion), batch)]) if len(motion) else np.zeros((0, 0))


def evaluate(model: Path, features: Path, backend: str = "auto", threads: int | None = None,
             precision: str = "auto", unseen: bool = False) -> dict[str, Any]:
    be = open_backend(backend, model, threads=threads, precision=precision)
    fs = FeatureSet.load(features)
    if fs.motion.shape[-1] != be.size:
        raise UserError(f"features are {fs.motion.shape[-1]}x{fs.motion.shape[-1]} but the model expects "
                        f"{be.size}x{be.size}")
    trained = trained_ids(be)
    seen = np.array([trained is not None and i in trained for i in fs.ids])
    keep = ~seen if unseen else np.ones(len(fs), bool)
    if not keep.any():
        raise UserError(f"every sample in {features} was in the model's training set: nothing unseen to score")
    start = time.perf_counter()
    # a model of person_rms reads each subject's samples scaled by the gain of the subject's other samples
    probs = predict(be, fs.motion_as_read(person_rms(model_meta(be)), scored=True)[keep], fs.texture[keep])
    seconds = time.perf_counter() - start
    labels, pred = fs.labels[keep], probs.argmax(1)
    names = be.class_names
    s = scores(labels, pred, names)
    groups = [d for d, k in zip(fs.datasets, keep) if k]
    per_ds = {k: {"uf1": v.uf1, "uar": v.uar, "accuracy": v.accuracy, "samples": v.samples}
              for k, v in per_group(labels, pred, groups, names).items()}
    result = {"uf1": s.uf1, "uar": s.uar, "accuracy": s.accuracy, "samples": s.samples, "f1": s.f1,
              "confusion": s.confusion, "absent_classes": s.absent, "classes": names, "per_dataset": per_ds,
              "seen_in_training": int(seen[keep].sum()), "unseen_only": unseen, "backend": be.describe(),
              "precision": be.precision, "ms_per_sample": round(seconds * 1e3 / max(1, int(keep.sum())), 3),
              "model": str(model), "features": str(features)}
    be.close()
    return result
