"""Coarse-to-fine TV-L1 optical flow in numpy: the specification of the flow stage.

The algorithm is the Zach-Pock-Bischof duality scheme as formulated by Sánchez
Pérez, Meinhardt-Llopis and Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013,
with the pyramid, loop structure and defaults of OpenCV contrib's
``cv2.optflow.DualTVL1OpticalFlow`` (``modules/optflow/src/tvl1flow.cpp``), so that
it agrees with the flow the feature cache is made with. Every step is one
function here and one CUDA kernel (or one phase of a kernel) in
``edge_mer/flow/kernels/tvl1.cu``:

1. ``to_float``: grey levels 0..255 as float32 (uint8 as is, float input is taken
   to be 0..1 and multiplied by 255, as OpenCV does).
2. ``pyramid``: level ``s`` is level ``s - 1`` resized by ``scale_step`` (0.8) with
   bilinear interpolation (``resize_bilinear``, OpenCV's ``resize`` semantics:
   pixel centres, clamped at the border, no pre-smoothing); a level smaller than
   16 pixels on a side ends the pyramid. IPOL's pyramid is the same with factor
   0.5 and a small Gaussian pre-smoothing; ``scale_step=0.5`` gives its sizes.
3. per level, coarsest first, from zero flow and zero dual variables:
   ``centered_gradient`` of I1 once (central differences; at the border the
   neighbour outside is the border pixel itself);
4. ``warps`` times: ``warp_bicubic`` of I1 and its gradient at ``x + u``, and
   ``data_term`` (``|grad I1w|^2`` and the constant part of the residual rho);
5. then up to ``outer_iterations`` x ``inner_iterations`` iterations, stopping
   when the summed squared update of ``u`` falls to ``epsilon^2 * pixels``; at the
   start of every outer iteration ``median_filter`` (5 x 5) smooths ``u``; one
   iteration is ``threshold_step`` (v from u and the linearised data term),
   ``divergence`` of the dual variables p, ``u = v + theta * div p``, then
   ``forward_gradient`` of u and ``project_dual`` (Chambolle's fixed point with
   step ``tau / theta``);
6. ``upsample_flow``: bilinear resize to the next finer level and multiplication
   by ``1 / scale_step``.

Where this differs from OpenCV, on purpose:

* warping samples outside the image at the nearest border pixel (IPOL's choice);
  OpenCV's ``remap`` returns 0 there, which makes a false data term along the
  image border whenever the flow points outwards;
* warping uses exact sub-pixel positions; OpenCV's ``remap`` rounds them to
  1/32 pixel, which matters at micro-expression sizes;
* ``gamma`` (OpenCV's illumination term) must be 0, its default.

Together these move the flow by about 0.02 px (mean endpoint difference) from
OpenCV's on 112-pixel face crops. Where it follows OpenCV rather than IPOL: the
pyramid (factor 0.8, no pre-smoothing, instead of 0.5 with a Gaussian), the
median filter (not in IPOL), the outer x inner iteration split, and the bicubic
kernel (Keys with a = -0.75, OpenCV's, instead of IPOL's a = -0.5).

Bicubic rather than bilinear warping: the flow of a micro-expression is a
fraction of a pixel, and bilinear sampling both blurs the warped image by an
amount that depends on the sub-pixel phase and makes the warped gradient
piecewise constant; bicubic keeps the linearisation of the data term accurate
below one pixel, as in both IPOL and OpenCV.

Arrays are float32 and planar: a flow is ``(2, H, W)`` (u, v) inside this module,
the dual variables ``(2, 2, H, W)`` (component, direction); ``tvl1`` returns
OpenCV's ``(H, W, 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FLT_EPSILON = np.float32(np.finfo(np.float32).eps)
MIN_LEVEL_SIDE = 16
_CUBIC_A = -0.75
# OpenCV's fixed-point BGR -> grey weights (15 bits): Y = (3735 B + 19235 G + 9798 R + 2^14) >> 15,
# bit-exact with cv2.cvtColor(COLOR_BGR2GRAY) for all 2^24 colours
GRAY_WEIGHTS = (3735, 19235, 9798)
GRAY_SHIFT = 15


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's ``DualTVL1OpticalFlow`` parameters and defaults."""

    tau: float = 0.25  # time step of the dual update
    lambda_: float = 0.15  # weight of the data term
    theta: float = 0.3  # coupling between u and v
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01  # stop when mean squared update of u < epsilon^2
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5  # median window before each outer iteration; 1 turns it off

    def __post_init__(self) -> None:
        if self.gamma != 0:
            raise ValueError("gamma (the illumination term) is not part of the reference; use 0")
        if self.median_filtering not in (1, 3, 5):
            raise ValueError("median_filtering must be 1 (off), 3 or 5")
        if not 0 < self.scale_step < 1:
            raise ValueError("scale_step must be in (0, 1)")
        if self.nscales < 1 or self.warps < 1:
            raise ValueError("nscales and warps must be at least 1")


