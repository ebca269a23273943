"""Re-create the face photographs shipped in ``edge_mer/assets/faces/``.

The kit ships two public-domain portrait crops so that it needs no download at
run time. This script documents exactly where they come from and how they were
cut, so that anyone can rebuild them:

* ``astronaut.png``: Eileen Collins, NASA portrait, bundled with scikit-image as
  ``skimage.data.astronaut()``; NASA image, no known copyright restrictions
  (public domain).
* ``hopper.png``: Commodore Grace M. Hopper, official U.S. Navy photograph,
  bundled with matplotlib as ``sample_data/grace_hopper.jpg``; a work of the
  U.S. federal government (public domain).

Run: ``python scripts/make_face_assets.py`` (needs scikit-image and matplotlib).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "edge_mer" / "assets" / "faces"


def _astronaut() -> np.ndarray:
    import skimage.data

    rgb = skimage.data.astronaut()
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)[16:236, 120:330]


def _hopper() -> np.ndarray:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.imread(str(path))[40:440, 66:466]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, crop in (("astronaut", _astronaut()), ("hopper", _hopper())):
        cv2.imwrite(str(OUT / f"{name}.png"), crop, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"{name}: {crop.shape[1]}x{crop.shape[0]} -> {OUT / (name + '.png')}")


if __name__ == "__main__":
    main()
