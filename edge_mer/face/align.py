"""Find the face on a clip's onset frame and the similarity transform to the S x S crop.

The transform is computed once, on the onset frame, and reused for every frame
of the clip (as MER toolkits do), so that head-still clips keep their sub-pixel
facial motion and no alignment jitter enters the flow.

Detection is OpenCV's Haar cascade for frontal faces; the eyes come from the
eye cascades inside the upper face and set the rotation and scale (eye line
horizontal, eye midpoint at ``(0.5 S, CANONICAL_EYE_Y * S)``, inter-ocular
distance ``CANONICAL_IOD * S``). Without two plausible eyes the face box sets
scale and position and the rotation stays 0. With a 68-point landmark model
(OpenCV contrib's LBF ``.yaml`` or dlib's ``.dat``, when its package is
installed) the eyes come from the landmarks instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.opencv_build import cascade_folder

CANONICAL_IOD = 40.0 / 112.0  # inter-ocular distance as a fraction of the crop size
CANONICAL_EYE_Y = 0.34  # eye midpoint height as a fraction of the crop size
_BOX_PER_IOD = 2.5  # a frontal-face cascade box is about 2.5 inter-ocular distances wide
_EYE_Y_IN_BOX = 0.40


class NoFaceError(UserError):
    """No face on the frame the alignment is computed from."""


def find_cascades() -> Path | None:
    """The folder holding OpenCV's Haar cascades, or None."""
    found = cascade_folder(cv2)
    return Path(found) if found else None


@dataclass
class FaceAlignment:
    matrix: np.ndarray  # (2, 3) frame pixels -> crop pixels
    size: int
    method: str  # "eyes", "box" or "landmarks"
    box: tuple[int, int, int, int]
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(frame, self.matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix.tolist(), "size": self.size, "method": self.method,
                "box": list(self.box), "eyes": [list(e) for e in self.eyes] if self.eyes else None}


def _similarity(mid: np.ndarray, iod: float, angle_deg: float, size: int) -> np.ndarray:
    scale = CANONICAL_IOD * size / max(iod, 1e-6)
    m = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), angle_deg, scale)
    m[:, 2] += np.array([0.5 * size, CANONICAL_EYE_Y * size]) - mid
    return m


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


