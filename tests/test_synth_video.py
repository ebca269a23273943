"""Long videos for spotting: a real video file, truth at known frames, reproducible bytes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, tree_digest

from edge_mer.synth.faces import make_subject
from edge_mer.synth.render import FaceRenderer, default_face_iod
from edge_mer.synth.timeline import MICRO_MAX_S

FAST = ("--size", "160x120", "--quiet")


def _video(tmp: Path, name: str, *extra: str) -> dict:
    proc = run_cli("synth", "video", "--out", str(tmp / name), "--json", *FAST, *extra, check=True)
    return json.loads(proc.stdout)


def test_mp4_with_truth(tmp_path):
    summary = _video(tmp_path, "clip.mp4", "--seconds", "30", "--fps", "30")
    cap = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 900 == summary["frames"]
    ok, frame = cap.read()
    assert ok and frame.shape == (120, 160, 3)
    cap.release()
    truth = pd.read_csv(tmp_path / "clip.csv")  # default: next to the video
    assert list(truth.columns) == ["onset", "apex", "offset", "type", "label", "aus", "amplitude"]
    assert set(truth["type"]) <= {"micro", "macro", "blink"}
    assert (truth["type"] == "micro").sum() >= 2
    assert truth["offset"].max() < 900 and truth["onset"].min() >= 0
    assert ((truth["onset"] < truth["apex"]) & (truth["apex"] < truth["offset"])).all()
    # events never overlap
    assert (truth["onset"].to_numpy()[1:] > truth["offset"].to_numpy()[:-1]).all()
    micro = truth[truth["type"] == "micro"]
    assert ((micro["offset"] - micro["onset"]) / 30 <= MICRO_MAX_S + 1 / 60).all()
    assert set(micro["label"]) <= {"negative", "positive", "surprise"}
    assert truth[truth["type"] == "blink"]["aus"].astype(str).eq("43").all()
    macro = truth[truth["type"] == "macro"]
    assert ((macro["offset"] - macro["onset"]) / 30 > MICRO_MAX_S).all()


def test_expressions_move_the_face_and_rest_does_not(tmp_path, tvl1):
    _video(tmp_path, "frames", "--seconds", "20", "--fps", "30", "--no-head-motion", "--no-noise",
           "--no-flicker", "--size", "112x112")
    truth = pd.read_csv(tmp_path / "frames" / "truth.csv")
    frames = sorted((tmp_path / "frames").glob("frame_*.jpg"))
    assert len(frames) == 600

    def motion(a: int, b: int) -> float:
        ga = cv2.imread(str(frames[a]), cv2.IMREAD_GRAYSCALE)
        gb = cv2.imread(str(frames[b]), cv2.IMREAD_GRAYSCALE)
        return float(np.percentile(np.linalg.norm(tvl1.calc(ga, gb, None), axis=-1), 99))

    busy = [motion(r.onset, r.apex) for r in truth.itertuples() if r.type in ("micro", "macro")]
    events = [(r.onset, r.offset) for r in truth.itertuples()]
    quiet = [t for t in range(0, 598, 7) if all(t + 1 < s or t > e for s, e in events)][:8]
    rest = [motion(t, t + 1) for t in quiet]
    assert busy and rest
    assert np.median(busy) > 4 * max(np.median(rest), 0.05)


def test_same_seed_same_bytes(tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        (tmp_path / name).mkdir()
        _video(tmp_path / name, "v.mp4", "--seconds", "4", "--seed", seed)
    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert a["v.mp4"] != c["v.mp4"]


@pytest.mark.parametrize("style", ["casme2lv", "sammlv"])
def test_truth_sheets(tmp_path, style):
    _video(tmp_path, "lv.avi", "--seconds", "20", "--truth-sheet", str(tmp_path / "lv.xlsx"),
           "--truth-style", style)
    truth = pd.read_csv(tmp_path / "lv.csv")
    expressions = truth[truth["type"] != "blink"]
    if style == "casme2lv":
        sheet = pd.read_excel(tmp_path / "lv.xlsx", header=None)
        onsets, kinds = sheet[2], sheet[7]
        assert set(kinds) <= {"micro-expression", "macro-expression"}
    else:
        sheet = pd.read_excel(tmp_path / "lv.xlsx")
        onsets = sheet["Onset"]
        assert set(sheet["Type"]) <= {"Micro - 1/2", "Macro"}
    # one row per expression, frames numbered from 1, no blinks
    assert list(onsets) == list(expressions["onset"] + 1)


def test_gray_video_and_render_speed_report(tmp_path):
    summary = _video(tmp_path, "g.avi", "--seconds", "2", "--gray", "--no-macro", "--no-blinks")
    assert summary["render_fps"] > 0
    cap = cv2.VideoCapture(str(tmp_path / "g.avi"))
    ok, frame = cap.read()
    assert ok and np.allclose(frame[..., 0], frame[..., 1], atol=2)
    truth = pd.read_csv(tmp_path / "g.csv")
    assert set(truth["type"]) <= {"micro"}


def test_renderer_head_pose_moves_the_face():
    from edge_mer.synth.render import Pose

    r = FaceRenderer(make_subject(0, 0), (160, 120), default_face_iod((160, 120)))
    moved = r.region_points(Pose(tx=3.0, ty=-2.0))
    still = r.region_points()
    assert np.allclose(moved["nose_tip"] - still["nose_tip"], [3.0, -2.0])
