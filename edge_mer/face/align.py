"""Find the face on a clip's onset frame and the similarity transform to the S x S crop.

The transform is computed once, on the onset frame, and reused for every frame
of the clip (as MER toolkits do), so that head-still clips keep their sub-pixel
facial motion and no alignment jitter enters the flow. The eyes set the rotation
and scale: eye line horizontal, eye midpoint at ``(0.5 S, CANONICAL_EYE_Y * S)``,
inter-ocular distance ``CANONICAL_IOD * S``.

Detectors (``detector=``):

* ``mesh`` (the default wherever OpenCV has its DNN module or ONNX Runtime is
  installed): the shipped BlazeFace and FaceMesh networks (``edge_mer.face.mesh``);
  the eyes are FaceMesh's eye centres, and the alignment carries the named
  landmarks (``FaceAlignment.points``). Method ``mesh``; ``keypoints`` when the
  mesh rejects the detector's face and BlazeFace's own eye keypoints are used.
* ``haar``: OpenCV's Haar cascade for frontal faces (faces from 12 % of the frame's
  shorter side), the eyes from the eye cascades inside the upper face (method
  ``eyes``), or, without two plausible eyes, the face box for scale and position
  with rotation 0 (``box``). It remains for an OpenCV without DNN and no ONNX
  Runtime; doctor says which one runs. With a 68-point landmark model (OpenCV
  contrib's LBF ``.yaml`` or dlib's ``.dat``) the eyes come from the landmarks
  instead (``landmarks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer.errors import UserError
from edge_mer.face.mesh import Face, FaceModels, available_engine, choose, picker
from edge_mer.runtime.opencv_build import cascade_folder

CANONICAL_IOD = 40.0 / 112.0  # inter-ocular distance as a fraction of the crop size
CANONICAL_EYE_Y = 0.34  # eye midpoint height as a fraction of the crop size
_BOX_PER_IOD = 2.5  # a frontal-face cascade box is about 2.5 inter-ocular distances wide
_EYE_Y_IN_BOX = 0.40
DETECTORS = ("auto", "mesh", "haar")


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
    method: str  # "mesh", "keypoints", "eyes", "box" or "landmarks"
    box: tuple[int, int, int, int]
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
    points: dict[str, tuple[float, float]] | None = None  # named landmarks in frame pixels (mesh only)
    face: Face | None = None  # the mesh's face, for following it to the next frames

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(frame, self.matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def finer(self, k: int) -> FaceAlignment:
        """The same crop k times finer ((kS, kS)): each k x k block of it covers one pixel of this crop, so a
        block's mean lands on that pixel's centre."""
        return FaceAlignment(finer_matrix(self.matrix, k), self.size * k, self.method, self.box, self.eyes,
                             self.points, self.face)

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix.tolist(), "size": self.size, "method": self.method,
                "box": list(self.box), "eyes": [list(e) for e in self.eyes] if self.eyes else None,
                "points": {k: [round(v[0], 2), round(v[1], 2)] for k, v in self.points.items()} if self.points
                else None}

    def crop_points(self) -> dict[str, tuple[float, float]] | None:
        """The named landmarks in crop pixels, or None."""
        if not self.points:
            return None
        m = self.matrix
        return {k: (float(m[0, 0] * x + m[0, 1] * y + m[0, 2]), float(m[1, 0] * x + m[1, 1] * y + m[1, 2]))
                for k, (x, y) in self.points.items()}


def finer_matrix(matrix: np.ndarray, k: int) -> np.ndarray:
    """The 2x3 frame -> crop matrix of a crop k times finer than ``matrix``'s (see ``FaceAlignment.finer``)."""
    m = np.asarray(matrix, np.float64) * k
    m[:, 2] += (k - 1) / 2
    return m


def _similarity(mid: np.ndarray, iod: float, angle_deg: float, size: int) -> np.ndarray:
    scale = CANONICAL_IOD * size / max(iod, 1e-6)
    m = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), angle_deg, scale)
    m[:, 2] += np.array([0.5 * size, CANONICAL_EYE_Y * size]) - mid
    return m


def _gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _eye_alignment(left: np.ndarray, right: np.ndarray, size: int, method: str, box: tuple[int, int, int, int],
                   face: Face | None = None) -> FaceAlignment:
    """The alignment that puts the eyes (image left first) on the canonical line."""
    angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    iod = float(np.linalg.norm(right - left))
    m = _similarity((left + right) / 2, iod, angle, size)
    return FaceAlignment(m, size, method, box, ((float(left[0]), float(left[1])), (float(right[0]), float(right[1]))),
                         face.points() if face is not None and face.landmarks is not None else None, face)


def _box_face(box: Any) -> Face:
    """A face known by its box alone (Haar's)."""
    x, y, w, h = (float(v) for v in box)
    return Face((x, y, w, h), 1.0, np.zeros((6, 2)))


def resolve_detector(detector: str = "auto", engine: str = "auto") -> str:
    """"mesh" or "haar": what ``detector`` means on this installation."""
    if detector not in DETECTORS:
        raise UserError(f"unknown face detector {detector!r}; choose from {', '.join(DETECTORS)}")
    if detector == "auto":
        return "mesh" if available_engine(engine) is not None else "haar"
    return detector