class FaceAligner:
    """Detects the face on a frame and returns the alignment to an S x S crop."""

    def __init__(self, size: int = 112, landmarks: str | Path | None = None) -> None:
        folder = find_cascades()
        if folder is None:
            raise UserError("no OpenCV face cascades found: apt install opencv-data, or install an OpenCV "
                            "wheel that ships cv2/data (opencv-contrib-python-headless 4.x)")
        self.size = size
        self.face = cv2.CascadeClassifier(str(folder / "haarcascade_frontalface_default.xml"))
        self.eye_models = [cv2.CascadeClassifier(str(folder / n)) for n in
                           ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")
                           if (folder / n).is_file()]
        self.landmarks = _load_landmarks(Path(landmarks)) if landmarks else None

    def detect(self, gray: np.ndarray) -> tuple[int, int, int, int] | None:
        h, w = gray.shape
        min_side = max(24, int(0.12 * min(h, w)))
        for scale, neighbours in ((1.1, 5), (1.05, 3)):
            faces = self.face.detectMultiScale(gray, scale, neighbours, minSize=(min_side, min_side))
            if len(faces):
                x, y, fw, fh = max(faces, key=lambda f: int(f[2]) * int(f[3]))
                return int(x), int(y), int(fw), int(fh)
        return None

    def eyes(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Eye centres (image-left first) inside the upper face, or None."""
        x, y, w, h = box
        roi = gray[y:y + int(0.6 * h), x:x + w]
        k = max(1.0, 160.0 / max(w, 1))
        if k > 1:
            roi = cv2.resize(roi, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
        cands = []
        for model in self.eye_models:
            for ex, ey, ew, eh in model.detectMultiScale(roi, 1.1, 3, minSize=(int(w * k / 10),) * 2):
                cands.append(((ex + ew / 2) / k + x, (ey + eh / 2) / k + y, ew / k))
        best, best_score = None, -1.0
        for lx, ly, ls in cands:
            for rx, ry, rs in cands:
                dx, dy = rx - lx, ry - ly
                if not (0.25 * w < dx < 0.7 * w and abs(dy) < 0.15 * w):
                    continue
                if not (x + 0.05 * w < lx < x + 0.5 * w < rx < x + 0.95 * w):
                    continue
                if not (y + 0.15 * h < min(ly, ry) and max(ly, ry) < y + 0.6 * h):
                    continue
                score = ls + rs - abs(dy) - abs((lx + rx) / 2 - (x + w / 2))
                if score > best_score:
                    best, best_score = (np.array([lx, ly]), np.array([rx, ry])), score
        return best

    def align(self, frame: np.ndarray, where: str = "frame") -> FaceAlignment:
        gray = _gray(frame)
        box = self.detect(gray)
        if box is None:
            raise NoFaceError(f"no face found in {where}")
        eyes = self._landmark_eyes(gray, box) if self.landmarks is not None else self.eyes(gray, box)
        method = "landmarks" if self.landmarks is not None and eyes is not None else "eyes"
        if eyes is None:
            x, y, w, h = box
            mid = np.array([x + w / 2, y + _EYE_Y_IN_BOX * h])
            return FaceAlignment(_similarity(mid, w / _BOX_PER_IOD, 0.0, self.size), self.size, "box", box)
        left, right = eyes
        angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
        iod = float(np.linalg.norm(right - left))
        m = _similarity((left + right) / 2, iod, angle, self.size)
        return FaceAlignment(m, self.size, method, box,
                             ((float(left[0]), float(left[1])), (float(right[0]), float(right[1]))))

    def _landmark_eyes(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        assert self.landmarks is not None
        pts = self.landmarks(gray, box)  # (68, 2)
        return pts[36:42].mean(0), pts[42:48].mean(0)


LANDMARK_MODELS = "an OpenCV LBF model (.yaml, e.g. lbfmodel.yaml) or a dlib shape predictor (.dat), 68 points"


def _load_landmarks(path: Path) -> Any:
    """A callable (gray, box) -> (68, 2) points from an LBF (.yaml) or dlib (.dat) model."""
    if not path.is_file():
        raise UserError(f"landmark model not found: {path}")
    if path.suffix == ".dat":
        try:
            import dlib  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise UserError(f"{path.name} is a dlib model: pip install dlib") from None
        try:
            predictor = dlib.shape_predictor(str(path))
        except RuntimeError:  # dlib's "Error deserializing object": not a shape predictor
            raise UserError(f"{path} is not a landmark model: expected {LANDMARK_MODELS}") from None
        if getattr(predictor, "num_parts", 68) != 68:
            raise UserError(f"{path} has {predictor.num_parts} landmarks: expected {LANDMARK_MODELS}")

        def fit_dlib(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
            x, y, w, h = box
            shape = predictor(gray, dlib.rectangle(x, y, x + w, y + h))
            return np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        return fit_dlib
    if not hasattr(cv2, "face"):
        raise UserError(f"{path.name} is an OpenCV LBF model: pip install opencv-contrib-python-headless")
    facemark = cv2.face.createFacemarkLBF()
    try:
        facemark.loadModel(str(path))
        # a YAML file that is not an LBF model loads without complaint and fails only on the first fit:
        # one fit on a blank frame finds that out here, not in the middle of a run
        ok, points = facemark.fit(np.zeros((64, 64), np.uint8), np.array([[8, 8, 48, 48]], np.int32))
    except cv2.error:
        raise UserError(f"{path} is not a landmark model: expected {LANDMARK_MODELS}") from None
    found = len(points[0][0]) if ok and len(points) else 0
    if found != 68:
        raise UserError(f"{path} gives {found} landmarks: expected {LANDMARK_MODELS}")

    def fit_lbf(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        ok, points = facemark.fit(gray, np.array([box], np.int32))
        if not ok:
            raise NoFaceError("the landmark model found no landmarks on the face")
        return np.asarray(points[0][0], np.float64)
    return fit_lbf
