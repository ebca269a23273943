"""Images written so that a full disk or an unwritable folder is an error, not a file left short: encoded in
memory, then written by Python, which raises where ``cv2.imwrite`` may only return False."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_mer.errors import UserError


def encode_image(image: np.ndarray, suffix: str, params: Sequence[int] = ()) -> bytes:
    """``image`` as the bytes of a ``suffix`` file (``.jpg``, ``.png``, ``.bmp``)."""
    ok, data = cv2.imencode(suffix, image, list(params))
    if not ok:
        raise UserError(f"OpenCV cannot encode a {suffix} image")
    return data.tobytes()


def write_image(path: Path, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """One frame of a dataset or a frame folder (inside a folder that is swapped in whole when complete)."""
    path.write_bytes(encode_image(image, path.suffix, params))