class FaceAligner:
    """Detects the face on a frame and returns the alignment to an S x S crop."""

    def __init__(self, size: int = 112, landmarks: str | Path | None = None, detector: str = "auto",
                 engine: str = "auto", min_face: int = 40, face: str = "largest") -> None:
        self.size = size
        self.pick = picker(face)  # which face to take when none is followed yet (--face)
        self.detector = "haar" if landmarks else resolve_detector(detector, engine)
        self.models: FaceModels | None = None
        self.landmarks = _load_landmarks(Path(landmarks)) if landmarks else None
        self.min_face = min_face
        if self.detector == "mesh":
            try:
                self.models = FaceModels(engine, min_face=min_face)
                return
            except UserError:
                if detector != "auto":  # asked for by name: say why it cannot run
                    raise
                self.detector = "haar"  # auto: the models do not load here (doctor says why); Haar does
        folder = find_cascades()
        if folder is None:
            raise UserError("no OpenCV face cascades found: apt install opencv-data, or install an OpenCV "
                            "wheel that ships cv2/data (opencv-contrib-python-headless 4.x)")
        self.face = cv2.CascadeClassifier(str(folder / "haarcascade_frontalface_default.xml"))
        self.eye_models = [cv2.CascadeClassifier(str(folder / n)) for n in
                           ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")
                           if (folder / n).is_file()]

    def detect(self, gray: np.ndarray, near: FaceAlignment | None = None) -> tuple[int, int, int, int] | None:
        """The Haar box of the face to follow: nearest ``near``'s box, else the ``--face`` choice."""
        h, w = gray.shape
        min_side = max(24, int(0.12 * min(h, w)))
        for scale, neighbours in ((1.1, 5), (1.05, 3)):
            boxes = self.face.detectMultiScale(gray, scale, neighbours, minSize=(min_side, min_side))
            if len(boxes):
                faces = [_box_face(b) for b in boxes]
                best = choose(faces, gray.shape, _box_face(near.box) if near is not None else None, self.pick)
                assert best is not None
                x, y, fw, fh = (int(round(v)) for v in best.box)
                return x, y, fw, fh
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

    def searched(self, h: int, w: int) -> str:
        """What a search for faces on an ``h`` x ``w`` frame covers, for the message that none was found."""
        if self.models is not None:
            return (f"BlazeFace over {len(self.models.windows(h, w))} window(s) of the {w} x {h} frame, faces from "
                    f"{self.min_face} px")
        return f"Haar cascade, faces from {max(24, int(0.12 * min(h, w)))} px in the {w} x {h} frame"

    def align(self, frame: np.ndarray, where: str = "frame", near: FaceAlignment | None = None,
              faces: list[Face] | None = None) -> FaceAlignment:
        """The alignment of the face on ``frame``: with several, the one nearest ``near`` (the face followed so
        far), else the ``--face`` choice. ``faces``: the detector's faces on this frame, when the caller has
        them already (mesh only). Raises NoFaceError without one."""
        if self.models is not None:
            return self._mesh_align(frame, where, near, faces)
        gray = _gray(frame)
        box = self.detect(gray, near)
        if box is None:
            raise NoFaceError(f"no face found in {where} ({self.searched(*frame.shape[:2])})")
        eyes = self._landmark_eyes(gray, box) if self.landmarks is not None else self.eyes(gray, box)
        method = "landmarks" if self.landmarks is not None and eyes is not None else "eyes"
        if eyes is None:
            x, y, w, h = box
            mid = np.array([x + w / 2, y + _EYE_Y_IN_BOX * h])
            return FaceAlignment(_similarity(mid, w / _BOX_PER_IOD, 0.0, self.size), self.size, "box", box)
        return _eye_alignment(eyes[0], eyes[1], self.size, method, box)

    def _mesh_align(self, frame: np.ndarray, where: str, near: FaceAlignment | None,
                    faces: list[Face] | None) -> FaceAlignment:
        assert self.models is not None
        found = choose(self.models.detect(frame) if faces is None else faces, frame.shape,
                       near.face if near is not None else None, self.pick)
        if found is None:
            raise NoFaceError(f"no face found in {where} ({self.searched(*frame.shape[:2])})")
        fitted = self.models.fit(frame, found)
        return self._from_face(fitted, "mesh") if fitted is not None else self._from_face(found, "keypoints")

    def follow(self, frame: np.ndarray, previous: FaceAlignment) -> FaceAlignment | None:
        """The face of ``previous`` on a later frame, followed by its landmarks (mesh only; no detector
        run), or None when it is not there any more."""
        if self.models is None or previous.face is None or previous.face.landmarks is None:
            return None
        face = self.models.track(frame, previous.face)
        return self._from_face(face, "mesh") if face is not None else None

    def _from_face(self, face: Face, method: str) -> FaceAlignment:
        right_eye, left_eye = face.eyes  # the subject's right eye is on the image's left
        x, y, w, h = face.box
        return _eye_alignment(right_eye, left_eye, self.size, method,
                              (int(round(x)), int(round(y)), int(round(w)), int(round(h))), face)

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
