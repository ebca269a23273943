"""Image pairs with a known flow, for the flow tests and the flow benchmark.

The first image is a real face photograph (the packaged public-domain portraits)
aligned like the face crops the model sees: eye line horizontal, inter-ocular
distance ``CANONICAL_IOD * S``. The second is the first moved by a flow field F
defined on the first image's pixels, so the ground truth first -> second is F
itself: ``second(x + F(x)) = first(x)``. ``second`` is made with ``cv2.remap`` at
the inverse map ``y -> x`` with ``x + F(x) = y``, found by fixed-point iteration
(F is smooth and far below one pixel per pixel, so it converges in a few steps).
Two families:

* ``micro``: smooth random fields (Gaussian-smoothed noise) whose largest
  displacement is 0.3 to 2 pixels, the size of micro-expression motion;
* ``shift``: rigid sub-pixel translations.

Bicubic resampling keeps the intensity change between the two images a pure
motion; the only inexactness is ``cv2.remap``'s 1/32-pixel position rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_mer.face import CANONICAL_EYE_Y, CANONICAL_IOD
from edge_mer.synth.faces import load_photo


@dataclass(frozen=True)
class FlowPair:
    name: str
    family: str  # "micro" or "shift"
    first: np.ndarray  # (S, S) uint8
    second: np.ndarray  # (S, S) uint8
    flow: np.ndarray  # (S, S, 2) float32, first -> second


def face_crop(size: int, photo: str = "astronaut") -> np.ndarray:
    """(size, size) uint8 grey face, aligned like the model's crops."""
    p = load_photo(photo)
    iod = float(np.linalg.norm(p.points["eye_l"] - p.points["eye_r"]))
    k = CANONICAL_IOD * size / iod
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
    gray = cv2.cvtColor(p.image, cv2.COLOR_BGR2GRAY)
    scaled = cv2.resize(gray, None, fx=k, fy=k, interpolation=interp)
    mid = (p.points["eye_l"] + p.points["eye_r"]) / 2 * k
    centre = (float(mid[0]), float(mid[1] + (0.5 - CANONICAL_EYE_Y) * size))
    return cv2.getRectSubPix(scaled, (size, size), centre)


def smooth_field(size: int, peak: float, seed: int, sigma_frac: float = 0.08) -> np.ndarray:
    """(S, S, 2) smooth random displacement whose largest magnitude is ``peak`` pixels."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((size, size, 2)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigma_frac * size, borderType=cv2.BORDER_REFLECT101)
    mag = float(np.linalg.norm(field, axis=-1).max())
    return (field * np.float32(peak / mag)).astype(np.float32)


def move(first: np.ndarray, flow: np.ndarray, iterations: int = 8) -> np.ndarray:
    """The image whose content at ``x + flow(x)`` is ``first(x)`` (bicubic, border replicated)."""
    h, w = first.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xx.copy(), yy.copy()  # the source position x for every target pixel y
    for _ in range(iterations):
        f = cv2.remap(flow, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mx, my = xx - f[..., 0], yy - f[..., 1]
    return cv2.remap(first, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def micro_pairs(size: int = 112, peaks: tuple[float, ...] = (0.3, 0.8, 1.4, 2.0), seed: int = 0,
                photo: str = "astronaut") -> list[FlowPair]:
    first = face_crop(size, photo)
    out = []
    for i, peak in enumerate(peaks):
        flow = smooth_field(size, peak, seed + i)
        out.append(FlowPair(f"micro-{peak:g}px", "micro", first, move(first, flow), flow))
    return out


def shift_pairs(size: int = 112, shifts: tuple[tuple[float, float], ...] = ((0.4, 0.0), (0.0, 0.7), (0.7, -0.4)),
                photo: str = "astronaut") -> list[FlowPair]:
    first = face_crop(size, photo)
    out = []
    for dx, dy in shifts:
        flow = np.empty((size, size, 2), np.float32)
        flow[..., 0], flow[..., 1] = dx, dy
        out.append(FlowPair(f"shift({dx:g},{dy:g})", "shift", first, move(first, flow), flow))
    return out


def in_frames(pair: FlowPair, frame_size: tuple[int, int] = (640, 480), scale: float = 1.7,
              corner: tuple[float, float] = (150.0, 90.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pair's two crops placed, ``scale`` times larger, at ``corner`` of BGR camera frames of
    ``frame_size`` (W, H): (onset frame, apex frame, 2x3 frame -> crop matrix), for a whole flow stage."""
    x, y = corner
    matrix = np.array([[1 / scale, 0.0, -x / scale], [0.0, 1 / scale, -y / scale]])
    inv = cv2.invertAffineTransform(matrix)
    first, second = (cv2.cvtColor(cv2.warpAffine(img, inv, frame_size, flags=cv2.INTER_CUBIC,
                                                 borderMode=cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2BGR)
                     for img in (pair.first, pair.second))
    return first, second, matrix


def endpoint_error(flow: np.ndarray, truth: np.ndarray, border: int = 6) -> float:
    """Mean endpoint error over the interior (``border`` pixels left out on every side)."""
    b = slice(border, -border) if border else slice(None)
    return float(np.linalg.norm(flow[b, b] - truth[b, b], axis=-1).mean())
