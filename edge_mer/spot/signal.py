"""A cheap per-frame facial motion signal for spotting, from aligned grey face crops.

For frame t the signal compares the S x S crop at t with the crop at t - k, where
``k = lag_frames(fps) = max(1, ceil(LAG_S * fps))``, LAG_S = 0.5 s (15 frames at 30 fps,
100 at 200 fps):

1. dense flow crop[t - k] -> crop[t]: OpenCV's DIS, fast preset, refined down to half
   resolution (finest scale 1): 1.1 ms at S = 128 on one core of the benchmark's machine
   (OpenCV 5.1), where Farneback takes 2.6 ms and DIS at full resolution 4.5 ms; the
   ultrafast preset (0.5 ms) loses recall, the medium one (1.5 ms) gains no more F1 than
   twelve videos can tell from chance (benchmarks/results/spotting.md);
2. head motion: an affine motion fitted to the flow on a grid inside the face ellipse
   (least squares reweighted three times with weights 1 / max(1, r / 2 sigma)^2, so that
   the local motion of an expression counts little) is subtracted; the fit follows the
   head, the residual is the face's own motion;
3. facial regions (brows, eyes, nose and upper lip, cheeks, mouth corners, chin): boxes of
   the canonical crop (``REGIONS``) that follow each face's own landmarks where the aligner
   has them (``landmark_regions``: each box keeps its size and moves with its landmarks, so
   a longer face or a wider mouth measures the same anatomy), each cut into quarters
   (``part_boxes``; the
   eyes stay whole): the length of each part's mean residual flow vector is how far that
   part moved. Averaging vectors before taking the length lets pixel noise cancel, while
   an action unit moves a patch of skin coherently; quarters keep a small patch from
   being diluted by a large box;
4. each part's length is divided by its running median over the last ``norm_s`` (10)
   seconds, so smooth and textured parts count alike ("times its usual motion");
5. blink suppression: the eyes never count (they blink), and while either eye moves more
   than ``blink_gate`` (6) times its usual motion the brows do not count either (a closing
   lid drags the skin under the brows), so a blink leaves only the lower face (without
   the gate the benchmark's false positives go up several times). The eyes' motion is
   kept with each value (``MotionSignal.eyes``) for the spotter, which drops a candidate
   that lies mostly on a blink (``edge_mer.spot.spotter``);
6. the value is the mean of the ``top`` (2) largest normalised part motions.

Why k is 0.5 s, the longest micro-expression, rather than an onset-to-apex time
(~0.1-0.15 s): while t - k is still before an expression's onset, the value measures the
face's displacement from its neutral, pre-onset state, which has the profile of the
expression itself (0 at onset, largest at apex, 0 again at offset). With k at least the
longest micro-expression the whole profile, and the face's return to rest after it, is
seen in the value as it happens, so the spotter can report a spot a frame or two after its
offset (``edge_mer.spot.spotter``). A short lag measures speed instead (two humps with a
dip at the apex, hard to turn into intervals); k = 0.13 s loses a quarter of the F1 on
the benchmark's videos. The event's echo k frames later (the crop at t - k is then the
displaced one) is ignored by the spotter. One flow per frame: the signal costs about
3 ms per frame at S = 128 on one core of the benchmark's machine (crop, flow, head fit).

S = 128 (``DEFAULT_SIZE``): the brows and lips of a micro-expression move 0.5 to 2 px at
S = 112, close to what DIS resolves at its half-resolution level; smaller crops lose
recall, ``--size 160`` buys some on a desktop (benchmarks/results/spotting.md).
``face_crop`` makes the crop from a camera frame and a ``FaceAlignment`` matrix,
shrinking the face region with area averaging first when the face is larger than the
crop, so that the warp does not alias sensor noise into the flow.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from edge_mer.face.align import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAligner, FaceAlignment, NoFaceError
from edge_mer.flow.base import to_gray
from edge_mer.flow.head import HeadMotion

LAG_S = 0.5
NORM_S = 10.0
DEFAULT_SIZE = 128
MIN_MOTION = 0.005  # px: floor of a region's usual motion (a noiseless still face)

#: Facial regions as (x0, y0, x1, y1) fractions of the canonical crop, whose eyes are at
#: y = 0.34 S, x = 0.5 S -/+ 0.179 S (``edge_mer.face.align``). "_r" is the subject's right
#: (image left). The brows stop above the upper lids; the chin box stops at the jaw line,
#: below which the background does not move with the head.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "brow_r": (0.14, 0.08, 0.47, 0.25), "brow_l": (0.53, 0.08, 0.86, 0.25),
    "eye_r": (0.22, 0.28, 0.45, 0.40), "eye_l": (0.55, 0.28, 0.78, 0.40),
    "nose": (0.37, 0.44, 0.63, 0.66),
    "cheek_r": (0.18, 0.42, 0.37, 0.58), "cheek_l": (0.63, 0.42, 0.82, 0.58),
    "mouth_r": (0.26, 0.57, 0.45, 0.76), "mouth_l": (0.55, 0.57, 0.74, 0.76),
    "chin": (0.38, 0.70, 0.62, 0.87),
}
#: The landmarks (``edge_mer.face.mesh.POINTS``) each region follows: the box moves by how far their mean lies
#: from ``MEAN_ANCHORS``, where it lies on an average face.
REGION_ANCHORS: dict[str, tuple[str, ...]] = {
    "brow_r": ("brow_outer_r", "brow_inner_r"), "brow_l": ("brow_outer_l", "brow_inner_l"),
    "eye_r": ("eye_r",), "eye_l": ("eye_l",), "nose": ("nose_tip", "upper_lip"),
    "cheek_r": ("cheek_r",), "cheek_l": ("cheek_l",), "mouth_r": ("mouth_corner_r",),
    "mouth_l": ("mouth_corner_l",), "chin": ("lower_lip", "chin"),
}
#: Where the landmarks lie in the canonical crop, as fractions of S: their mean over the twelve first synthetic
#: subjects (the shipped photographs under identity changes), FaceMesh at S = 128. ``REGIONS`` are the boxes
#: of this average face.
MEAN_LANDMARKS: dict[str, tuple[float, float]] = {
    "eye_r": (0.321, 0.340), "eye_l": (0.679, 0.340),
    "brow_outer_r": (0.192, 0.271), "brow_inner_r": (0.422, 0.253),
    "brow_outer_l": (0.806, 0.271), "brow_inner_l": (0.577, 0.254),
    "nose_tip": (0.502, 0.561), "upper_lip": (0.503, 0.659), "lower_lip": (0.505, 0.766), "chin": (0.506, 0.918),
    "cheek_r": (0.270, 0.549), "cheek_l": (0.734, 0.547),
    "mouth_corner_r": (0.334, 0.677), "mouth_corner_l": (0.674, 0.675),
}
EYE_GAP = 0.08  # fraction of S a moved box keeps between itself and the eye line (the cheeks' gap on REGIONS)
EYES: tuple[str, ...] = ("eye_r", "eye_l")
BROWS: tuple[str, ...] = ("brow_r", "brow_l")
PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _anchor(points: dict[str, tuple[float, float]], names: tuple[str, ...]) -> np.ndarray:
    return np.mean([points[n] for n in names], axis=0)


def landmark_regions(points: dict[str, tuple[float, float]] | None, size: int,
                     max_shift: float = 0.12) -> dict[str, tuple[float, float, float, float]]:
    """``REGIONS`` moved onto this face: each box keeps its size and moves with its landmarks (``points``: the
    named landmarks in crop pixels, ``FaceAlignment.crop_points``), by at most ``max_shift`` * S (a landmark
    fit that wandered off moves nothing far), and stays inside the crop. Without landmarks: ``REGIONS``."""
    if not points or any(n not in points for names in REGION_ANCHORS.values() for n in names):
        return dict(REGIONS)
    scaled = {k: (v[0] / size, v[1] / size) for k, v in points.items()}
    out = {}
    for name, (x0, y0, x1, y1) in REGIONS.items():
        names = REGION_ANCHORS[name]
        dx, dy = np.clip(_anchor(scaled, names) - _anchor(MEAN_LANDMARKS, names), -max_shift, max_shift)
        # a box above or below the eyes keeps EYE_GAP * S from the eye line (a blinking lid would enter it;
        # the eyes sit on that line in every crop), and the chin box stays as far above the chin's landmark as
        # on the average face (below it the background does not move with the head)
        if y1 <= CANONICAL_EYE_Y:
            dy = min(dy, CANONICAL_EYE_Y - EYE_GAP - y1)
        elif y0 >= CANONICAL_EYE_Y:
            dy = max(dy, CANONICAL_EYE_Y + EYE_GAP - y0)
        if name == "chin":
            dy = min(dy, scaled["chin"][1] - MEAN_LANDMARKS["chin"][1])
        dx = float(np.clip(dx, -x0, 1.0 - x1))
        dy = float(np.clip(dy, -y0, 1.0 - y1))
        out[name] = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    return out


def lag_frames(fps: float, lag_s: float = LAG_S) -> int:
    """k, the frames between the two crops of one flow: ``max(1, ceil(lag_s * fps))`` (never shorter than lag_s)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return max(1, int(math.ceil(lag_s * fps - 1e-9)))


