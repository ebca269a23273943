"""Reading a feature cache back: arrays for training, with labels and subjects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.data.labels import COMPOSITE_LABELS
from edge_mer.errors import UserError


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

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        index = path / "index.jsonl"
        if not index.is_file():
            raise UserError(f"{path} is not a feature cache (no index.jsonl): run edge-mer data prepare")
        rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("status") == "ok" and r.get("composite")]
        if not rows:
            raise UserError(f"{path} holds no usable samples")
        motion, texture = [], []
        for r in rows:
            with np.load(path / r["file"]) as z:
                motion.append(z["motion"])
                texture.append(z["texture"])
        config = json.loads((path / "config.json").read_text())
        return cls(np.stack(motion), np.stack(texture),
                   np.array([COMPOSITE_LABELS[r["composite"]] for r in rows], np.int64),
                   [f"{r['dataset']}/{r['subject']}" for r in rows], [r["dataset"] for r in rows],
                   [r["id"] for r in rows], config)
