"""Face alignment: computed on the onset frame, eyes level and at the canonical place in the crop."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mer.errors import UserError
from edge_mer.face import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAligner, NoFaceError
from edge_mer.synth.faces import make_subject
from edge_mer.synth.render import FaceRenderer, Pose


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner(112)


@pytest.mark.parametrize("subject", range(6))
@pytest.mark.parametrize("angle", [-6.0, 0.0, 6.0])
def test_eyes_land_on_the_canonical_line(aligner, subject, angle):
    size = (640, 480)
    r = FaceRenderer(make_subject(subject, 0), size, 0.25 * size[1])
    pose = Pose(tx=15, ty=-8, angle=angle)
    a = aligner.align(r.render({}, pose=pose))
    pts = r.region_points(pose)
    m = a.matrix
    right = m[:, :2] @ pts["eye_r"] + m[:, 2]  # the subject's right eye, left in the image
    left = m[:, :2] @ pts["eye_l"] + m[:, 2]
    target_y = CANONICAL_EYE_Y * 112
    half = CANONICAL_IOD * 112 / 2
    if a.method == "eyes":
        assert abs(right[1] - left[1]) < 3  # the eye line is level
        assert abs(right[0] - (56 - half)) < 5 and abs(left[0] - (56 + half)) < 5  # cascade eyes: +-5 px
        assert abs((right[1] + left[1]) / 2 - target_y) < 4
    else:  # the face box alone: position and scale, no rotation correction
        assert abs((right[0] + left[0]) / 2 - 56) < 6 and abs((right[1] + left[1]) / 2 - target_y) < 8


def test_most_faces_are_aligned_by_their_eyes(aligner):
    methods = []
    for subject in range(12):
        r = FaceRenderer(make_subject(subject, 0), (640, 480), 120)
        methods.append(aligner.align(r.render({})).method)
    assert methods.count("eyes") >= 9


def test_crop_is_reused_for_every_frame(aligner):
    r = FaceRenderer(make_subject(0, 0), (320, 240), 60)
    onset = r.render({})
    a = aligner.align(onset)
    moved = r.render({}, pose=Pose(tx=3))  # a later frame with the head moved 3 px
    diff = a.crop(moved).astype(float) - a.crop(onset).astype(float)
    assert a.crop(onset).shape == (112, 112, 3)
    assert np.abs(diff).mean() > 1  # the same transform, so the head motion shows in the crop


def test_no_face_is_a_clear_error(aligner):
    blank = np.full((240, 320, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match=r"no face found in onset frame x\.jpg"):
        aligner.align(blank, "onset frame x.jpg")


def test_missing_landmark_model(tmp_path):
    with pytest.raises(UserError, match="landmark model not found"):
        FaceAligner(112, tmp_path / "lbfmodel.yaml")