def face_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(S, S) uint8 grey crop of ``frame`` under the 2x3 frame -> crop ``matrix``, without aliasing.

    When the crop is smaller than the face (scale < 0.8), only the frame region the crop
    sees is converted and shrunk with area averaging to about the crop's scale before the
    bilinear warp.
    """
    m = np.asarray(matrix, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale >= 0.8:
        return cv2.warpAffine(to_gray(frame), m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    h, w = frame.shape[:2]
    inv = cv2.invertAffineTransform(m)
    corners = inv @ np.array([[0, size, 0, size], [0, 0, size, size], [1, 1, 1, 1]], np.float64)
    x0, y0 = (max(0, int(np.floor(v)) - 2) for v in corners.min(1))
    x1, y1 = min(w, int(np.ceil(corners[0].max())) + 2), min(h, int(np.ceil(corners[1].max())) + 2)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies outside the frame
        return cv2.warpAffine(to_gray(frame), m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    region = to_gray(frame[y0:y1, x0:x1])
    small = cv2.resize(region, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                       interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)
    # crop = m @ (x0 + xs / fx, y0 + ys / fy, 1)
    m2 = np.stack([m[:, 0] / fx, m[:, 1] / fy, m[:, 2] + m[:, 0] * x0 + m[:, 1] * y0], 1)
    return cv2.warpAffine(small, m2, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class SignalConfig:
    """How the motion signal is computed; the defaults are the measured ones (benchmarks/spotting.py)."""

    lag_s: float = LAG_S  # seconds between the two crops of the value's flow
    preset: str = "fast"  # DIS preset: ultrafast, fast or medium
    finest_scale: int = 1  # DIS finest pyramid level (0: full resolution)
    norm_s: float = NORM_S  # window of each part's running median
    blink_gate: float = 6.0  # eye motion (times usual) above which the brows are left out too
    top: int = 2  # the value is the mean of this many largest part motions
    regions: str = "landmarks"  # "landmarks": the regions follow the face's landmarks; "fixed": REGIONS as they are


class _Parts:
    """Motion of the face's parts between two crops: flow, head motion removed, normalised, blink-gated."""

    def __init__(self, size: int, fps: float, config: SignalConfig) -> None:
        self.size = size
        self.set_regions(REGIONS)
        self.eyes = np.array([n.split(".")[0] in EYES for n in self.names])
        self.upper = np.array([n.split(".")[0] in EYES + BROWS for n in self.names])
        self.head = HeadMotion(size)
        self.dis: Any = cv2.DISOpticalFlow.create(PRESETS[config.preset])
        self.dis.setFinestScale(config.finest_scale)
        self.config = config
        self.norm_len = max(3, int(round(config.norm_s * fps)))
        self.refresh = max(1, int(round(0.1 * fps)))
        self.reset()

    def set_regions(self, regions: dict[str, tuple[float, float, float, float]]) -> None:
        """Measure these regions (the same names as ``REGIONS``) from now on."""
        size = self.size
        self.regions = dict(regions)
        self.names, boxes = part_boxes(size, regions)
        self.boxes = boxes
        self.centres = np.array([[(x0 + x1 - 1) / 2 / size, (y0 + y1 - 1) / 2 / size, 1.0]
                                 for x0, y0, x1, y1 in boxes])  # (P, 3): an affine motion's mean over a box
        b = np.array(boxes)  # (P, 4) x0, y0, x1, y1
        self._corners = (b[:, 1], b[:, 0], b[:, 3], b[:, 2])
        self._areas = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:, None].astype(np.float64)

    def reset(self) -> None:
        self.history = np.zeros((self.norm_len, len(self.names)), np.float64)
        self.filled = 0
        self.next = 0
        self.usual = np.full(len(self.names), MIN_MOTION)

    def motion(self, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P,) length in pixels of each part's mean flow first -> second with the head motion removed, and the
        fitted head motion (3, 2)."""
        flow = self.dis.calc(first, second, None)  # (S, S, 2)
        head = self.head.fit(flow)
        table = cv2.integral(flow)  # (S + 1, S + 1, 2) float64
        y0, x0, y1, x1 = self._corners
        means = (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) / self._areas  # (P, 2)
        return np.linalg.norm(means - self.centres @ head, axis=1), head

    def value(self, motion: np.ndarray) -> tuple[float, np.ndarray, float]:
        """The combined value, the normalised motion per part and the eyes' (the larger of the two)."""
        self.history[self.next] = motion
        self.next = (self.next + 1) % self.norm_len
        self.filled = min(self.filled + 1, self.norm_len)
        if self.filled < 10 * self.refresh or self.next % self.refresh == 0:  # a 10 s median moves slowly
            self.usual = np.maximum(np.median(self.history[:self.filled], axis=0), MIN_MOTION)
        norm = motion / self.usual
        eyes = float(norm[self.eyes].max())
        counted = np.sort(norm[~(self.upper if eyes > self.config.blink_gate else self.eyes)])
        return float(counted[-min(self.config.top, len(counted)):].mean()), norm, eyes


