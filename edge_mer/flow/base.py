"""What every flow stage shares: the interface, grey conversion of camera frames, and whether CUDA can run.

A stage takes the onset and apex camera frames and the face transform, and returns
the model inputs: it crops both frames with the face aligner's warp
(``FaceAlignment.crop``: bilinear, border replicated), computes the flow onset ->
apex on the S x S crops and normalises exactly as the feature cache does
(``motion_tensor``, ``texture_tensor``), so a model trained on cached features
sees the same numbers on a device. ``edge_mer.flow.stage`` makes them by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from edge_mer.face.align import FaceAlignment, finer_matrix
from edge_mer.flow.normalise import motion_tensor, texture_tensor


def to_gray(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of a grey, BGR or BGRA uint8 camera frame."""
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[..., 0]
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(frame, code)
    raise ValueError(f"expected a grey, BGR or BGRA frame, got shape {frame.shape}")


class FlowStage(ABC):
    """(onset frame, apex frame, 2x3 frame -> crop matrix) -> (motion (3,S,S), texture (1,S,S)) float32."""

    name: str = ""

    def __init__(self, size: int = 112, oversample: int = 1) -> None:
        self.size = size
        self.oversample = oversample  # flow on crops this many times finer, averaged back to S (motion_tensor)

    @abstractmethod
    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(H, W, 2) float32 flow first -> second, in pixels, between two grey uint8 images of one size."""

    def crop(self, frame: np.ndarray, matrix: np.ndarray, size: int | None = None) -> np.ndarray:
        """(S, S) uint8 grey crop (``size``: another side), identical to the feature cache's."""
        m = np.asarray(matrix, np.float64)
        if m.shape != (2, 3):
            raise ValueError(f"the face transform must be a 2x3 matrix, got shape {m.shape}")
        return FaceAlignment(m, size or self.size, "matrix", (0, 0, 0, 0)).crop(to_gray(frame))

    def __call__(self, onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        second = self.crop(apex, matrix)
        if self.oversample > 1:
            fine = finer_matrix(matrix, self.oversample)
            size = self.size * self.oversample
            flow = self.flow(self.crop(onset, fine, size), self.crop(apex, fine, size))
        else:
            flow = self.flow(self.crop(onset, matrix), second)
        return motion_tensor(flow, self.oversample), texture_tensor(second)

    def __repr__(self) -> str:
        finer = f", oversample={self.oversample}" if self.oversample > 1 else ""
        return f"{type(self).__name__}(name={self.name!r}, size={self.size}{finer})"

