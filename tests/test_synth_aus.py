"""The rendered movement is the requested one: optical flow recovers each AU where it acts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_mer.data.labels import COMPOSITE_CLASS
from edge_mer.errors import UserError
from edge_mer.synth.aus import (
    ACTION_UNITS,
    EMOTION_PATTERNS,
    AUCode,
    au_field,
    parse_aus,
)
from edge_mer.synth.faces import make_subject
from edge_mer.synth.render import FaceRenderer, Pose, default_face_iod
from edge_mer.synth.timeline import MICRO_MAX_S, MICRO_ONSET_MAX_S, Ranges, micro_event

REQUIRED = {1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 25, 26, 43}
SIZE = (112, 112)


def _flow_and_truth(tvl1, subject: int, code: AUCode, amplitude: float = 2.0):
    r = FaceRenderer(make_subject(subject, 0), SIZE, default_face_iod(SIZE))
    onset = cv2.cvtColor(r.render({}), cv2.COLOR_BGR2GRAY)
    apex = cv2.cvtColor(r.render({code: amplitude}), cv2.COLOR_BGR2GRAY)
    flow = tvl1.calc(onset, apex, None)
    truth = cv2.warpAffine(r.field(code), r.affine(Pose()), SIZE) * amplitude
    return flow, truth


def test_all_required_action_units_exist():
    assert set(ACTION_UNITS) >= REQUIRED


@pytest.mark.parametrize("subject", [0, 1])  # one subject per photograph
@pytest.mark.parametrize("au", sorted(REQUIRED))
def test_flow_recovers_au_direction_in_its_region_only(tvl1, au, subject):
    flow, truth = _flow_and_truth(tvl1, subject, AUCode(au))
    mag = np.linalg.norm(truth, axis=-1)
    region = mag > 0.5 * mag.max()
    f = flow[region]
    cos = (f * truth[region]).sum(-1) / (np.linalg.norm(f, axis=-1) * mag[region] + 1e-6)
    assert cos.mean() > 0.9, f"AU{au}: flow points elsewhere (mean cosine {cos.mean():.2f})"
    recovered = float(np.linalg.norm(f, axis=-1).mean())
    assert recovered > 0.4 * float(mag[region].mean()), f"AU{au}: flow too weak ({recovered:.2f} px)"
    far = mag < 0.01 * mag.max()
    still = float(np.linalg.norm(flow[far], axis=-1).mean())
    assert still < 0.08, f"AU{au}: {still:.3f} px of motion away from the AU"


def test_one_sided_au_moves_one_side(tvl1):
    flow, _ = _flow_and_truth(tvl1, 0, AUCode(14, "R"))
    r = FaceRenderer(make_subject(0, 0), SIZE, default_face_iod(SIZE))
    pts = r.region_points()
    def motion_at(p):
        x, y = int(round(p[0])), int(round(p[1]))
        return float(np.linalg.norm(flow[y - 2:y + 3, x - 2:x + 3], axis=-1).mean())
    right, left = motion_at(pts["mouth_corner_r"]), motion_at(pts["mouth_corner_l"])
    assert right > 0.5 and left < 0.15 * right


def test_field_peak_is_the_amplitude():
    s = make_subject(0, 0)
    for au in REQUIRED:
        field = au_field(AUCode(au), s.points, s.image.shape[:2])
        assert np.isclose(np.linalg.norm(field, axis=-1).max(), 1.0, atol=1e-5)


def test_parse_aus():
    assert [str(c) for c in parse_aus("4+L10")] == ["4", "L10"]
    assert parse_aus("R14") == [AUCode(14, "R")]
    with pytest.raises(UserError):
        parse_aus("99")


def test_every_emotion_pattern_parses_and_maps_as_megc2019():
    for layout in EMOTION_PATTERNS.values():
        for patterns in layout.values():
            for p in patterns:
                assert parse_aus(p)
    assert {k for k, v in COMPOSITE_CLASS["casme2"].items() if v == "negative"} == {"disgust", "repression"}
    assert "others" not in COMPOSITE_CLASS["casme2"] and "other" not in COMPOSITE_CLASS["samm"]
    assert set(EMOTION_PATTERNS["casme2"]) == {"happiness", "disgust", "repression", "surprise", "others"}
    # positive needs AU12; surprise needs AU1+AU2
    assert all("12" in p for p in EMOTION_PATTERNS["composite"]["positive"])
    assert all(p.startswith("1+2") for p in EMOTION_PATTERNS["composite"]["surprise"])


@pytest.mark.parametrize("fps", [30.0, 100.0, 200.0])
def test_micro_expression_timing_and_size(fps):
    rng = np.random.default_rng(0)
    wide = Ranges(micro_seconds=(0.0, 1.0))  # asks for more than a micro-expression may be
    for _ in range(300):
        ev = micro_event(rng, fps, 10, [AUCode(12)], "positive", wide)
        assert (ev.offset - ev.onset) / fps <= MICRO_MAX_S + 0.5 / fps
        assert (ev.apex - ev.onset) / fps <= MICRO_ONSET_MAX_S + 1 / fps
        assert ev.onset < ev.apex < ev.offset
        assert 0.5 <= ev.amplitude <= 2.0
        assert ev.intensity(ev.onset) == 0 and ev.intensity(ev.apex) == pytest.approx(1.0)