def part_boxes(size: int, regions: dict[str, tuple[float, float, float, float]] | None = None
               ) -> tuple[list[str], list[tuple[int, int, int, int]]]:
    """Names and pixel boxes (x0, y0, x1, y1) of the parts: each region's quarters, the eyes whole.

    An action unit moves a patch of skin often smaller than its region; a quarter that
    moves stands out where the region's mean would dilute it. The eyes stay whole: they
    only detect blinks.
    """
    names: list[str] = []
    boxes: list[tuple[int, int, int, int]] = []
    for name, (x0, y0, x1, y1) in (REGIONS if regions is None else regions).items():
        xs = [x0, (x0 + x1) / 2, x1] if name not in EYES else [x0, x1]
        ys = [y0, (y0 + y1) / 2, y1] if name not in EYES else [y0, y1]
        for i in range(len(ys) - 1):
            for j in range(len(xs) - 1):
                box = tuple(int(round(v * size)) for v in (xs[j], ys[i], xs[j + 1], ys[i + 1]))
                names.append(name if name in EYES else f"{name}.{2 * i + j}")
                boxes.append((box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)))
    return names, boxes


#: ``apex_index``: parts averaged, moving-average window as a share of the clip, blink gate (times the clip's
#: median eye motion). Chosen on the development draw of the diverse composite (``benchmarks/apex.py``).
APEX_TOP = 3
APEX_WINDOW = 0.15
APEX_BLINK_GATE = 3.0


