"""Rendering faces with action units, head motion and camera nuisances.

A :class:`FaceRenderer` owns one subject scaled to the requested face size.
Every frame is one resampling of that canvas: the head pose (a similarity
transform) and the AU displacement field are composed into a single remap, so
sub-pixel movements stay sub-pixel and no blur accumulates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_mer.synth.aus import AUCode, au_field
from edge_mer.synth.faces import IOD_AT_112, MASTER_IOD, Subject


@dataclass(frozen=True)
class Pose:
    """Head pose relative to the rest position: pixels, degrees, relative scale."""

    tx: float = 0.0
    ty: float = 0.0
    angle: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class Nuisances:
    """Switchable nuisances. Lengths are in IOD units, so they scale with the face."""

    head_drift: float = 0.12  # slow head translation amplitude
    head_jitter: float = 0.01  # fast head translation noise
    head_rotation: float = 2.0  # degrees, slow roll amplitude
    noise: float = 2.0  # sensor noise, grey levels (sigma)
    flicker: float = 0.02  # relative illumination flicker
    jpeg_quality: int = 0  # 0: no in-loop JPEG compression
    blinks: bool = True
    macro: bool = True

    @classmethod
    def none(cls) -> Nuisances:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0, False, False)

    @classmethod
    def lab(cls) -> Nuisances:
        """A seated participant asked to keep still, as in the ME datasets' recordings."""
        return cls(0.02, 0.004, 0.3, 1.5, 0.005, 0, True, False)


@dataclass
class FaceRenderer:
    """Renders frames of one subject at a fixed frame size and face size."""

    subject: Subject
    size: tuple[int, int]  # (width, height) of the frame
    face_iod: float  # inter-ocular distance in frame pixels
    centre: tuple[float, float] | None = None  # frame position of the face centre
    gray: bool = False
    _fields: dict[AUCode, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        k = self.face_iod / MASTER_IOD
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
        self.canvas = cv2.resize(self.subject.image, None, fx=k, fy=k, interpolation=interp)
        self.points = {n: p * k for n, p in self.subject.points.items()}
        w, h = self.size
        self.frame_centre = np.array(self.centre if self.centre else (w / 2, h / 2), np.float64)
        self.face_centre = self.subject.face_centre * k
        self.px_per_unit = self.face_iod / IOD_AT_112  # frame pixels per "pixel at 112"
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._grid = (xx, yy)
        self._blink = self._blink_parts()

    def field(self, code: AUCode) -> np.ndarray:
        if code not in self._fields:
            self._fields[code] = au_field(code, self.points, self.canvas.shape[:2])
        return self._fields[code]

    def affine(self, pose: Pose) -> np.ndarray:
        """2x3 matrix mapping canvas pixels to frame pixels for ``pose``."""
        c = self.face_centre
        m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), pose.angle, pose.scale)
        m[:, 2] += self.frame_centre - c + np.array([pose.tx, pose.ty])
        return m

    def _blink_parts(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        """Soft eye masks and the lid skin that covers the eyes when they close."""
        iod = self.face_iod
        h, w = self.canvas.shape[:2]
        mask = np.zeros((h, w), np.float32)
        for side in ("r", "l"):
            e = self.points[f"eye_{side}"]
            cv2.ellipse(mask, (int(round(e[0])), int(round(e[1]))),
                        (max(1, int(0.2 * iod)), max(1, int(0.09 * iod))), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, 0.03 * iod))
        shift = np.array([[1, 0, 0], [0, 1, 0.17 * iod]], np.float32)
        lid = cv2.warpAffine(self.canvas, shift, (w, h), borderMode=cv2.BORDER_REFLECT101)
        lid = cv2.GaussianBlur(lid, (0, 0), max(0.5, 0.02 * iod))
        ys, xs = np.nonzero(mask > 1e-3)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        return mask, lid, box

    def displacement(self, activations: dict[AUCode, float]) -> np.ndarray | None:
        """Summed AU field in canvas pixels; amplitudes are pixels at 112."""
        total: np.ndarray | None = None
        for code, amp in activations.items():
            if amp == 0:
                continue
            part = self.field(code) * np.float32(amp * self.px_per_unit)
            total = part if total is None else total + part
        return total

    def render(self, activations: dict[AUCode, float], blink: float = 0.0, pose: Pose = Pose(),
               gain: float = 1.0, noise: float = 0.0, rng: np.random.Generator | None = None,
               jpeg_quality: int = 0) -> np.ndarray:
        """One frame, uint8 BGR (H, W, 3) or gray (H, W)."""
        canvas = self.canvas
        if blink > 0:
            mask, lid, (x0, y0, x1, y1) = self._blink
            canvas = canvas.copy()
            a = (blink * mask[y0:y1, x0:x1])[..., None]
            canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + lid[y0:y1, x0:x1] * a
        m = self.affine(pose)
        inv = cv2.invertAffineTransform(m).astype(np.float32)
        xx, yy = self._grid
        mapx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
        mapy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
        disp = self.displacement(activations)
        if disp is not None:
            # the field is defined on the canvas; carry it to the frame, then sample back
            d = cv2.warpAffine(disp, m, self.size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            mapx -= d[..., 0]
            mapy -= d[..., 1]
        frame = cv2.remap(canvas, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if self.gray:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if gain != 1.0:
            frame *= np.float32(gain)
        if noise > 0 and rng is not None:
            frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(noise)
        out = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        if jpeg_quality > 0:
            _, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return out

    def region_points(self, pose: Pose = Pose()) -> dict[str, np.ndarray]:
        """The facial points in frame pixels for ``pose`` (for overlays and tests)."""
        m = self.affine(pose)
        return {n: m[:, :2] @ p + m[:, 2] for n, p in self.points.items()}


def default_face_iod(size: tuple[int, int]) -> float:
    """A face that fills a square frame (112 -> IOD 40) or ~45 % of a 4:3 frame's height."""
    w, h = size
    return IOD_AT_112 * min(w, h) / 112.0 if w == h else 0.25 * h
