"""The faces: real public-domain photographs, at least 20 distinct synthetic subjects."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from edge_mer.runtime.opencv_build import cascade_folder
from edge_mer.synth.faces import load_photo, make_subject, photo_names
from edge_mer.synth.render import FaceRenderer, default_face_iod


def test_photos_are_public_domain_and_annotated():
    names = photo_names()
    assert len({load_photo(name).who for name in names}) == len(names) >= 4  # four people, one photograph each
    for name in names:
        photo = load_photo(name)
        assert "public domain" in photo.licence
        h, w = photo.image.shape[:2]
        for point in photo.points.values():
            assert 0 <= point[0] < w and 0 <= point[1] < h
        # anatomical order: brows above eyes above nose above mouth above chin
        p = photo.points
        assert p["brow_inner_r"][1] < p["eye_r"][1] < p["nose_tip"][1] < p["mouth_corner_r"][1] < p["chin"][1]
        assert p["eye_r"][0] < p["eye_l"][0]  # the subject's right eye is on the image's left
        # the eyes are level (action units move along the image's axes), the face large enough to upscale little
        iod = float(np.linalg.norm(p["eye_l"] - p["eye_r"]))
        assert abs(p["eye_l"][1] - p["eye_r"][1]) < 0.1 * iod and iod >= 40


def _aligned_face(index: int) -> np.ndarray:
    s = make_subject(index, 0)
    crop = FaceRenderer(s, (112, 112), default_face_iod((112, 112))).render({})
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)


def test_at_least_twenty_distinct_subjects():
    faces = [_aligned_face(i) for i in range(24)]
    gaps = [float(np.abs(a - b).mean()) for a, b in itertools.combinations(faces, 2)]
    # the closest pair still differs by several grey levels on average over the whole face
    assert min(gaps) > 4.0


def test_subjects_are_reproducible_and_seed_dependent():
    a = make_subject(3, 0).image
    make_subject.cache_clear()
    assert np.array_equal(a, make_subject(3, 0).image)
    assert not np.array_equal(a, make_subject(3, 1).image)


def test_mirrored_subject_keeps_sides_right():
    s = make_subject(len(photo_names()), 0)  # the second subject of the first photo is mirrored
    assert s.params.mirror
    assert s.points["eye_r"][0] < s.points["eye_l"][0]
    assert s.points["mouth_corner_r"][0] < s.points["mouth_corner_l"][0]


@pytest.mark.parametrize("index", [0, 1, 2, 3, 10, 11])
def test_rendered_frames_are_found_by_a_face_detector(index):
    folder = cascade_folder(cv2)
    if folder is None:
        pytest.skip("no OpenCV face cascades on this machine (apt install opencv-data)")
    cascade = cv2.CascadeClassifier(f"{folder}/haarcascade_frontalface_default.xml")
    renderer = FaceRenderer(make_subject(index, 0), (640, 480), default_face_iod((640, 480)))
    gray = cv2.cvtColor(renderer.render({}), cv2.COLOR_BGR2GRAY)
    faces = cascade.detectMultiScale(gray, 1.1, 5, minSize=(80, 80))
    assert len(faces) >= 1
    pts = renderer.region_points()
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    nose = pts["nose_tip"]
    assert x < nose[0] < x + w and y < nose[1] < y + h