def apex_index(onset: np.ndarray, crops: Iterable[np.ndarray],
               points: dict[str, tuple[float, float]] | None = None) -> int:
    """The index in ``crops`` (the aligned crops after the onset, in order) of the apex: the frame whose face
    moved most from ``onset``'s, as the spotter measures motion.

    Each crop's motion from the onset is measured per part (``part_boxes`` of the regions on this face's
    landmarks ``points`` where given, the head's affine motion removed); a frame's score is the mean of its
    ``APEX_TOP`` largest parts, the eyes never counted, and the brows not either while the eyes move more
    than ``APEX_BLINK_GATE`` times their median over the clip (a blink drags them). The scores are averaged
    over a window of ``APEX_WINDOW`` of the clip before the largest is taken: a weak expression's motion is
    near the flow's noise, and its apex is a plateau where single frames' noise is not.
    """
    size = onset.shape[0]
    parts = _Parts(size, 1.0, SignalConfig())
    if points is not None:
        parts.set_regions(landmark_regions(points, size))
    motion = np.array([parts.motion(onset, crop)[0] for crop in crops])  # (F, P)
    if len(motion) == 0:
        raise ValueError("no frame after the onset")
    eyes = motion[:, parts.eyes].max(1)
    blink = eyes > APEX_BLINK_GATE * max(float(np.median(eyes)), MIN_MOTION)
    counted = np.where(blink[:, None], ~parts.upper, ~parts.eyes)  # (F, P)
    top = np.sort(np.where(counted, motion, -np.inf), axis=1)[:, -APEX_TOP:]
    score = top.mean(1)
    half = int(round(APEX_WINDOW * len(score))) // 2
    if half:
        score = np.convolve(np.pad(score, half, mode="edge"), np.ones(2 * half + 1) / (2 * half + 1), "valid")
    return int(np.argmax(score))


