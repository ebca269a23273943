"""What every flow stage shares: the interface, grey conversion of camera frames, and whether CUDA can run.

A stage takes the onset and apex camera frames and the face transform, and returns
the model inputs: it crops both frames with the face aligner's warp
(``FaceAlignment.crop``: bilinear, border replicated), computes the flow onset ->
apex on the S x S crops and normalises exactly as the feature cache does
(``motion_tensor``, ``texture_tensor``), so a model trained on cached features
sees the same numbers on a device; ``MotionOptions`` carries what the features'
flow had beyond its method (computed finer, the head's motion removed).
``edge_mer.flow.stage`` makes the stages by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_mer.errors import UserError
from edge_mer.face.align import FaceAlignment, finer_matrix
from edge_mer.flow.head import without_head
from edge_mer.flow.normalise import motion_tensor, texture_tensor

HEAD_CHOICES = ("kept", "removed")


@dataclass(frozen=True)
class MotionOptions:
    """How a model's flow is made beyond its method and crop size, as its features' was (``data prepare
    --oversample K``, ``--head removed``); the default is the plain flow of the S x S crops."""

    oversample: int = 1  # flow of crops this many times finer, averaged back to S (motion_tensor)
    head: str = "kept"  # "removed": the head's fitted affine motion subtracted from the flow (flow.head)

    def __post_init__(self) -> None:
        if self.oversample < 1 or self.head not in HEAD_CHOICES:
            raise UserError(f"flow options oversample={self.oversample}, head={self.head!r}: expected an "
                            f"oversample of 1 or more and a head {' or '.join(HEAD_CHOICES)}")

    @classmethod
    def of(cls, feature: Mapping[str, Any]) -> MotionOptions:
        """The options a feature config (``FeatureConfig.to_dict``, as a model's sidecar keeps it) records."""
        if int(feature.get("frames") or 1) != 1:
            raise UserError(f"the model was trained on flow between means of {feature['frames']} frames (features "
                            f"prepared with frames={feature['frames']}, a benchmark's experiment); the runtime "
                            f"computes the flow between single frames: train it on features with frames=1")
        if float(feature.get("magnify") or 1) != 1:
            raise UserError(f"the model was trained on flow to an apex magnified {feature['magnify']:g} times "
                            f"(features prepared with magnify={feature['magnify']:g}, a benchmark's experiment); the "
                            f"runtime computes the flow between the frames as filmed: train it on features with "
                            f"magnify=1")
        return cls(int(feature.get("oversample") or 1), str(feature.get("head") or "kept"))

    def describe(self) -> str:
        """'' for the plain flow, else what differs, e.g. `` (flow 2x finer, head motion removed)``."""
        parts = ([f"flow {self.oversample}x finer"] if self.oversample > 1 else []) + \
            (["head motion removed"] if self.head == "removed" else [])
        return f" ({', '.join(parts)})" if parts else ""

    def motion(self, flow: np.ndarray) -> np.ndarray:
        """(3, S, S) model input of a flow computed as these options say (of crops ``oversample`` times finer)."""
        return motion_tensor(without_head(flow) if self.head == "removed" else flow, self.oversample)


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

    def __init__(self, size: int = 112, options: MotionOptions | None = None) -> None:
        self.size = size
        self.options = options or MotionOptions()

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
        k = self.options.oversample
        if k > 1:
            fine = finer_matrix(matrix, k)
            flow = self.flow(self.crop(onset, fine, self.size * k), self.crop(apex, fine, self.size * k))
        else:
            flow = self.flow(self.crop(onset, matrix), second)
        return self.options.motion(flow), texture_tensor(second)

    def __repr__(self) -> str:
        options = "" if self.options == MotionOptions() else f", {self.options}"
        return f"{type(self).__name__}(name={self.name!r}, size={self.size}{options})"

