"""The head's own motion in a flow of an aligned face crop, and the flow without it.

A crop is aligned once, on the onset frame; a head that drifts, turns or nears the camera between the onset and
the apex adds a smooth, nearly affine motion to the whole crop's flow, as large as a weak micro-expression's
(a few tenths of a pixel at 112). ``HeadMotion`` fits an affine motion to the flow on a grid inside the face
ellipse, reweighted so that an expression's local motion counts little; ``without_head`` subtracts it.
"""

from __future__ import annotations

import numpy as np


class HeadMotion:
    """Robust affine fit of a flow field on a grid inside the face ellipse of an S x S crop."""

    def __init__(self, size: int) -> None:
        step = max(2, size // 28)
        ys, xs = np.mgrid[step // 2:size:step, step // 2:size:step]
        inside = ((xs / size - 0.5) / 0.36) ** 2 + ((ys / size - 0.5) / 0.42) ** 2 <= 1.0
        self.ys, self.xs = ys[inside], xs[inside]
        self.design = np.stack([self.xs / size, self.ys / size, np.ones(len(self.xs))], 1)  # (P, 3)
        self.size = size

    def fit(self, flow: np.ndarray, iterations: int = 3) -> np.ndarray:
        """(3, 2) coefficients: flow(x, y) ~ [x / S, y / S, 1] @ coef."""
        samples = flow[self.ys, self.xs].astype(np.float64)  # (P, 2)
        weights = np.ones(len(samples))
        coef = np.zeros((3, 2))
        for _ in range(iterations):
            weighted = self.design * weights[:, None]
            coef = np.linalg.solve(weighted.T @ self.design + 1e-9 * np.eye(3), weighted.T @ samples)
            resid = np.sqrt(((samples - self.design @ coef) ** 2).sum(1))
            sigma = 1.4826 * float(np.median(resid)) + 1e-3
            weights = 1.0 / np.maximum(1.0, resid / (2.0 * sigma)) ** 2
        return coef

    def field(self, coef: np.ndarray) -> np.ndarray:
        """(S, S, 2) float32: the affine motion ``coef`` at every pixel of the crop."""
        ramp = (np.arange(self.size) / self.size).astype(np.float32)
        c = coef.astype(np.float32)
        return ramp[None, :, None] * c[0] + ramp[:, None, None] * c[1] + c[2]


_FITS: dict[int, HeadMotion] = {}


def without_head(flow: np.ndarray) -> np.ndarray:
    """(S, S, 2) float32: ``flow`` of an S x S crop less the head's fitted affine motion."""
    size = flow.shape[0]
    if flow.shape[:2] != (size, size):
        raise ValueError(f"expected the flow of a square crop, got shape {flow.shape}")
    fit = _FITS.get(size) or _FITS.setdefault(size, HeadMotion(size))
    return (flow - fit.field(fit.fit(flow))).astype(np.float32)