class MotionSignal:
    """Streaming facial motion: ``push`` one aligned crop per frame, get that frame's value.

    ``push`` returns None until k = ``lag_frames(fps)`` earlier crops have been seen, then a
    float >= 0: the mean of the largest part motions between the crops at t - k and t, each
    in multiples of that part's usual motion. ``regions`` (normalised motion per part),
    ``eyes`` (the larger eye's, in the same units), ``blink`` (whether the eyes gated the
    brows out) and ``head`` (the fitted affine head motion, (3, 2)) describe the last value.
    """

    def __init__(self, fps: float, size: int = DEFAULT_SIZE, config: SignalConfig | None = None) -> None:
        if size < 32:
            raise ValueError(f"the face crop must be at least 32 x 32, got {size}")
        self.config = config or SignalConfig()
        if self.config.regions not in ("landmarks", "fixed"):
            raise ValueError(f"regions must be 'landmarks' or 'fixed', got {self.config.regions!r}")
        if self.config.preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {self.config.preset!r}; choose from {', '.join(PRESETS)}")
        self.fps = float(fps)
        self.size = size
        self.lag = lag_frames(fps, self.config.lag_s)
        self._parts = _Parts(size, fps, self.config)
        self.reset()

    def reset(self, keep_usual: bool = False) -> None:
        """Forget the crops (a cut in the video; ``keep_usual``: a new face alignment of the same face,
        whose parts keep their usual motion)."""
        self._crops: deque[np.ndarray] = deque(maxlen=self.lag + 1)
        if not keep_usual:
            self._parts.reset()
        self.regions: dict[str, float] = {}
        self.eyes = 0.0
        self.head = np.zeros((3, 2))

    def set_regions(self, points: dict[str, tuple[float, float]] | None) -> None:
        """Follow the face's landmarks (crop pixels; None: the fixed ``REGIONS``) from the next value on, when
        the config says so."""
        if self.config.regions == "landmarks":
            self._parts.set_regions(landmark_regions(points, self.size))

    @property
    def blink(self) -> bool:
        """Whether the eyes gated the brows out of the last value."""
        return self.eyes > self.config.blink_gate

    @property
    def region_boxes(self) -> dict[str, tuple[float, float, float, float]]:
        """The regions measured now, as fractions of S."""
        return dict(self._parts.regions)

    def push(self, crop: np.ndarray) -> float | None:
        """Add the next frame's S x S crop (grey or BGR); its value, or None while fewer than k crops came before."""
        gray = to_gray(crop)
        if gray.shape != (self.size, self.size):
            raise ValueError(f"expected a {self.size} x {self.size} crop, got {gray.shape[1]} x {gray.shape[0]}")
        self._crops.append(np.ascontiguousarray(gray, np.uint8))
        if len(self._crops) <= self.lag:
            return None
        motion, self.head = self._parts.motion(self._crops[0], self._crops[-1])
        value, norm, self.eyes = self._parts.value(motion)
        self.regions = {name: float(v) for name, v in zip(self._parts.names, norm)}
        return value


