"""The flow stages by name: onset and apex camera frames plus the face transform in, model inputs out
(the interface: ``edge_mer.flow.base.FlowStage``).

* ``reference``: the numpy TV-L1 of ``edge_mer.flow.reference`` (the specification);
* ``opencv``: OpenCV contrib's TV-L1 when present, DIS otherwise;
  ``opencv-tvl1`` / ``opencv-dis`` pick one;
* ``cuda``: the fused kernels of ``edge_mer/flow/kernels/tvl1.cu`` launched by
  ``edge_mer.flow.cuda`` (needs pycuda and an NVIDIA GPU); it crops with
  ``reference.crop_gray``, which agrees with the aligner's crop to one grey level.
"""

from __future__ import annotations

import numpy as np

from edge_mer.errors import UserError
from edge_mer.flow import STAGES
from edge_mer.flow.base import FlowStage, MotionOptions
from edge_mer.flow.cuda import CudaStage
from edge_mer.flow.opencv import has_tvl1, make_flow
from edge_mer.flow.reference import TVL1Params, tvl1


class ReferenceStage(FlowStage):
    """The numpy TV-L1 reference."""

    name = "reference"

    def __init__(self, size: int = 112, params: TVL1Params | None = None,
                 options: MotionOptions | None = None) -> None:
        super().__init__(size, options)
        self.params = params or TVL1Params()

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return tvl1(first, second, self.params)


class OpenCVStage(FlowStage):
    """OpenCV's TV-L1 (contrib) or DIS; ``auto`` takes TV-L1 when contrib is installed."""

    def __init__(self, size: int = 112, method: str = "auto", options: MotionOptions | None = None) -> None:
        super().__init__(size, options)
        if method == "auto":
            method = "tvl1" if has_tvl1() else "dis"
        if method == "tvl1" and not has_tvl1():
            raise UserError("the opencv-tvl1 flow needs OpenCV's contrib modules: "
                            "pip install opencv-contrib-python-headless (or use opencv-dis)")
        self.method = method
        self.name = f"opencv-{method}"
        self._flow = make_flow(method)

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return self._flow(first, second)


def make_stage(name: str, size: int = 112, options: MotionOptions | None = None) -> FlowStage:
    """The flow stage called ``name`` (one of ``STAGES``) for S = ``size`` crops, its flow made as ``options``
    say (as features prepared with ``--oversample`` or ``--head removed`` were)."""
    if name == "reference":
        return ReferenceStage(size, options=options)
    if name == "opencv":
        return OpenCVStage(size, "auto", options)
    if name in ("opencv-tvl1", "opencv-dis"):
        return OpenCVStage(size, name[len("opencv-"):], options)
    if name == "cuda":
        return CudaStage(size, options=options)  # says in one line why it cannot run here
    raise UserError(f"unknown flow stage {name!r}; choose from {', '.join(STAGES)}")
