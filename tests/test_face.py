"""Face alignment: computed on the onset frame, eyes level and at the canonical place in the crop.

Both detectors are checked: the shipped BlazeFace + FaceMesh networks (the default) and the Haar
cascades that remain for an OpenCV without DNN.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import run_cli

from edge_mer.errors import UserError
from edge_mer.face import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAligner, NoFaceError
from edge_mer.face.align import resolve_detector
from edge_mer.face.mesh import FaceModels, choose
from edge_mer.synth.faces import load_photo, make_subject, place_photo
from edge_mer.synth.render import FaceRenderer, Pose


@pytest.fixture(scope="module", params=["mesh", "haar"])
def aligner(request):
    return FaceAligner(112, detector=request.param)


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
    if a.method == "mesh":  # landmark eyes: +-3.5 px (9 % of the eye distance) of the canonical places, of which
        # up to 2 px is where a person put the eye centre on the photograph and where the mesh puts it (the mean of
        # the corners and lids): 0.05 of the eye distance on the astronaut, 0.035 on Grace Hopper
        assert abs(right[1] - left[1]) < 3.5
        assert abs(right[0] - (56 - half)) < 3.5 and abs(left[0] - (56 + half)) < 3.5
        assert abs((right[1] + left[1]) / 2 - target_y) < 3.5
    elif a.method == "eyes":
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
    assert methods.count("mesh" if aligner.detector == "mesh" else "eyes") >= (12 if aligner.detector == "mesh" else 9)


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
    searched = r"BlazeFace over 1 window\(s\) of the 320 x 240 frame, faces from 40 px" if aligner.detector == "mesh" \
        else r"Haar cascade, faces from 28 px in the 320 x 240 frame"
    with pytest.raises(NoFaceError, match=r"no face found in onset frame x\.jpg \(" + searched + r"\)"):
        aligner.align(blank, "onset frame x.jpg")


def test_missing_landmark_model(tmp_path):
    with pytest.raises(UserError, match="landmark model not found"):
        FaceAligner(112, tmp_path / "lbfmodel.yaml")


def _photo(name):
    return load_photo(name)


def _placed(photo, frame_size, face_px, angle, at, brightness=1.0):
    frame, points = place_photo(photo, frame_size, face_px, angle, at, brightness)
    return frame, {k: tuple(v) for k, v in points.items()}


@pytest.fixture(scope="module")
def models():
    return FaceModels()


@pytest.mark.parametrize("name", ["astronaut", "hopper"])
@pytest.mark.parametrize("angle", [-30.0, 0.0, 30.0])
@pytest.mark.parametrize("face_px", [45, 160])
def test_mesh_finds_real_faces_small_turned_and_dim(models, name, angle, face_px):
    """A real photograph, as small as 45 px or turned by 30 degrees, in dim light: found, eyes within 10 % of the
    eye distance of the hand-annotated ones, and every named point within 25 %."""
    photo = _photo(name)
    frame, truth = _placed(photo, (640, 480), face_px, angle, (400, 200), brightness=0.5)
    faces = models.detect(frame)
    assert faces, "no face found"
    face = models.fit(frame, choose(faces, frame.shape))
    assert face is not None
    iod = float(np.hypot(*np.subtract(truth["eye_l"], truth["eye_r"])))
    right, left = face.eyes
    assert np.hypot(*(right - truth["eye_r"])) < 0.1 * iod and np.hypot(*(left - truth["eye_l"])) < 0.1 * iod
    named = face.points()
    assert set(truth) <= set(named)  # every annotated point has its landmark
    worst = max(float(np.hypot(*np.subtract(named[k], truth[k]))) for k in truth)
    assert worst < 0.25 * iod


def test_a_small_face_in_a_large_frame_is_found_by_the_tiles(models):
    photo = _photo("hopper")
    frame, truth = _placed(photo, (1280, 720), 42, 0.0, (1100, 150))
    assert len(models.windows(720, 1280)) > 1  # a 42 px face in 1280 x 720 needs the tiles
    faces = models.detect(frame)
    assert faces and np.hypot(*(faces[0].keypoints[0] - truth["eye_r"])) < 8


def test_the_followed_face_stays_the_same_person():
    """Two faces: the aligner starts on the larger, and a look for the face again keeps the one it had, even
    when the other has grown larger since."""
    photo = _photo("astronaut")
    other = _photo("hopper")
    frame, truth = _placed(photo, (640, 480), 150, 0.0, (180, 240))
    small, _ = _placed(other, (640, 480), 90, 0.0, (480, 240))
    frame[:, 380:] = small[:, 380:]
    aligner = FaceAligner(112, detector="mesh")
    first = aligner.align(frame)
    assert first.eyes is not None and abs(first.eyes[0][0] - truth["eye_r"][0]) < 8  # the larger face
    later, _ = _placed(other, (640, 480), 200, 0.0, (480, 240))
    swapped = frame.copy()
    swapped[:, 380:] = later[:, 380:]
    again = aligner.align(swapped, near=first)
    assert again.eyes is not None and abs(again.eyes[0][0] - truth["eye_r"][0]) < 8
    assert aligner.align(swapped).eyes[0][0] > 380  # without ``near`` the now larger face wins


def test_following_a_face_needs_no_detector_and_keeps_up_with_the_head(models):
    photo = _photo("hopper")
    aligner = FaceAligner(112, detector="mesh")
    frame, _ = _placed(photo, (640, 480), 150, 0.0, (300, 240))
    a = aligner.align(frame)
    moved, truth = _placed(photo, (640, 480), 150, 8.0, (318, 236))
    followed = aligner.follow(moved, a)
    assert followed is not None and followed.method == "mesh"
    iod = float(np.hypot(*np.subtract(truth["eye_l"], truth["eye_r"])))
    assert np.hypot(*np.subtract(followed.eyes[0], truth["eye_r"])) < 0.1 * iod
    blank = np.full((480, 640, 3), 90, np.uint8)
    assert aligner.follow(blank, a) is None  # lost: the caller looks for it with the detector


def test_the_alignment_carries_named_landmarks_in_crop_pixels():
    photo = _photo("astronaut")
    a = FaceAligner(128, detector="mesh").align(photo.image)
    crop = a.crop_points()
    assert crop is not None and set(photo.points) <= set(crop)
    assert crop["brow_inner_r"][1] < crop["eye_r"][1] < crop["nose_tip"][1] < crop["upper_lip"][1] < crop["chin"][1]
    assert crop["mouth_corner_r"][0] < crop["upper_lip"][0] < crop["mouth_corner_l"][0]
    assert json.dumps(a.to_dict())  # the summary and events can carry it


def test_haar_is_used_only_when_asked_or_without_dnn():
    assert resolve_detector("auto") == "mesh"
    assert FaceAligner(112, detector="haar").detector == "haar"
    with pytest.raises(UserError, match="unknown face detector 'yolo'"):
        FaceAligner(112, detector="yolo")


def test_face_command_on_an_image_draws_and_reports(tmp_path):
    photo = _photo("hopper")
    frame, truth = _placed(photo, (640, 480), 120, 10.0, (250, 220))
    image, overlay = tmp_path / "in.png", tmp_path / "overlay.png"
    cv2.imwrite(str(image), frame)
    proc = run_cli("face", "--image", str(image), "--out", str(overlay), "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["detector"] == "mesh" and len(report["faces"]) == 1 and report["faces"][0]["followed"]
    a = report["alignment"]
    assert a["method"] == "mesh" and set(photo.points) <= set(a["points"])
    iod = float(np.hypot(*np.subtract(truth["eye_l"], truth["eye_r"])))
    assert np.hypot(*np.subtract(a["eyes"][0], truth["eye_r"])) < 0.1 * iod
    shown = cv2.imread(str(overlay))
    assert shown.shape == frame.shape and np.abs(shown.astype(int) - frame).sum() > 0  # something was drawn
    x, y, w, h = a["box"]
    assert x < truth["nose_tip"][0] < x + w and y < truth["nose_tip"][1] < y + h


def test_face_command_follows_a_face_through_a_video(tmp_path):
    video, overlay = tmp_path / "clip.mp4", tmp_path / "overlay.mp4"
    run_cli("synth", "video", "--seconds", "3", "--fps", "20", "--out", str(video), "--truth",
            str(tmp_path / "clip.csv"), "--seed", "5", check=True)
    proc = run_cli("face", "--video", str(video), "--out", str(overlay), "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["frames"] == 60 and report["with_face"] == 60
    assert report["detections"] == 1 and report["lost"] == 0  # found once, then followed by its landmarks
    boxes = np.array([r["box"] for r in report["per_frame"]], float)
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() < 0.1 * boxes[0, 2]  # the box does not jump
    cap = cv2.VideoCapture(str(overlay))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    cap.release()


def test_doctor_names_the_face_detector():
    report = json.loads(run_cli("doctor", "--json", "--no-torch", check=True).stdout)
    assert report["face"]["detector"] == "mesh" and report["face"]["engine"] in ("opencv", "onnxruntime")
    assert any(c["name"] == "face detector" and c["ok"] for c in report["checks"])


def _two_faces():
    """The astronaut (150 px, left) and Grace Hopper (90 px, right) in one frame, and where their eyes are."""
    frame, left = _placed(_photo("astronaut"), (640, 480), 150, 0.0, (180, 240))
    small, right = _placed(_photo("hopper"), (640, 480), 90, 0.0, (480, 240))
    frame[:, 380:] = small[:, 380:]
    return frame, left, right


@pytest.mark.parametrize(("choice", "side"), [("largest", "left"), ("left", "left"), ("right", "right"),
                                              ("470,250", "right"), ("central", "left")])
def test_face_chooses_which_face_to_follow(tmp_path, choice, side):
    frame, left, right = _two_faces()
    image = tmp_path / "two.png"
    cv2.imwrite(str(image), frame)
    report = json.loads(run_cli("face", "--image", str(image), "--face", choice, "--json", check=True).stdout)
    assert len(report["faces"]) == 2 and sum(f["followed"] for f in report["faces"]) == 1
    truth = left if side == "left" else right
    assert np.hypot(*np.subtract(report["alignment"]["eyes"][0], truth["eye_r"])) < 8


def test_a_bad_face_choice_is_refused_by_the_parser():
    proc = run_cli("spot", "--video", "x.mp4", "--face", "top")
    assert proc.returncode == 2 and "--face: 'top'" in proc.stderr and proc.stderr.count("\n") == 1


def _crop_eye(track, truth) -> np.ndarray:
    """Where the face's right eye lies in the crop (crop pixels)."""
    m = track.alignment.matrix
    return m[:, :2] @ np.array(truth["eye_r"]) + m[:, 2]


