"""The one interface every inference backend offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.artifact import INPUTS


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str names a dynamic axis
    dtype: str


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def as_batch(motion: np.ndarray, texture: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, S, S) and (B, 1, S, S) float32, contiguous; single samples gain a batch axis."""
    m = np.ascontiguousarray(motion, np.float32)
    t = np.ascontiguousarray(texture, np.float32)
    if m.ndim == 3:
        m = m[None]
    if t.ndim == 3:
        t = t[None]
    if m.shape[1:] != (3, size, size) or t.shape[1:] != (1, size, size) or len(m) != len(t):
        raise UserError(f"inputs of shape {tuple(motion.shape)} and {tuple(texture.shape)} do not fit a model of "
                        f"size {size}: expected (B, 3, {size}, {size}) and (B, 1, {size}, {size})")
    return m, t


def sample_inputs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random model inputs of the normalised input range: u, v ~ N(0, 1.5), strain |N(0, 1.5)|, texture N(0, 1)."""
    rng = np.random.default_rng(seed)
    motion = (rng.standard_normal((n, 3, size, size)) * 1.5).astype(np.float32)
    motion[:, 2] = np.abs(motion[:, 2])
    return motion, rng.standard_normal((n, 1, size, size)).astype(np.float32)


class Backend(ABC):
    """Load once, then ``infer(motion, texture) -> probabilities (B, classes)``."""

    name: str = ""
    size: int
    class_names: list[str]
    precision: str = "fp32"

    @abstractmethod
    def logits(self, motion: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """Raw logits (B, classes) of a batch that ``as_batch`` has checked."""

    def infer(self, motion: np.ndarray, texture: np.ndarray) -> np.ndarray:
        m, t = as_batch(motion, texture, self.size)
        return softmax(self.logits(m, t))

    def input_spec(self) -> list[TensorSpec]:
        s = self.size
        return [TensorSpec(INPUTS[0], ("batch", 3, s, s), "float32"),
                TensorSpec(INPUTS[1], ("batch", 1, s, s), "float32")]

    def describe(self) -> str:
        return f"{self.name} ({self.precision})"

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release device memory and contexts."""
