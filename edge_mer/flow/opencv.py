"""Optical flow between two aligned grey crops, and optical strain.

Methods: ``tvl1`` (OpenCV contrib's Dual TV-L1 with OpenCV's defaults, the MER
convention), ``dis`` (OpenCV's DIS, medium preset refined down to full
resolution; fast). The kit's own TV-L1 joins these in the flow stage.

Optical strain magnitude (the form used in MER since Shreve et al. and Liong et
al.), from central differences of the flow::

    e_xx = du/dx,  e_yy = dv/dy,  e_xy = e_yx = (du/dy + dv/dx) / 2
    strain = sqrt(e_xx^2 + e_yy^2 + e_xy^2 + e_yx^2)
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

from edge_mer.errors import UserError

FLOW_METHODS = ("tvl1", "dis")

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def has_tvl1() -> bool:
    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


def make_flow(method: str) -> FlowFn:
    """A function (first gray uint8, second gray uint8) -> (H, W, 2) float32 flow, first -> second."""
    if method == "tvl1":
        if not has_tvl1():
            raise UserError("TV-L1 flow needs OpenCV's contrib modules: pip install opencv-contrib-python-headless "
                            "(or use --flow dis)")
        optflow: Any = cv2.optflow  # type: ignore[attr-defined,unused-ignore]  # contrib, not in the stubs
        tvl1 = optflow.DualTVL1OpticalFlow_create()

        def run_tvl1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.asarray(tvl1.calc(a, b, None), np.float32)
        return run_tvl1
    if method == "dis":
        dis: Any = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setFinestScale(0)

        def run_dis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.asarray(dis.calc(a, b, None), np.float32)
        return run_dis
    raise UserError(f"unknown flow method {method!r}; choose from {', '.join(FLOW_METHODS)}")


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """(H, W) strain magnitude of an (H, W, 2) flow."""
    u, v = flow[..., 0], flow[..., 1]
    du_dy, du_dx = np.gradient(u)
    dv_dy, dv_dx = np.gradient(v)
    shear = 0.5 * (du_dy + dv_dx)
    return np.sqrt(du_dx ** 2 + dv_dy ** 2 + 2 * shear ** 2).astype(np.float32)
