"""Frame files of a clip, ordered by the number in their names (img9 before img10)."""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def frame_number(name: str) -> int | None:
    """The last integer in a file name: ``img46.jpg`` -> 46, ``006_05562.jpg`` -> 5562."""
    m = _LAST_NUMBER.search(Path(name).stem)
    return int(m.group(1)) if m else None


def list_frames(folder: Path) -> dict[int, Path]:
    """Frame number -> path for the images in ``folder`` (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    frames: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            n = frame_number(p.name)
            if n is not None:
                frames[n] = p
    return dict(sorted(frames.items()))