class FaceTrack:
    """Which face alignment to crop with, frame by frame, and when to look for the face again.

    Policy: the face is detected (``FaceAligner``) on the first frame, and until one is
    found every ``search_s`` seconds. While the spotter is idle (no candidate open) and
    the aligner has landmarks (mesh), the face is followed every ``follow_s`` seconds and
    the crop transform moves a fraction ``smooth`` of the way towards it (``follow=
    "smooth"``) once it is more than ``deadband`` * S away (below that it is the landmarks'
    own jitter): the crop stays on a head that drifts or turns, in steps too small for the
    signal, whose head-motion fit takes them out with the head's own motion. While a
    candidate is open the transform stays fixed, because values on either side of a change
    measure slightly different patches of skin. With ``follow="step"`` (and without
    landmarks) the transform stays fixed between looks, as MER toolkits keep it for a clip.
    The face is looked for again every ``redetect_s`` seconds, and at once when the head
    moved more than ``lost`` * S between the signal's two crops (the tracking is about to
    be lost); an alignment found then is adopted at once when it moves the crop's eyes or
    mouth by more than ``tolerance`` * S (idle only). A failed look keeps the old transform
    (a blink or a turned head must not drop the face). ``changed`` tells the caller that
    such a jump happened and its buffered frames need cropping again.
    """

    FOLLOWS = ("smooth", "step")

    def __init__(self, size: int, fps: float, aligner: FaceAligner | None = None, redetect_s: float = 2.0,
                 search_s: float = 0.25, lost: float = 0.1, tolerance: float = 0.1, follow: str = "smooth",
                 follow_s: float = 0.1, smooth: float = 0.25, deadband: float = 0.02) -> None:
        if follow not in self.FOLLOWS:
            raise ValueError(f"follow must be one of {self.FOLLOWS}, got {follow!r}")
        self.size = size
        self.aligner = aligner or FaceAligner(size)
        if self.aligner.size != size:
            raise ValueError(f"the aligner makes {self.aligner.size} px crops, the track {size} px ones")
        self.redetect = max(1, int(round(redetect_s * fps)))
        self.search = max(1, int(round(search_s * fps)))
        self.lost = lost
        self.tolerance = tolerance
        self.follow = follow
        self.follow_every = max(1, int(round(follow_s * fps)))
        self.smooth = smooth
        self.deadband = deadband
        self.alignment: FaceAlignment | None = None
        self.alignments = 0  # how many times a transform was adopted whole (a jump)
        self.nudges = 0  # how many times the transform moved part of the way towards the followed face
        self.misses = 0  # looks for the face, after it was found, that did not find it (looked away, left)
        self.searches = 0  # frames the detector looked at
        self._looked_at: tuple[int, int] | None = None  # the frame size of the last search
        self.changed = False
        self._due = 0  # frame index of the next detection
        self._next_follow = 0  # frame index of the next smooth step
        s = float(size)
        self._probe = np.array([[0.5 - CANONICAL_IOD / 2, CANONICAL_EYE_Y], [0.5 + CANONICAL_IOD / 2, CANONICAL_EYE_Y],
                                [0.5, 0.66]]) * s  # eyes and mouth in the crop

    @property
    def searched(self) -> str:
        """What the last search for a face covered (sizes, windows), for the message that none was found."""
        return "" if self._looked_at is None else self.aligner.searched(*self._looked_at)

    def update(self, gray: np.ndarray, index: int, idle: bool = True, head: np.ndarray | None = None) -> bool:
        """Detect if due (``head``: the signal's last fitted head motion); True when a face alignment is set."""
        self.changed = False
        if self.alignment is None:
            if index >= self._due:
                self._due = index + self.search
                self._adopt(self._detect(gray, index))
            return self.alignment is not None
        moved = head is not None and float(np.linalg.norm(np.array([0.5, 0.5, 1.0]) @ head)) > self.lost * self.size
        if idle and (index >= self._due or moved):
            self._due = index + self.redetect
            self._next_follow = index + self.follow_every
            found = self._detect(gray, index)
            if found is not None and self._differs(found):
                self._adopt(found)
            elif found is not None and self.follow == "smooth":
                self._nudge(found)
        elif idle and self.follow == "smooth" and index >= self._next_follow:
            self._next_follow = index + self.follow_every
            followed = self.aligner.follow(gray, self.alignment)  # None without landmarks: nothing to follow
            if followed is not None and self._differs(followed):
                self._adopt(followed)
            elif followed is not None:
                self._nudge(followed)
        return True

    def _nudge(self, target: FaceAlignment) -> None:
        """Move the transform ``smooth`` of the way to ``target``'s, keeping ``target``'s face to follow next;
        an offset within ``deadband`` * S (the landmarks' own jitter) leaves the transform where it is."""
        assert self.alignment is not None
        if self._offset(target) <= self.deadband * self.size:
            self.alignment = replace(self.alignment, face=target.face)  # followed on from the newest landmarks
            return
        matrix = (1.0 - self.smooth) * self.alignment.matrix + self.smooth * target.matrix  # stays a similarity
        self.alignment = replace(target, matrix=matrix)
        self.nudges += 1

    def _detect(self, gray: np.ndarray, index: int) -> FaceAlignment | None:
        """The face followed so far (by its landmarks where the aligner has them, else by the detector's face
        nearest it), or the largest and most central face before one was found."""
        if self.alignment is not None:
            followed = self.aligner.follow(gray, self.alignment)
            if followed is not None:
                return followed
        self.searches += 1
        self._looked_at = (gray.shape[0], gray.shape[1])
        try:
            return self.aligner.align(gray, f"frame {index}", near=self.alignment)
        except NoFaceError:
            if self.alignment is not None:
                self.misses += 1
            return None

    def _offset(self, new: FaceAlignment) -> float:
        """How far (crop pixels) ``new`` would move the crop's eyes or mouth."""
        assert self.alignment is not None
        old_inv = cv2.invertAffineTransform(self.alignment.matrix)
        frame_pts = self._probe @ old_inv[:, :2].T + old_inv[:, 2]
        moved = frame_pts @ new.matrix[:, :2].T + new.matrix[:, 2] - self._probe
        return float(np.linalg.norm(moved, axis=1).max())

    def _differs(self, new: FaceAlignment) -> bool:
        return self._offset(new) > self.tolerance * self.size

    def _adopt(self, found: FaceAlignment | None) -> None:
        if found is not None:
            self.alignment = found
            self.alignments += 1
            self.changed = True

    def crop(self, gray: np.ndarray) -> np.ndarray:
        assert self.alignment is not None, "no face alignment yet"
        return face_crop(gray, self.alignment.matrix, self.size)