@pytest.mark.parametrize("follow", ["smooth", "step"])
def test_the_crop_follows_a_drifting_head_smoothly_while_idle_and_holds_while_a_spot_is_open(follow):
    """A head that drifts 30 px in 3 s: followed smoothly, the crop stays on it without a jump; in steps, it
    lags behind by up to the tolerance. While a spot is open the transform does not move at all."""
    from edge_mer.spot.signal import FaceTrack

    photo = _photo("hopper")
    track = FaceTrack(128, 30.0, FaceAligner(128, detector="mesh"), follow=follow)
    eyes = []
    for i in range(91):
        frame, truth = _placed(photo, (640, 480), 150, 0.0, (300 + i / 3, 240))
        assert track.update(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), i, idle=True)
        eyes.append(_crop_eye(track, truth))
    drift = [float(np.hypot(*(e - eyes[0]))) for e in eyes]  # how far the eye wandered in the crop
    if follow == "smooth":
        assert track.alignments == 1 and track.nudges >= 25  # found once, then followed in small steps
        assert max(drift) < 4.0, drift  # the eye stays within a few crop pixels of where it was (the lag)
    else:
        assert track.nudges == 0 and max(drift) > 8.0  # the fixed crop falls behind until a jump
    held = track.alignment.matrix.copy()
    for i in range(91, 121):  # a spot is open: the head drifts on, the crop stays
        frame, _ = _placed(photo, (640, 480), 150, 0.0, (330 + (i - 90) / 3, 240))
        track.update(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), i, idle=False)
    assert np.array_equal(track.alignment.matrix, held)
