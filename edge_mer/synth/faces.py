"""Real face photographs and the synthetic subjects derived from them.

Four public-domain portraits of four people ship with the kit (``edge_mer/assets/faces``; see
``faces.json`` for who, where from, the licence and how the points were found). Every synthetic subject is
one of them under a fixed set of identity changes drawn from a seed: mirroring,
a smooth shape warp (face width, eye spacing, nose length, mouth width, jaw),
skin tone, contrast and gamma, a directional illumination gradient and scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict

import cv2
import numpy as np

from edge_mer.errors import UserError

#: Inter-ocular distance (eye centre to eye centre) of a subject's master image.
MASTER_IOD = 80.0

#: Where the photographs and faces.json are installed.
FACES = Path(__file__).resolve().parent.parent / "assets" / "faces"

#: Inter-ocular distance of the standard 112-pixel face crop; AU amplitudes are
#: given in pixels of that crop.
IOD_AT_112 = 40.0

Points = Dict[str, np.ndarray]


@dataclass(frozen=True)
class FacePhoto:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 BGR
    points: Points  # name -> (x, y) float64 in image pixels
    who: str
    source: str
    licence: str
    points_from: str  # "hand" (annotated by a person) or "face mesh" (the kit's own landmarks)


@dataclass(frozen=True)
class IdentityParams:
    photo: str
    mirror: bool
    face_width: float  # horizontal stretch around the face centre
    face_height: float
    eye_spacing: float  # in IOD units, + moves the eyes apart
    nose_length: float
    mouth_width: float
    jaw: float
    lightness: float  # Lab L offset
    tone_a: float  # Lab a offset (red-green)
    tone_b: float  # Lab b offset (yellow-blue)
    contrast: float
    gamma: float
    light_angle: float  # radians, direction of the illumination gradient
    light_strength: float  # relative gain change over one IOD


@dataclass
class Subject:
    """One synthetic identity: a master image with its facial points."""

    index: int
    params: IdentityParams
    image: np.ndarray  # (H, W, 3) float32 BGR, 0..255, IOD == MASTER_IOD
    points: Points = field(default_factory=dict)

    @property
    def iod(self) -> float:
        return float(np.linalg.norm(self.points["eye_l"] - self.points["eye_r"]))

    @property
    def face_centre(self) -> np.ndarray:
        """Midpoint between the eyes and the mouth: the centre of the face box."""
        eyes = (self.points["eye_l"] + self.points["eye_r"]) / 2
        mouth = (self.points["mouth_corner_l"] + self.points["mouth_corner_r"]) / 2
        return np.asarray((eyes + mouth) / 2)


def _swap_side(name: str) -> str:
    if name.endswith("_r"):
        return name[:-2] + "_l"
    if name.endswith("_l"):
        return name[:-2] + "_r"
    return name


@lru_cache(maxsize=None)
def _photo_table() -> dict[str, dict[str, object]]:
    text = (FACES / "faces.json").read_text()
    table = json.loads(text)
    return {k: v for k, v in table.items() if not k.startswith("_")}


def photo_names() -> list[str]:
    return sorted(_photo_table())


@lru_cache(maxsize=None)
def load_photo(name: str) -> FacePhoto:
    table = _photo_table()
    if name not in table:
        raise UserError(f"unknown face photo {name!r}; available: {', '.join(photo_names())}")
    meta = table[name]
    data = (FACES / str(meta["file"])).read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"packaged face photo {meta['file']} is unreadable: reinstall edge-mer")
    raw_points = meta["points"]
    assert isinstance(raw_points, dict)
    points = {k: np.asarray(v, np.float64) for k, v in raw_points.items()}
    return FacePhoto(name, image, points, str(meta["who"]), str(meta["source"]), str(meta["licence"]),
                     str(meta.get("points_from", "hand")))


def draw_identity(index: int, seed: int, spread: float = 1.0) -> IdentityParams:
    """Identity changes of subject ``index``; the photo alternates, then the mirror. ``spread`` widens every
    range about its middle (a face shape or tone further from the photograph's)."""
    names = photo_names()
    rng = np.random.default_rng([seed, 7919, index])

    def u(lo: float, hi: float) -> float:
        x = float(rng.uniform(lo, hi))
        return x if spread == 1.0 else (lo + hi) / 2 + (x - (lo + hi) / 2) * spread
    return IdentityParams(
        photo=names[index % len(names)],
        mirror=bool((index // len(names)) % 2),
        face_width=float(u(0.9, 1.1)),
        face_height=float(u(0.92, 1.08)),
        eye_spacing=float(u(-0.06, 0.06)),
        nose_length=float(u(-0.06, 0.06)),
        mouth_width=float(u(-0.06, 0.06)),
        jaw=float(u(-0.08, 0.08)),
        lightness=float(u(-18, 18)),
        tone_a=float(u(-6, 8)),
        tone_b=float(u(-8, 10)),
        contrast=max(0.5, float(u(0.8, 1.2))),
        gamma=max(0.5, float(u(0.8, 1.25))),
        light_angle=float(u(0, 2 * np.pi)),
        light_strength=max(0.0, float(u(0.0, 0.18))),
    )


def _mirror(image: np.ndarray, points: Points) -> tuple[np.ndarray, Points]:
    width = image.shape[1]
    flipped = {_swap_side(k): np.array([width - 1 - p[0], p[1]]) for k, p in points.items()}
    return np.ascontiguousarray(image[:, ::-1]), flipped


def _gauss(xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma * sigma))


def _shape_field(shape: tuple[int, int], pts: Points, p: IdentityParams) -> np.ndarray:
    """Smooth (H, W, 2) forward displacement that reshapes the face."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    iod = float(np.linalg.norm(pts["eye_l"] - pts["eye_r"]))
    centre = (pts["eye_l"] + pts["eye_r"] + pts["mouth_corner_l"] + pts["mouth_corner_r"]) / 4
    face = _gauss(xx, yy, centre, 1.2 * iod)
    disp = np.zeros((h, w, 2), np.float32)
    disp[..., 0] += (p.face_width - 1) * (xx - centre[0]) * face
    disp[..., 1] += (p.face_height - 1) * (yy - centre[1]) * face
    for side, sign in (("r", -1.0), ("l", 1.0)):
        disp[..., 0] += sign * p.eye_spacing * iod * _gauss(xx, yy, pts[f"eye_{side}"], 0.3 * iod)
        disp[..., 0] += sign * p.mouth_width * iod * _gauss(xx, yy, pts[f"mouth_corner_{side}"], 0.25 * iod)
        jaw = pts[f"mouth_corner_{side}"] + np.array([sign * 0.35 * iod, 0.35 * iod])
        disp[..., 0] += sign * p.jaw * iod * _gauss(xx, yy, jaw, 0.35 * iod)
    disp[..., 1] += p.nose_length * iod * _gauss(xx, yy, pts["nose_tip"], 0.3 * iod)
    return disp


def _apply_forward(image: np.ndarray, pts: Points, disp: np.ndarray) -> tuple[np.ndarray, Points]:
    """Move content by ``disp`` (backward sampling with the field, fine for smooth fields)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = cv2.remap(image, xx - disp[..., 0], yy - disp[..., 1], cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT101)
    moved = {}
    for k, p in pts.items():
        x, y = int(round(p[0])), int(round(p[1]))
        x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
        moved[k] = p + disp[y, x].astype(np.float64)
    return out, moved


def _recolour(image: np.ndarray, pts: Points, p: IdentityParams) -> np.ndarray:
    f = image.astype(np.float32) / 255.0
    lab = np.asarray(cv2.cvtColor(f, cv2.COLOR_BGR2Lab), np.float32)
    lmean = float(lab[..., 0].mean())
    lab[..., 0] = np.clip((lab[..., 0] - lmean) * p.contrast + lmean + p.lightness, 0, 100)
    lab[..., 1] += p.tone_a
    lab[..., 2] += p.tone_b
    bgr = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR), 0, 1) ** p.gamma
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    iod = float(np.linalg.norm(pts["eye_l"] - pts["eye_r"]))
    c = (pts["eye_l"] + pts["eye_r"]) / 2
    along = ((xx - c[0]) * np.cos(p.light_angle) + (yy - c[1]) * np.sin(p.light_angle)) / iod
    gain = 1 + p.light_strength * np.tanh(along)
    return np.clip(bgr * gain[..., None] * 255.0, 0, 255).astype(np.float32)