def to_float(image: np.ndarray) -> np.ndarray:
    """(H, W) grey levels 0..255 as float32; float input is in 0..1 (OpenCV's convention)."""
    if image.ndim != 2:
        raise ValueError(f"expected a grey (H, W) image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    return (np.asarray(image, np.float32) * np.float32(255.0)).astype(np.float32)


def gray_u8(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of a grey, BGR or BGRA uint8 frame, bit-exact with ``cv2.cvtColor``."""
    if frame.ndim == 2:
        return frame
    wb, wg, wr = GRAY_WEIGHTS
    c = frame.astype(np.int32)
    return ((wb * c[..., 0] + wg * c[..., 1] + wr * c[..., 2] + (1 << (GRAY_SHIFT - 1))) >> GRAY_SHIFT).astype(np.uint8)


def crop_gray(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 crop of a frame, grey levels rounded to integers.

    ``matrix`` maps frame pixels to crop pixels (as ``cv2.warpAffine`` takes it);
    every crop pixel samples the grey frame bilinearly at the inverse-mapped
    position, nearest border pixel outside. This is ``cv2.warpAffine(gray, matrix,
    (size, size), INTER_LINEAR, BORDER_REPLICATE)`` without its 1/32-pixel
    position rounding: the two agree to one grey level.
    """
    gray = gray_u8(frame).astype(np.float32)
    m = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)[:2]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = (inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]).astype(np.float32)
    sy = (inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]).astype(np.float32)
    return np.rint(_sample_bilinear(gray, sx, sy)).astype(np.float32)


def _sample_bilinear(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at (sx, sy), nearest border pixel outside."""
    h, w = image.shape
    x0 = np.floor(sx)
    y0 = np.floor(sy)
    fx = (sx - x0).astype(np.float32)
    fy = (sy - y0).astype(np.float32)
    xa = np.clip(x0, 0, w - 1).astype(np.intp)
    xb = np.clip(x0 + 1, 0, w - 1).astype(np.intp)
    ya = np.clip(y0, 0, h - 1).astype(np.intp)
    yb = np.clip(y0 + 1, 0, h - 1).astype(np.intp)
    top = image[ya, xa] * (1 - fx) + image[ya, xb] * fx
    bottom = image[yb, xa] * (1 - fx) + image[yb, xb] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def resize_bilinear(image: np.ndarray, shape: tuple[int, int], factor: tuple[float, float]) -> np.ndarray:
    """``image`` (..., h, w) resampled to ``shape`` (H, W) like ``cv2.resize(INTER_LINEAR)``.

    Output pixel ``(y, x)`` samples source position ``((y + 0.5) * fy - 0.5, (x + 0.5) * fx - 0.5)``
    with ``factor = (fy, fx)`` source pixels per output pixel, clamped to the image.
    """
    h, w = image.shape[-2:]
    fy, fx = factor
    sy = np.clip((np.arange(shape[0], dtype=np.float64) + 0.5) * fy - 0.5, 0, h - 1)
    sx = np.clip((np.arange(shape[1], dtype=np.float64) + 0.5) * fx - 0.5, 0, w - 1)
    y0 = np.floor(sy).astype(np.intp)
    x0 = np.floor(sx).astype(np.intp)
    wy = (sy - y0).astype(np.float32)[:, None]
    wx = (sx - x0).astype(np.float32)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    rows = image[..., y0, :] * (1 - wy) + image[..., y1, :] * wy  # (..., H, w)
    return (rows[..., x0] * (1 - wx) + rows[..., x1] * wx).astype(np.float32)


def level_shapes(shape: tuple[int, int], params: TVL1Params) -> list[tuple[int, int]]:
    """(H, W) of every pyramid level, finest first (OpenCV rounds each side to nearest)."""
    shapes = [shape]
    for _ in range(1, params.nscales):
        h, w = shapes[-1]
        nxt = (int(round(h * params.scale_step)), int(round(w * params.scale_step)))
        if min(nxt) < MIN_LEVEL_SIDE:
            break
        shapes.append(nxt)
    return shapes


def pyramid(image: np.ndarray, params: TVL1Params) -> list[np.ndarray]:
    """(..., H, W) image and its downsampled levels, finest first."""
    levels = [image]
    inv = 1.0 / params.scale_step
    for shape in level_shapes(image.shape[-2:], params)[1:]:
        levels.append(resize_bilinear(levels[-1], shape, (inv, inv)))
    return levels


def centered_gradient(image: np.ndarray) -> np.ndarray:
    """(2, H, W) central differences (d/dx, d/dy); outside the image is the border pixel."""
    padded = np.pad(image, 1, mode="edge")
    gx = 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2])
    gy = 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
    return np.stack([gx, gy]).astype(np.float32)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys cubic weights (a = -0.75) of the taps at offsets -1, 0, 1, 2 for fraction t."""
    a = np.float32(_CUBIC_A)
    t1 = t + 1
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]


