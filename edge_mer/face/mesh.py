"""Faces and their landmarks from two small CNNs that ship inside edge-mer: MediaPipe's BlazeFace and FaceMesh.

* **BlazeFace**, back-camera model (256 x 256 input, 896 anchors at strides 16 and 32): face
  boxes and six keypoints (the eyes, nose tip, mouth centre and ear tragions). The frame is
  seen whole (letterboxed), and a frame whose longer side exceeds ``TILE_PER_MIN_FACE *
  min_face`` also in overlapping square tiles of that side: the model finds faces down to
  about 1/16 of its input side (``benchmarks/face.py``), so a face of ``min_face`` px (40 by
  default) is found in a frame of any size.
* **FaceMesh** (192 x 192 input): 468 landmarks in a square 1.5 times the face box, turned
  so that the eye line is level, and a face-presence score. A face's landmarks set the
  square of the next frame (``FaceModels.track``), so that a followed face needs the small
  mesh network only, as MediaPipe's own face-mesh pipeline does.

Both networks run through ONNX Runtime where it is installed, else through OpenCV's DNN
module, which every OpenCV the device runtime supports reads them with (4.5.4 of JetPack
5.1 onward). ONNX Runtime comes first because OpenCV 4.7's DNN (the JetPack 6 job's stand-in
for JetPack 6's 4.8) gave non-finite outputs on some frames of the demo; such an output
counts as no face. On this project's x86 CPU (2 threads) DNN ran the mesh in 2.0 ms and the
detector in 7.1 ms, ONNX Runtime in 4.6 and 5.2 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from edge_mer.errors import UserError

MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "facemodels"
DETECTOR_FILE = "blazeface_back.onnx"
MESH_FILE = "face_mesh.onnx"
DETECTOR_SIDE = 256
MESH_SIDE = 192
TILE_PER_MIN_FACE = 16  # the detector's smallest face is about 1/16 of the square it sees
ROI_SCALE = 1.5  # the mesh's square, as a multiple of the face's size (MediaPipe's)
ENGINES = ("auto", "opencv", "onnxruntime")

#: FaceMesh landmark numbers of the named points the kit uses (the subject's own sides: ``_r`` is
#: image left). A point of several numbers is their mean: an eye centre from its corners and lids,
#: a brow point from the brow's upper and lower edges.
POINTS: dict[str, tuple[int, ...]] = {
    "eye_r": (33, 133, 159, 145), "eye_l": (263, 362, 386, 374),
    "brow_outer_r": (70, 46), "brow_inner_r": (107, 55), "brow_outer_l": (300, 276), "brow_inner_l": (336, 285),
    "nose_tip": (1,), "nose_wing_r": (98,), "nose_wing_l": (327,),
    "cheek_r": (205,), "cheek_l": (425,),
    "mouth_corner_r": (61,), "mouth_corner_l": (291,), "upper_lip": (0,), "lower_lip": (17,),
    "chin": (152,),
}
#: BlazeFace's keypoints, in its order
KEYPOINTS = ("eye_r", "eye_l", "nose_tip", "mouth", "ear_r", "ear_l")


@dataclass
class Face:
    """One face on a frame, in frame pixels."""

    box: tuple[float, float, float, float]  # x, y, width, height
    score: float  # the detector's (or, for a followed face, the mesh's presence) probability
    keypoints: np.ndarray  # (6, 2), KEYPOINTS
    landmarks: np.ndarray | None = None  # (468, 2) FaceMesh landmarks, once fitted
    presence: float = 0.0  # the mesh's face-presence probability

    @property
    def centre(self) -> np.ndarray:
        x, y, w, h = self.box
        return np.array([x + w / 2, y + h / 2])

    @property
    def eyes(self) -> tuple[np.ndarray, np.ndarray]:
        """The subject's right then left eye centre (image left first for a face looking at the camera)."""
        if self.landmarks is not None:
            return self.point("eye_r"), self.point("eye_l")
        return self.keypoints[0], self.keypoints[1]

    def point(self, name: str) -> np.ndarray:
        """A named point (``POINTS``) from the landmarks."""
        if self.landmarks is None:
            raise ValueError("the face has no landmarks yet")
        return self.landmarks[list(POINTS[name])].mean(0)

    def points(self) -> dict[str, tuple[float, float]]:
        return {name: (float(p[0]), float(p[1])) for name, p in ((n, self.point(n)) for n in POINTS)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def _anchors() -> np.ndarray:
    """(896, 2) anchor centres in [0, 1] of the back-camera model: 2 per cell at stride 16, 6 at stride 32."""
    out = []
    for stride, per_cell in ((16, 2), (32, 6)):
        cells = DETECTOR_SIDE // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xs.ravel() + 0.5) / cells, (ys.ravel() + 0.5) / cells], 1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


class _Net:
    """One ONNX model: ``net(x)`` with x (1, 3, H, W) float32 gives its outputs, in ``outputs`` order."""

    def __init__(self, path: Path, outputs: tuple[str, ...], engine: str) -> None:
        self.outputs = list(outputs)
        self.engine = engine
        if engine == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        else:
            self._dnn = cv2.dnn.readNetFromONNX(str(path))

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.engine == "onnxruntime":
            return list(self._session.run(self.outputs, {self._input: x}))
        self._dnn.setInput(x)
        return list(self._dnn.forward(self.outputs))


def available_engine(engine: str = "auto") -> str | None:
    """The engine ``engine`` resolves to here ("opencv" or "onnxruntime"), or None when neither can run."""
    if engine not in ENGINES:
        raise ValueError(f"unknown face engine {engine!r}; choose from {', '.join(ENGINES)}")
    has_dnn = hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromONNX")
    if engine in ("auto", "onnxruntime"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        else:
            return "onnxruntime"
    if engine in ("auto", "opencv") and has_dnn:
        return "opencv"
    return None


def _warp_to(frame: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    """(1, 3, side, side) RGB float32 in [0, 1] of the frame under ``matrix`` (frame -> input pixels)."""
    img = cv2.warpAffine(frame, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    img = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, ::-1]
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / np.float32(255.0)


def square_matrix(centre: np.ndarray, side: float, angle_deg: float, out: int) -> np.ndarray:
    """(2, 3) frame -> input transform of a square of ``side`` px about ``centre``, turned by ``angle_deg``."""
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle_deg, out / max(side, 1e-6))
    m[:, 2] += np.array([out / 2.0, out / 2.0]) - np.asarray(centre, np.float64)
    return m


def _nms(faces: list[Face], overlap: float = 0.3) -> list[Face]:
    """Faces of the highest score first, without those that overlap a kept one by more than ``overlap`` (IoU)."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        x, y, w, h = f.box
        clash = False
        for k in kept:
            kx, ky, kw, kh = k.box
            iw = max(0.0, min(x + w, kx + kw) - max(x, kx))
            ih = max(0.0, min(y + h, ky + kh) - max(y, ky))
            inter = iw * ih
            if inter / max(w * h + kw * kh - inter, 1e-6) > overlap:
                clash = True
                break
        if not clash:
            kept.append(f)
    return kept


class FaceModels:
    """The detector and the mesh, loaded once; ``detect`` finds faces, ``fit`` and ``track`` add landmarks."""

    def __init__(self, engine: str = "auto", min_face: int = 40, threshold: float = 0.5,
                 presence: float = 0.5) -> None:
        resolved = available_engine(engine)
        if resolved is None:
            raise UserError("the face models need OpenCV's DNN module or ONNX Runtime: pip install onnxruntime"
                            if engine != "opencv" else "this OpenCV has no DNN module: use --face-engine onnxruntime")
        if min_face < 16:
            raise ValueError(f"min_face must be at least 16 px, got {min_face}")
        self.engine = resolved
        self.min_face = int(min_face)
        self.threshold = threshold
        self.presence = presence
        try:
            self._detector = _Net(MODEL_DIR / DETECTOR_FILE, ("regressors", "classificators"), resolved)
            self._mesh = _Net(MODEL_DIR / MESH_FILE, ("conv2d_20", "conv2d_30"), resolved)
        except Exception as exc:  # cv2.error or ONNX Runtime's: a damaged install or an engine too old for them
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the face models in {MODEL_DIR} do not load with {resolved} ({first}): reinstall "
                            f"edge-mer, or use --detector haar") from None
        self._anchors = _anchors()

    def windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """The squares (x, y, side) the detector sees on a ``width`` x ``height`` frame: the whole frame, then
        tiles of ``TILE_PER_MIN_FACE * min_face`` px overlapping by a quarter, when the frame is larger."""
        side = max(height, width)
        out = [(0, 0, side)]
        tile = TILE_PER_MIN_FACE * self.min_face
        if side > tile * 1.2:
            step = int(tile * 0.75)
            xs = list(range(0, max(width - tile, 0) + 1, step))
            ys = list(range(0, max(height - tile, 0) + 1, step))
            if xs[-1] + tile < width:
                xs.append(width - tile)
            if ys[-1] + tile < height:
                ys.append(height - tile)
            out += [(x, y, tile) for y in ys for x in xs]
        return out

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Every face on the frame (BGR or grey), best first, without landmarks."""
        h, w = frame.shape[:2]
        found: list[Face] = []
        for x0, y0, side in self.windows(h, w):
            m = np.array([[DETECTOR_SIDE / side, 0.0, -x0 * DETECTOR_SIDE / side],
                          [0.0, DETECTOR_SIDE / side, -y0 * DETECTOR_SIDE / side]])
            x = _warp_to(frame, m, DETECTOR_SIDE) * np.float32(2.0) - np.float32(1.0)
            regress, scores = self._detector(x)
            probs = _sigmoid(scores.reshape(-1))
            rows = regress.reshape(-1, 16)
            # a non-finite output (seen from OpenCV 4.7's DNN on some frames) is no face, never a NaN box
            probs = np.where(np.isfinite(probs) & np.isfinite(rows).all(axis=1), probs, 0.0)
            for i in np.flatnonzero(probs >= self.threshold):
                r = rows[i] / DETECTOR_SIDE
                centre = (self._anchors[i] + r[0:2]) * side + (x0, y0)
                bw, bh = r[2] * side, r[3] * side
                keypoints = (self._anchors[i] + r[4:16].reshape(6, 2)) * side + (x0, y0)
                if min(bw, bh) <= 0:
                    continue
                found.append(Face((float(centre[0] - bw / 2), float(centre[1] - bh / 2), float(bw), float(bh)),
                                  float(probs[i]), keypoints.astype(np.float64)))
        return _nms(found)

    def fit(self, frame: np.ndarray, face: Face) -> Face | None:
        """The face with its 468 landmarks, fitted in the square around the detector's box; None when the mesh
        finds no face there."""
        left, right = face.keypoints[0], face.keypoints[1]
        angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
        return self._mesh_in(frame, face.centre, ROI_SCALE * max(face.box[2], face.box[3]), angle, face.score)

    def track(self, frame: np.ndarray, previous: Face) -> Face | None:
        """The face followed from ``previous`` (with landmarks) by the mesh alone; None when it is lost."""
        if previous.landmarks is None:
            return self.fit(frame, previous)
        pts = previous.landmarks
        r_eye, l_eye = pts[33], pts[263]
        angle = math.degrees(math.atan2(l_eye[1] - r_eye[1], l_eye[0] - r_eye[0]))
        # the landmarks' box in the face's own frame (eye line level) sets the next square, as in MediaPipe
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        rot = np.array([[c, -s], [s, c]])
        level = pts @ rot
        lo, hi = level.min(0), level.max(0)
        centre = ((lo + hi) / 2) @ rot.T
        return self._mesh_in(frame, centre, ROI_SCALE * float((hi - lo).max()), angle, previous.score)

    def _mesh_in(self, frame: np.ndarray, centre: np.ndarray, side: float, angle: float,
                 score: float) -> Face | None:
        m = square_matrix(centre, side, angle, MESH_SIDE)
        if not (np.isfinite(m).all() and side >= 4.0):  # a square that cannot hold a face
            return None
        raw, flag = self._mesh(_warp_to(frame, m, MESH_SIDE))
        presence = float(_sigmoid(np.asarray(flag).reshape(-1))[0])
        if not (presence >= self.presence and np.isfinite(raw).all()):  # NaN presence fails the test too
            return None
        inv = cv2.invertAffineTransform(m)
        pts = raw.reshape(-1, 3)[:, :2].astype(np.float64) @ inv[:, :2].T + inv[:, 2]
        lo, hi = pts.min(0), pts.max(0)
        keypoints = np.array([pts[list(POINTS["eye_r"])].mean(0), pts[list(POINTS["eye_l"])].mean(0), pts[1],
                              (pts[13] + pts[14]) / 2, pts[234], pts[454]])
        return Face((float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])), score, keypoints,
                    pts, presence)