@lru_cache(maxsize=64)
def make_subject(index: int, seed: int = 0, spread: float = 1.0) -> Subject:
    """Build (and cache) synthetic subject ``index`` of the identity pool ``seed`` (``spread``: see
    ``draw_identity``)."""
    params = draw_identity(index, seed, spread)
    photo = load_photo(params.photo)
    image, pts = photo.image, dict(photo.points)
    if params.mirror:
        image, pts = _mirror(image, pts)
    scale = MASTER_IOD / float(np.linalg.norm(pts["eye_l"] - pts["eye_r"]))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interp)
    pts = {k: v * scale for k, v in pts.items()}
    image, pts = _apply_forward(image, pts, _shape_field(image.shape[:2], pts, params))
    # re-normalise so every subject has the same IOD after the eye-spacing change
    rescale = MASTER_IOD / float(np.linalg.norm(pts["eye_l"] - pts["eye_r"]))
    image = cv2.resize(image, None, fx=rescale, fy=rescale, interpolation=cv2.INTER_LINEAR)
    pts = {k: v * rescale for k, v in pts.items()}
    return Subject(index, params, _recolour(image, pts, params), pts)


def contact_sheet(subjects: list[Subject], tile: int = 128, columns: int = 8) -> np.ndarray:
    """A grid of face crops, one tile per subject, with its index written on it."""
    rows = (len(subjects) + columns - 1) // columns
    sheet = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for i, s in enumerate(subjects):
        c = s.face_centre
        side = int(2.5 * s.iod)
        crop = cv2.getRectSubPix(s.image, (side, side), (float(c[0]), float(c[1])))
        crop = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)
        r, col = divmod(i, columns)
        sheet[r * tile:(r + 1) * tile, col * tile:(col + 1) * tile] = np.clip(crop, 0, 255).astype(np.uint8)
        cv2.putText(sheet, str(s.index), (col * tile + 4, r * tile + 16), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 255, 255), 1, cv2.LINE_AA)
    return sheet


