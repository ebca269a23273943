"""Re-create the face photographs shipped in ``edge_mer/assets/faces/``.

The kit ships public-domain portrait crops so that it needs no download at run
time. This script documents exactly where they come from and how they were cut,
so that anyone can rebuild them:

* ``astronaut.png``: Eileen Collins, NASA portrait, bundled with scikit-image as
  ``skimage.data.astronaut()``; NASA image, no known copyright restrictions
  (public domain). Facial points annotated by hand.
* ``hopper.png``: Commodore Grace M. Hopper, official U.S. Navy photograph,
  bundled with matplotlib as ``sample_data/grace_hopper.jpg``; a work of the
  U.S. federal government (public domain). Facial points annotated by hand.
* ``biden.png`` and ``obama.png``: Joseph R. Biden Jr. (as Vice President) and
  Barack Obama (as President), official White House photographs shipped in the
  source distribution of face_recognition 1.3.0 on PyPI as
  ``tests/test_images/biden.jpg`` and ``obama3.jpg``; works of the U.S. federal
  government (public domain). The crop is turned so that the eyes are level and
  scaled to an inter-ocular distance of 90 px; its facial points are the kit's
  own FaceMesh points (``edge_mer.face.mesh.POINTS``) on the crop, written into
  ``faces.json`` by this script.

Run: ``python scripts/make_face_assets.py [NAME ...]`` (all four without a name;
needs scikit-image for the astronaut, matplotlib for Grace Hopper, and pip, which
downloads the face_recognition source distribution from PyPI, for the others).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_mer.errors import UserError, script_main
from edge_mer.face.mesh import Face, FaceModels

OUT = Path(__file__).resolve().parents[1] / "edge_mer" / "assets" / "faces"

#: The PyPI source distribution holding the White House photographs, and the files taken from it.
SDIST = "face_recognition==1.3.0"
WHITE_HOUSE = {
    "biden": ("biden.jpg", "Joseph R. Biden Jr., Vice President of the United States",
              "face_recognition 1.3.0 sdist (PyPI) tests/test_images/biden.jpg (official White House photograph)"),
    "obama": ("obama3.jpg", "Barack Obama, President of the United States",
              "face_recognition 1.3.0 sdist (PyPI) tests/test_images/obama3.jpg (official White House photograph)"),
}
#: The levelled crops: side, inter-ocular distance and where the eyes' midpoint sits (all in pixels).
SIDE, IOD, EYES_AT = 400, 90.0, (200.0, 150.0)


def _astronaut() -> np.ndarray:
    import skimage.data

    rgb = skimage.data.astronaut()
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)[16:236, 120:330]


def _hopper() -> np.ndarray:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path))
    if image is None:
        raise UserError(f"matplotlib's sample image {path} is missing or unreadable")
    return image[40:440, 66:466]


def _sdist_images(names: list[str]) -> dict[str, np.ndarray]:
    """``tests/test_images/NAME`` of the face_recognition source distribution, fetched with pip."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, SDIST], check=True)
        sdist = next(Path(tmp).glob("face_recognition-*.tar.gz"))
        out: dict[str, np.ndarray] = {}
        with tarfile.open(sdist) as tar:
            for name in names:
                member = tar.extractfile(f"{sdist.name[:-len('.tar.gz')]}/tests/test_images/{name}")
                image = None if member is None else cv2.imdecode(np.frombuffer(member.read(), np.uint8), 1)
                if image is None:
                    raise UserError(f"{sdist.name} holds no readable tests/test_images/{name}")
                out[name] = image
    return out


def _largest_face(models: FaceModels, image: np.ndarray) -> Face:
    fitted = [models.fit(image, f) for f in models.detect(image)]
    faces = [f for f in fitted if f is not None]
    if not faces:
        raise UserError("no face found")
    return max(faces, key=lambda f: f.box[2] * f.box[3])


def _levelled(models: FaceModels, image: np.ndarray) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The face turned so that its eyes are level, scaled and cut to the standard crop, with its points."""
    face = _largest_face(models, image)
    right, left = face.eyes
    angle = float(np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0])))
    scale = IOD / float(np.linalg.norm(left - right))
    mid = (left + right) / 2
    m = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), angle, scale)
    m[:, 2] += np.array(EYES_AT) - mid
    crop = cv2.warpAffine(image, m, (SIDE, SIDE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    points = _largest_face(models, crop).points()
    return crop, {k: [int(round(v[0])), int(round(v[1]))] for k, v in points.items()}


def main() -> None:
    wanted = sys.argv[1:] or ["astronaut", "hopper", *WHITE_HOUSE]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in (("astronaut", _astronaut), ("hopper", _hopper)):
        if name not in wanted:
            continue
        crop = make()
        cv2.imwrite(str(OUT / f"{name}.png"), crop, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"{name}: {crop.shape[1]}x{crop.shape[0]} -> {OUT / (name + '.png')}")
    table_path = OUT / "faces.json"
    table = json.loads(table_path.read_text())
    chosen = {name: spec for name, spec in WHITE_HOUSE.items() if name in wanted}
    if not chosen:
        return
    models = FaceModels(engine="onnxruntime")
    images = _sdist_images([file for file, _, _ in chosen.values()])
    for name, (file, who, source) in chosen.items():
        crop, points = _levelled(models, images[file])
        cv2.imwrite(str(OUT / f"{name}.png"), crop, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        table[name] = {"file": f"{name}.png", "who": who, "source": source,
                       "licence": "public domain (work of the U.S. federal government)", "points_from": "face mesh",
                       "points": points}
        print(f"{name}: {SIDE}x{SIDE}, {len(points)} points -> {OUT / (name + '.png')}")
    text = json.dumps(table, indent=2) + "\n"
    table_path.write_text(re.sub(r"\[\s+(-?\d+),\s+(-?\d+)\s+\]", r"[\1, \2]", text))  # a point on one line


if __name__ == "__main__":
    script_main(main)
