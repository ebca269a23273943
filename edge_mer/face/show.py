"""What the face stage sees (``edge-mer face``): faces, landmarks and the aligned crop on an image or a video.

    edge-mer face --image F | --video F [--out overlay.png|.mp4] [--json] [--detector auto|mesh|haar]

On an image every face found is reported, the one the kit would follow first marked. On a
video the face is followed as the spotter follows it between detections (its landmarks set
the next frame's square; the detector runs again only when it is lost, and then keeps the
same person), so the overlay shows whether the crop stays put. The overlay draws the boxes,
the landmarks, the named points the spotting regions rest on, and the aligned crop in the
top left corner.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer.atomic import replacing, write_bytes
from edge_mer.errors import UserError
from edge_mer.face.align import FaceAligner, FaceAlignment, NoFaceError
from edge_mer.face.mesh import Face
from edge_mer.flow.images import read_image
from edge_mer.runtime.sources import open_path
from edge_mer.synth.images import encode_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_GREEN, _YELLOW, _RED, _GREY = (60, 220, 60), (0, 220, 255), (40, 40, 230), (170, 170, 170)


def _face_dict(face: Face, chosen: bool) -> dict[str, Any]:
    x, y, w, h = face.box
    return {"box": [round(x, 1), round(y, 1), round(w, 1), round(h, 1)], "score": round(face.score, 4),
            "keypoints": np.round(face.keypoints, 2).tolist(), "followed": chosen}


def _alignment_dict(a: FaceAlignment) -> dict[str, Any]:
    out = a.to_dict()
    out["matrix"] = np.round(a.matrix, 5).tolist()
    return out


def draw(frame: np.ndarray, alignment: FaceAlignment | None, others: Sequence[Face] = (), note: str = "") -> np.ndarray:
    """The frame with the faces, the followed face's landmarks and named points, and its aligned crop."""
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    scale = max(1, round(max(out.shape[:2]) / 640))
    for face in others:
        x, y, w, h = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), _GREY, scale)
    if alignment is not None:
        x, y, w, h = alignment.box
        cv2.rectangle(out, (x, y), (x + w, y + h), _GREEN, scale)
        fitted = alignment.face
        if fitted is not None and fitted.landmarks is not None:
            for px, py in fitted.landmarks:
                cv2.circle(out, (int(round(px)), int(round(py))), max(1, scale // 2), _YELLOW, -1)
        for px, py in (alignment.points or {}).values():
            cv2.circle(out, (int(round(px)), int(round(py))), 2 * scale, _RED, -1)
        for ex, ey in alignment.eyes or ():
            cv2.drawMarker(out, (int(round(ex)), int(round(ey))), _GREEN, cv2.MARKER_CROSS, 8 * scale, scale)
        crop = alignment.crop(out if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        side = min(crop.shape[0] * scale, out.shape[0] // 2, out.shape[1] // 2)
        out[:side, :side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_LINEAR)
        cv2.rectangle(out, (0, 0), (side - 1, side - 1), _GREEN, 1)
        label = f"{alignment.method}"
    else:
        label = "no face"
    if note:
        label = f"{label}  {note}"
    cv2.putText(out, label, (8, out.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, _GREEN, scale,
                cv2.LINE_AA)
    return out


def show_image(path: Path, aligner: FaceAligner, out: Path | None = None) -> dict[str, Any]:
    """Every face on the image and the alignment of the one followed; the overlay written to ``out``."""
    image = read_image(path)
    start = time.perf_counter()
    others: list[Face] = aligner.models.detect(image) if aligner.models is not None else []
    try:
        alignment: FaceAlignment | None = aligner.align(image, str(path), faces=others if aligner.models else None)
    except NoFaceError as exc:
        alignment, message = None, str(exc)
    else:
        message = ""
    elapsed = time.perf_counter() - start
    followed = alignment.face if alignment is not None else None
    chosen = [f for f in others if followed is not None and _overlaps(f, followed)][:1]
    report = {"image": str(path), "size": [int(image.shape[1]), int(image.shape[0])], "detector": aligner.detector,
              "faces": [_face_dict(f, f in chosen) for f in others],
              "alignment": _alignment_dict(alignment) if alignment is not None else None,
              "seconds": round(elapsed, 4), "overlay": str(out) if out else None}
    if out is not None:
        shown = draw(image, alignment, [f for f in others if f not in chosen])
        write_bytes(out, encode_image(shown, out.suffix))
    if alignment is None:
        raise NoFaceError(message)
    return report


def _overlaps(a: Face, b: Face) -> bool:
    return float(np.linalg.norm(a.centre - b.centre)) < 0.5 * max(a.box[2], b.box[2])


@dataclass
class VideoFaces:
    """A face followed through a video, frame by frame."""

    video: str
    detector: str
    frames: int = 0
    with_face: int = 0
    detections: int = 0  # frames the detector ran on (the start, and each time the face was lost)
    lost: int = 0  # times the followed face was lost
    seconds: float = 0.0
    per_frame: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video, "detector": self.detector, "frames": self.frames, "with_face": self.with_face,
                "detections": self.detections, "lost": self.lost,
                "ms_per_frame": round(1000 * self.seconds / max(self.frames, 1), 3), "per_frame": self.per_frame}


def show_video(path: Path, aligner: FaceAligner, out: Path | None = None, max_frames: int | None = None,
               fps: float | None = None) -> VideoFaces:
    """Follow the face through ``path`` (a file or a frame folder); the overlay video written to ``out``."""
    if not path.exists():
        raise UserError(f"video not found: {path}")
    source = open_path(path, fps=fps if fps is not None else (30.0 if path.is_dir() else None))
    result = VideoFaces(str(path), aligner.detector)
    current: FaceAlignment | None = None  # the face as last seen: followed from, or looked for near
    seen = False  # whether the previous frame had it
    shape: tuple[int, ...] = (1, 1)
    writer: Any = None
    with source, (replacing(out, out.suffix) if out is not None else nullcontext()) as staged:
        while max_frames is None or result.frames < max_frames:
            ok, frame = source.read()
            if not ok or frame is None:
                break
            shape = frame.shape
            start = time.perf_counter()
            found = aligner.follow(frame, current) if current is not None else None
            if found is None:
                result.lost += seen
                result.detections += 1
                try:
                    found = aligner.align(frame, f"frame {result.frames}", near=current)
                except NoFaceError:
                    found = None
            result.seconds += time.perf_counter() - start
            seen = found is not None
            current = found or current
            result.per_frame.append({"frame": result.frames, "method": found.method if found else None,
                                     "box": list(found.box) if found else None,
                                     "eyes": [[round(v, 2) for v in e] for e in found.eyes]
                                     if found is not None and found.eyes else None})
            result.with_face += seen
            if staged is not None:
                shown = draw(frame, found, note=f"frame {result.frames}")
                if writer is None:
                    writer = _video_writer(staged, source.fps, shown.shape[1], shown.shape[0])
                writer.write(shown)
            result.frames += 1
        if writer is not None:
            writer.release()
        if result.frames == 0:
            raise UserError(f"no frames could be read from {path} (empty or corrupt)")
    if result.with_face == 0:
        raise NoFaceError(f"no face found in any of the {result.frames} frames of {path} "
                          f"({aligner.searched(*shape[:2])})")
    return result


def _video_writer(path: Path, fps: float, width: int, height: int) -> Any:
    fourcc = "MJPG" if path.suffix.lower() == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps or 30.0, (width, height))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write a {path.suffix} video here (no encoder for it): use .avi or .mp4")
    return writer