def warp_bicubic(images: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(C, H, W) images sampled at ``(x + u, y + v)`` with bicubic interpolation, clamped at the border."""
    c, h, w = images.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sx = xx + flow[0]
    sy = yy + flow[1]
    x0 = np.floor(sx)
    y0 = np.floor(sy)
    wx = _cubic_weights((sx - x0).astype(np.float32))
    wy = _cubic_weights((sy - y0).astype(np.float32))
    xi = [np.clip(x0 + k, 0, w - 1).astype(np.intp) for k in (-1, 0, 1, 2)]
    yi = [np.clip(y0 + k, 0, h - 1).astype(np.intp) for k in (-1, 0, 1, 2)]
    flat = images.reshape(c, h * w)
    out = np.zeros((c, h, w), np.float32)
    for j in range(4):
        row = np.zeros((c, h, w), np.float32)
        for i in range(4):
            row += flat[:, yi[j] * w + xi[i]] * wx[i]
        out += row * wy[j]
    return out


def data_term(i0: np.ndarray, warped: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|grad I1w|^2`` and the constant part of the residual ``I1w - grad I1w . u0 - I0``.

    ``warped`` is (3, H, W): I1, dI1/dx, dI1/dy sampled at the current flow ``u0``.
    """
    i1w, grad = warped[0], warped[1:]
    grad_sq = grad[0] * grad[0] + grad[1] * grad[1]
    rho_c = i1w - grad[0] * flow[0] - grad[1] * flow[1] - i0
    return grad_sq.astype(np.float32), rho_c.astype(np.float32)


def median_filter(flow: np.ndarray, ksize: int) -> np.ndarray:
    """(2, H, W) flow median-filtered per component in a ksize x ksize window, border replicated."""
    r = ksize // 2
    padded = np.pad(flow, ((0, 0), (r, r), (r, r)), mode="edge")
    h, w = flow.shape[1:]
    # the ksize * ksize neighbours of every pixel, last axis (sliding_window_view needs numpy 1.20)
    flat = np.stack([padded[:, dy:dy + h, dx:dx + w] for dy in range(ksize) for dx in range(ksize)], axis=-1)
    mid = ksize * ksize // 2
    return np.partition(flat, mid, axis=-1)[..., mid].astype(np.float32)


def threshold_step(flow: np.ndarray, grad: np.ndarray, grad_sq: np.ndarray, rho_c: np.ndarray,
                   l_t: float) -> np.ndarray:
    """v: the point-wise minimiser of the linearised L1 data term near u (thresholding scheme).

    With ``rho = rho_c + grad . u``: v = u + l_t grad if rho < -l_t |grad|^2,
    u - l_t grad if rho > l_t |grad|^2, else u - rho grad / |grad|^2 (0 where the
    gradient vanishes).
    """
    rho = rho_c + grad[0] * flow[0] + grad[1] * flow[1]
    bound = np.float32(l_t) * grad_sq
    flat = grad_sq > _FLT_EPSILON
    inside = np.where(flat, -rho / np.where(flat, grad_sq, np.float32(1)), np.float32(0))
    coef = np.where(rho < -bound, np.float32(l_t), np.where(rho > bound, np.float32(-l_t), inside))
    return (flow + coef * grad).astype(np.float32)


def divergence(p: np.ndarray) -> np.ndarray:
    """(2, H, W) divergence of the dual fields (2, 2, H, W): backward differences, zero outside."""
    px, py = p[:, 0], p[:, 1]
    div = px + py
    div[:, :, 1:] -= px[:, :, :-1]
    div[:, 1:, :] -= py[:, :-1, :]
    return div


def forward_gradient(flow: np.ndarray) -> np.ndarray:
    """(2, 2, H, W) forward differences of each flow component; 0 on the last column / row."""
    g = np.zeros((flow.shape[0], 2, *flow.shape[1:]), np.float32)
    g[:, 0, :, :-1] = flow[:, :, 1:] - flow[:, :, :-1]
    g[:, 1, :-1, :] = flow[:, 1:, :] - flow[:, :-1, :]
    return g


def project_dual(p: np.ndarray, grad_u: np.ndarray, taut: float) -> np.ndarray:
    """Chambolle's projection step: ``p = (p + taut grad u) / (1 + taut |grad u|)`` per component."""
    norm = 1 + np.float32(taut) * np.sqrt(grad_u[:, 0] ** 2 + grad_u[:, 1] ** 2)
    return ((p + np.float32(taut) * grad_u) / norm[:, None]).astype(np.float32)


def solve_warp(flow: np.ndarray, p: np.ndarray, grad: np.ndarray, grad_sq: np.ndarray, rho_c: np.ndarray,
               params: TVL1Params) -> tuple[np.ndarray, np.ndarray]:
    """The iterations of one warp; returns the new flow and dual variables."""
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    theta = np.float32(params.theta)
    stop = params.epsilon ** 2 * flow.shape[1] * flow.shape[2]
    error = np.inf
    for _ in range(params.outer_iterations):
        if error <= stop:
            break
        if params.median_filtering > 1:
            flow = median_filter(flow, params.median_filtering)
        for _ in range(params.inner_iterations):
            if error <= stop:
                break
            v = threshold_step(flow, grad, grad_sq, rho_c, l_t)
            new = v + theta * divergence(p)
            error = float(np.sum(np.square(new - flow), dtype=np.float32))
            flow = new
            p = project_dual(p, forward_gradient(flow), taut)
    return flow, p


def solve_level(i0: np.ndarray, i1: np.ndarray, flow: np.ndarray, params: TVL1Params) -> np.ndarray:
    """(2, H, W) flow of one pyramid level, refined from ``flow``."""
    grad1 = centered_gradient(i1)
    stack = np.concatenate([i1[None], grad1])  # (3, H, W): I1, dI1/dx, dI1/dy
    p = np.zeros((2, 2, *i0.shape), np.float32)
    for _ in range(params.warps):
        warped = warp_bicubic(stack, flow)
        grad_sq, rho_c = data_term(i0, warped, flow)
        flow, p = solve_warp(flow, p, warped[1:], grad_sq, rho_c, params)
    return flow


def upsample_flow(flow: np.ndarray, shape: tuple[int, int], scale_step: float) -> np.ndarray:
    """(2, H, W) flow of the next finer level: bilinear resize to ``shape``, times ``1 / scale_step``."""
    h, w = flow.shape[1:]
    up = resize_bilinear(flow, shape, (h / shape[0], w / shape[1]))
    return (up * np.float32(1.0 / scale_step)).astype(np.float32)


def tvl1(first: np.ndarray, second: np.ndarray, params: TVL1Params = TVL1Params()) -> np.ndarray:
    """(H, W, 2) float32 flow from ``first`` to ``second`` (grey, uint8 or float 0..1), in pixels."""
    if first.shape != second.shape:
        raise ValueError(f"images differ in size: {first.shape} and {second.shape}")
    levels0 = pyramid(to_float(first), params)
    levels1 = pyramid(to_float(second), params)
    flow = np.zeros((2, *levels0[-1].shape), np.float32)
    for s in range(len(levels0) - 1, -1, -1):
        flow = solve_level(levels0[s], levels1[s], flow, params)
        if s > 0:
            flow = upsample_flow(flow, levels0[s - 1].shape, params.scale_step)
    return np.ascontiguousarray(flow.transpose(1, 2, 0))