OCCLUSIONS = ("none", "dark glasses", "hand over mouth")


def place_photo(photo: FacePhoto, frame_size: tuple[int, int], face_px: float, angle: float, at: tuple[float, float],
                brightness: float = 1.0, occlusion: str = "none", seed: int = 7) -> tuple[np.ndarray, Points]:
    """The photograph in a ``frame_size`` (w, h) frame, as a test or benchmark of a face detector wants it: scaled
    to a face about ``face_px`` wide (2.3 eye distances), turned by ``angle`` degrees about its centre, put at
    ``at`` on a blurred random background, dimmed by ``brightness`` and partly hidden (``OCCLUSIONS``).
    Returns the frame and where the annotated points went."""
    if occlusion not in OCCLUSIONS:
        raise ValueError(f"unknown occlusion {occlusion!r}; choose from {', '.join(OCCLUSIONS)}")
    pts = photo.points
    iod = float(np.linalg.norm(pts["eye_l"] - pts["eye_r"]))
    image = photo.image.copy()
    if occlusion == "dark glasses":  # two dark lenses and a bridge over the eyes
        for eye in ("eye_r", "eye_l"):
            centre = tuple(int(round(v)) for v in pts[eye])
            cv2.ellipse(image, centre, (int(0.36 * iod), int(0.24 * iod)), 0, 0, 360, (25, 25, 25), -1)
        cv2.line(image, tuple(int(round(v)) for v in pts["eye_r"]), tuple(int(round(v)) for v in pts["eye_l"]),
                 (25, 25, 25), max(2, int(0.06 * iod)))
    elif occlusion == "hand over mouth":  # a skin-coloured patch from the cheeks down over the mouth and chin
        cheek = image[int(pts["cheek_r"][1]), int(pts["cheek_r"][0])].tolist()
        mouth = (pts["mouth_corner_r"] + pts["mouth_corner_l"]) / 2 + (0, 0.15 * iod)
        cv2.ellipse(image, tuple(int(round(v)) for v in mouth), (int(0.85 * iod), int(0.45 * iod)), -10, 0, 360,
                    cheek, -1)
    k = face_px / (2.3 * iod)
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, k)
    m[:, 2] += np.array(at, np.float64) - np.array([w / 2, h / 2])
    rng = np.random.default_rng(seed)
    frame = cv2.GaussianBlur(rng.integers(40, 200, (frame_size[1], frame_size[0], 3), dtype=np.uint8), (0, 0), 3)
    mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, frame_size)
    warped = cv2.warpAffine(image, m, frame_size, flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    frame[mask > 0] = warped[mask > 0]
    if brightness != 1.0:
        frame = np.clip(frame.astype(np.float32) * brightness, 0, 255).astype(np.uint8)
    return frame, {name: m[:, :2] @ p + m[:, 2] for name, p in pts.items()}