FACE_CHOICES = "largest, central, left, right or a point X,Y in frame pixels"


def picker(spec: str = "largest") -> Callable[[list[Face], tuple[int, ...]], Face]:
    """Which face to follow when the kit starts, or has lost its face (``--face``): the largest (ties broken by
    the most central), the most central, the leftmost or rightmost in the image, or the one nearest a point."""
    spec = spec.strip().lower()

    def middle(shape: tuple[int, ...]) -> np.ndarray:
        return np.array([shape[1] / 2, shape[0] / 2])

    if spec == "largest":
        return lambda faces, shape: max(faces, key=lambda f: (round(f.box[2] * f.box[3] / max(shape[0] * shape[1], 1)
                                                                    * 50),
                                                              -float(np.linalg.norm(f.centre - middle(shape)))))
    if spec == "central":
        return lambda faces, shape: min(faces, key=lambda f: float(np.linalg.norm(f.centre - middle(shape))))
    if spec == "left":
        return lambda faces, shape: min(faces, key=lambda f: float(f.centre[0]))
    if spec == "right":
        return lambda faces, shape: max(faces, key=lambda f: float(f.centre[0]))
    try:
        point = np.array([float(v) for v in spec.split(",")])
    except ValueError:
        point = np.zeros(0)
    if point.shape != (2,) or not np.isfinite(point).all():
        raise UserError(f"--face {spec!r}: choose {FACE_CHOICES}")
    return lambda faces, shape: min(faces, key=lambda f: float(np.linalg.norm(f.centre - point)))


def choose(faces: list[Face], frame_shape: tuple[int, ...], near: Face | None = None,
           pick: Callable[[list[Face], tuple[int, ...]], Face] | None = None) -> Face | None:
    """The face to follow: the one nearest ``near`` (the face followed so far) when given, else ``pick``'s
    (default: the largest, ties broken by the nearest to the frame's centre)."""
    if not faces:
        return None
    if near is not None:
        return min(faces, key=lambda f: float(np.linalg.norm(f.centre - near.centre)))
    return (pick or picker())(faces, frame_shape)


def detector_facts(engine: str = "auto") -> dict[str, Any]:
    """Which face detector runs here and through what, for doctor: the models are loaded to find out."""
    resolved = available_engine(engine)
    if resolved is None:
        return {"detector": "haar", "engine": None,
                "why": "no OpenCV DNN module and no ONNX Runtime: the Haar cascades are the fallback"}
    try:
        FaceModels(resolved)
    except UserError as exc:
        return {"detector": "haar", "engine": resolved, "why": str(exc)}
    return {"detector": "mesh", "engine": resolved, "why": None,
            "models": [str(MODEL_DIR / DETECTOR_FILE), str(MODEL_DIR / MESH_FILE)]}
