"""The raw dense flow between two image files, saved as ``.npy`` (``edge-mer flow``).

    edge-mer flow --first A.png --second B.png --method reference --out flow.npy [--json]

The flow is (H, W, 2) float32, u then v in pixels, from the first image to the
second, on the whole images (no face crop). The output is written to a
temporary file and renamed, so a failed run leaves an existing ``--out`` as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_mer.atomic import replacing
from edge_mer.errors import UserError

if TYPE_CHECKING:
    import numpy as np

METHODS = ("reference", "opencv-tvl1", "opencv-dis", "cuda")
MIN_SIDE = 16


@dataclass
class FlowSummary:
    method: str
    shape: list[int]
    seconds: float
    out: str
    mean_magnitude: float
    gpu_ms: float | None = None  # cuda: GPU time of the flow (CUDA events)
    layout: str | None = None  # cuda: the solve's layout/threads the stage kept on this GPU


def read_image(path: Path, grey: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 BGR image, (H, W) with ``grey``, or a UserError saying what is wrong with ``path``."""
    import cv2

    if not path.exists():
        raise UserError(f"no such image: {path}")
    if not path.is_file():
        raise UserError(f"not a file: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path} (corrupt or not an image)")
    return image


def read_gray(path: Path) -> np.ndarray:
    """(H, W) uint8 grey image, or a UserError saying what is wrong with ``path``."""
    return read_image(path, grey=True)


def save_npy(array: np.ndarray, out: Path) -> None:
    """Write ``array`` to ``out`` atomically (an existing ``out`` stays as it was when this fails)."""
    import numpy as np

    try:
        with replacing(out, ".npy") as tmp:
            np.save(tmp, array)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None


def compute_flow(first: Path, second: Path, method: str, out: Path) -> FlowSummary:
    """Flow ``first`` -> ``second`` by ``method``, saved to ``out``."""
    import numpy as np

    from edge_mer.flow.cuda import CudaStage  # no pycuda import until a CudaStage is made
    from edge_mer.flow.stage import make_stage

    if method not in METHODS:
        raise UserError(f"unknown flow method {method!r}; choose from {', '.join(METHODS)}")
    a, b = read_gray(first), read_gray(second)
    if a.shape != b.shape:
        raise UserError(f"the images differ in size: {first} is {a.shape[1]}x{a.shape[0]}, "
                        f"{second} is {b.shape[1]}x{b.shape[0]}")
    if min(a.shape) < MIN_SIDE:
        raise UserError(f"the images are {a.shape[1]}x{a.shape[0]}: flow needs at least {MIN_SIDE}x{MIN_SIDE}")
    stage = make_stage(method)
    start = time.perf_counter()
    flow = np.asarray(stage.flow(a, b), np.float32)
    seconds = time.perf_counter() - start
    save_npy(flow, out)
    mean = float(np.linalg.norm(flow, axis=-1).mean())
    summary = FlowSummary(method, list(flow.shape), round(seconds, 4), str(out), round(mean, 6))
    if isinstance(stage, CudaStage):
        summary.gpu_ms = round(float(stage.last_ms), 4)
        summary.layout = f"{stage.solver}/{stage.solve_threads}"
    return summary
