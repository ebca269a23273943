"""Features: the strain formula, the fixed normalisation, and a resumable, parallel feature cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edge_mer.errors import UserError
from edge_mer.features.cache import FeatureSet
from edge_mer.features.prepare import FeatureConfig, prepare
from edge_mer.flow.normalise import (
    CLIP,
    DIFFERENCE_UNIT,
    TEXTURE_STD,
    difference_tensor,
    motion_tensor,
    texture_tensor,
)
from edge_mer.flow.opencv import make_flow, optical_strain


def test_strain_of_linear_fields():
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    stretch = np.stack([0.1 * xx, np.zeros_like(xx)], -1)  # e_xx = 0.1
    assert np.allclose(optical_strain(stretch), 0.1, atol=1e-5)
    shear = np.stack([0.2 * yy, np.zeros_like(yy)], -1)  # e_xy = e_yx = 0.1
    assert np.allclose(optical_strain(shear), np.sqrt(2 * 0.1 ** 2), atol=1e-5)
    rotation = np.stack([-0.1 * yy, 0.1 * xx], -1)  # rigid rotation: no strain
    assert np.allclose(optical_strain(rotation), 0.0, atol=1e-5)


def test_normalisation_is_fixed_and_scale_aware():
    flow112 = np.full((112, 112, 2), 2.0, np.float32)  # 2 px at 112 -> 1.0
    assert np.allclose(motion_tensor(flow112)[:2], 1.0)
    flow224 = np.full((224, 224, 2), 4.0, np.float32)  # the same motion on a 224 crop
    assert np.allclose(motion_tensor(flow224)[:2], 1.0)
    assert motion_tensor(np.full((16, 16, 2), 1e3, np.float32)).max() == CLIP
    t = texture_tensor(np.array([[0, 255]], np.uint8))
    assert t.shape == (1, 1, 2) and np.allclose(t, [[[-2.0, 2.0]]])
    d = difference_tensor(np.array([[100, 100, 0]], np.uint8), np.array([[108, 92, 255]], np.uint8))
    assert d.shape == (1, 1, 3) and np.allclose(d, [[[1.0, -1.0, CLIP]]])  # 8 grey levels a unit, clipped


@pytest.mark.parametrize("method", ["tvl1", "dis"])
def test_flow_methods_recover_a_shift(method):
    rng = np.random.default_rng(0)
    import cv2

    base = cv2.GaussianBlur(rng.uniform(0, 255, (96, 96)).astype(np.float32), (0, 0), 2)
    shifted = cv2.warpAffine(base, np.float32([[1, 0, 0.6], [0, 1, -0.4]]), (96, 96),
                             borderMode=cv2.BORDER_REFLECT)
    flow = make_flow(method)(base.astype(np.uint8), shifted.astype(np.uint8))
    inner = flow[16:-16, 16:-16].reshape(-1, 2)
    assert np.allclose(np.median(inner, 0), [0.6, -0.4], atol=0.1)


@pytest.fixture(scope="module")
def cache(generated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "casme2"
    run_cli("data", "prepare", "--dataset", "casme2", "--root", str(generated["casme2"]), "--out", str(out),
            "--flow", "dis", "--workers", "2", "--quiet", check=True)
    return out


def test_cache_contents(cache, generated):
    config = json.loads((cache / "config.json").read_text())
    assert config["feature"]["size"] == 112 and config["feature"]["flow"] == "dis"
    assert config["normalisation"]["flow_unit_px_at_112"] == 2.0
    rows = [json.loads(line) for line in (cache / "index.jsonl").read_text().splitlines()]
    manifest = json.loads((generated["casme2"] / "SYNTHETIC_MANIFEST.json").read_text())["clips"]
    assert len(rows) == len(manifest)
    assert all(r["status"] == "ok" for r in rows)
    fs = FeatureSet.load(cache)
    included = [c for c in manifest if c["composite"]]
    assert fs.motion.shape == (len(included), 3, 112, 112) and fs.texture.shape == (len(included), 1, 112, 112)
    assert sorted(fs.labels.tolist()) == sorted({"negative": 0, "positive": 1, "surprise": 2}[c["composite"]]
                                                for c in included)
    assert set(fs.subjects) == {f"casme2/{c['subject']}" for c in included}
    assert np.isfinite(fs.motion).all() and np.abs(fs.motion).max() <= CLIP


def test_expressions_show_in_the_motion(cache):
    fs = FeatureSet.load(cache)
    for label, rows in ((1, slice(70, 90)), (2, slice(15, 40))):  # positive: mouth; surprise: brows
        picked = fs.motion[fs.labels == label]
        if len(picked) == 0:
            continue
        v = picked[:, 1, rows, 20:92].mean()
        assert v < -0.02, f"class {label}: the face should move up there (mean v {v:.3f})"


def test_resume_reuses_finished_samples(cache, generated, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    files = sorted(copy.glob("samples/**/*.npz"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    os.remove(files[0])  # as if the run had been interrupted before this sample
    summary = prepare("casme2", generated["casme2"], copy, FeatureConfig(flow="dis"), workers=1, progress=False)
    assert summary.written == 1 and summary.reused == len(files) - 1
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files[1:])
    with pytest.raises(UserError, match="another config"):
        prepare("casme2", generated["casme2"], copy, FeatureConfig(flow="dis", size=64), progress=False)


def test_workers_do_not_change_the_features(cache, generated, tmp_path):
    prepare("casme2", generated["casme2"], tmp_path / "one", FeatureConfig(flow="dis"), workers=1, progress=False)
    a, b = FeatureSet.load(cache), FeatureSet.load(tmp_path / "one")
    assert a.ids == b.ids
    assert np.array_equal(a.motion, b.motion) and np.array_equal(a.texture, b.texture)


def _prepared_with(cache: Path, generated: dict[str, Path], out: Path, option: str, value: str
                   ) -> tuple[FeatureSet, FeatureSet]:
    """The fixture's cache and one made by ``data prepare --OPTION VALUE``, whose config records the option
    (and the fixture's, made without it, does not: caches from before it existed stay valid)."""
    run_cli("data", "prepare", "--dataset", "casme2", "--root", str(generated["casme2"]), "--out", str(out),
            "--flow", "dis", f"--{option}", value, "--workers", "1", "--quiet", check=True)
    key = option.replace("-", "_")
    assert str(json.loads((out / "config.json").read_text())["feature"][key]) == value
    assert key not in json.loads((cache / "config.json").read_text())["feature"]
    plain, variant = FeatureSet.load(cache), FeatureSet.load(out)
    assert plain.ids == variant.ids
    return plain, variant


def test_difference_texture_keeps_the_motion_and_drops_the_face(cache, generated, tmp_path):
    apex, diff = _prepared_with(cache, generated, tmp_path / "difference", "texture", "difference")
    assert np.array_equal(apex.motion, diff.motion)
    # in grey levels: the apex frame is a face everywhere; its change from the onset is small over most of it
    face = np.abs(apex.texture - apex.texture.mean(axis=(2, 3), keepdims=True)).mean() * TEXTURE_STD * 255
    change = np.abs(diff.texture).mean() * DIFFERENCE_UNIT
    assert change < 0.25 * face, (change, face)
    assert np.abs(diff.texture).max() * DIFFERENCE_UNIT > 16  # but the expression's shading is there
    with pytest.raises(UserError, match="texture 'edges'"):
        prepare("casme2", generated["casme2"], tmp_path / "x", FeatureConfig(flow="dis", texture="edges"),
                progress=False)


def test_oversampled_flow_keeps_the_texture_and_the_motion_units(cache, generated, tmp_path):
    plain, finer = _prepared_with(cache, generated, tmp_path / "finer", "oversample", "2")
    assert plain.motion.shape == finer.motion.shape
    assert np.array_equal(plain.texture, finer.texture)
    assert not np.array_equal(plain.motion, finer.motion)
    # the same motion in the same units: the finer flow moves with the S crop's, pixel for pixel
    u, w = plain.motion[:, :2].ravel(), finer.motion[:, :2].ravel()
    assert np.corrcoef(u, w)[0, 1] > 0.7
    assert 0.7 < np.abs(w).mean() / np.abs(u).mean() < 1.4


def test_the_head_s_own_motion_is_removed_and_the_expression_kept():
    """``data prepare --head removed``: a head that shifts and turns between onset and apex moves the whole
    crop by as much as a smile moves the mouth; without the head's fitted motion the forehead is still and
    the mouth corners move as the smile alone moves them."""
    from edge_mer.face import FaceAligner
    from edge_mer.flow.head import without_head
    from edge_mer.synth.aus import AUCode
    from edge_mer.synth.faces import make_subject
    from edge_mer.synth.render import FaceRenderer, Pose

    r = FaceRenderer(make_subject(0, 0), (320, 240), 60.0, gray=True)
    onset, smile = r.render({}), {AUCode(12): 1.5}
    align = FaceAligner(112).align(onset, "onset")
    dis, first = make_flow("dis"), align.crop(onset)
    alone = dis(first, align.crop(r.render(smile)))
    turned = dis(first, align.crop(r.render(smile, pose=Pose(tx=1.2, ty=-0.8, angle=1.0))))
    kept = without_head(turned)
    forehead = (slice(5, 20), slice(40, 72))
    assert np.abs(turned[forehead]).mean() > 0.2 and np.abs(kept[forehead]).mean() < 0.05
    for corner in ("mouth_corner_r", "mouth_corner_l"):
        x, y = (int(round(v)) for v in align.crop_points()[corner])
        near = (slice(y - 3, y + 4), slice(x - 3, x + 4))
        smile_px = alone[near].reshape(-1, 2).mean(0)
        assert np.linalg.norm(smile_px) > 0.4
        assert np.linalg.norm(kept[near].reshape(-1, 2).mean(0) - smile_px) < 0.15
        assert np.linalg.norm(turned[near].reshape(-1, 2).mean(0) - smile_px) > 0.5


def test_a_cache_made_without_the_head_s_motion_says_so_and_keeps_the_texture(cache, generated, tmp_path):
    kept, removed = _prepared_with(cache, generated, tmp_path / "still", "head", "removed")
    assert np.array_equal(kept.texture, removed.texture)
    # the whole crop's drift between onset and apex (the head's) is gone from every sample's flow
    drift = np.abs(kept.motion[:, :2].mean((2, 3))).mean()
    assert drift > 0.02 and np.abs(removed.motion[:, :2].mean((2, 3))).mean() < 0.3 * drift


def test_motion_apex_policy_finds_the_apex(generated, tmp_path):
    prepare("smic", generated["smic"], tmp_path / "smic", FeatureConfig(flow="dis", apex_policy="motion"),
            progress=False)
    rows = [json.loads(line) for line in (tmp_path / "smic" / "index.jsonl").read_text().splitlines()]
    truth = {c["clip"]: c["apex"] for c in
             json.loads((generated["smic"] / "SYNTHETIC_MANIFEST.json").read_text())["clips"]}
    errors = [abs(r["apex"] - truth[r["clip"]]) for r in rows]
    # tiny, noisy faces with blinks: most apexes within a frame or two of the truth
    assert np.median(errors) <= 1 and np.mean(np.array(errors) <= 2) >= 0.6


def test_apexes_found_by_an_older_method_are_found_again(generated, tmp_path, monkeypatch):
    """A feature cache keeps what it made, but a sample whose apex the motion policy chose is made again once
    that method changes (its apex may be another frame); annotated apexes are kept."""
    import edge_mer.features.prepare as prep

    prepare("casme2", generated["casme2"], tmp_path / "c2", FeatureConfig(flow="dis", apex_policy="motion"),
            progress=False)
    rows = [json.loads(line) for line in (tmp_path / "c2" / "index.jsonl").read_text().splitlines()]
    chosen = sum(r["apex_source"] == "motion" for r in rows if r["status"] == "ok")
    assert 0 < chosen < len(rows)  # the '/' apex cells, and annotated ones
    monkeypatch.setattr(prep, "APEX_BY_MOTION", prep.APEX_BY_MOTION + 1)
    again = prepare("casme2", generated["casme2"], tmp_path / "c2", FeatureConfig(flow="dis", apex_policy="motion"),
                    progress=False)
    assert again.stale == again.written == chosen and again.reused == len(rows) - chosen - again.skipped


def test_missing_frames_are_skipped_and_said(tmp_path, generated):
    import shutil

    root = tmp_path / "c2"
    shutil.copytree(generated["casme2"], root)
    victim = sorted((root / "CASME2_RAW_selected").glob("sub01/*"))[0]
    shutil.rmtree(victim)
    summary = prepare("casme2", root, tmp_path / "f", FeatureConfig(flow="dis"), progress=False)
    assert summary.skipped == 1
    problems = json.loads((tmp_path / "f" / "problems.json").read_text())["problems"]
    assert any(p["kind"] == "missing-frames" and victim.name in p["message"] for p in problems)


def test_no_face_sample_fails_alone(tmp_path, generated):
    import shutil

    import cv2

    root = tmp_path / "c2"
    shutil.copytree(generated["casme2"], root)
    clip = sorted((root / "CASME2_RAW_selected").glob("sub02/*"))[0]
    for f in clip.iterdir():
        cv2.imwrite(str(f), np.full((120, 160, 3), 90, np.uint8))
    summary = prepare("casme2", root, tmp_path / "f", FeatureConfig(flow="dis"), progress=False)
    assert summary.failed == 1 and summary.written == summary.samples - 1
    rows = [json.loads(line) for line in (tmp_path / "f" / "index.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "no face found" in failed[0]["message"]


def test_flow_between_means_of_frames_reads_the_neighbours_and_the_runtime_refuses_it(cache, generated, tmp_path):
    """``FeatureConfig.frames`` (a benchmark's experiment): the onset and the apex each the mean of the frames
    around it. The same expressions, less of the camera's noise; a neighbour's file is an input (changed, the
    sample is made again); an even count is one line, and the runtime refuses a model trained on such flow."""
    import shutil

    from edge_mer.flow.base import MotionOptions
    from edge_mer.runtime.frames import list_frames

    root = tmp_path / "casme2"
    shutil.copytree(generated["casme2"], root)
    out = tmp_path / "frames"
    made = prepare("casme2", root, out, FeatureConfig(flow="dis", frames=5), progress=False)
    assert json.loads((out / "config.json").read_text())["feature"]["frames"] == 5
    assert "frames" not in json.loads((cache / "config.json").read_text())["feature"]
    plain, means = FeatureSet.load(cache), FeatureSet.load(out)
    assert plain.ids == means.ids and np.array_equal(plain.texture.shape, means.texture.shape)
    u, w = plain.motion[:, :2].ravel(), means.motion[:, :2].ravel()
    assert np.corrcoef(u, w)[0, 1] > 0.7
    # strain, a derivative of the flow, is where frame-to-frame noise shows most
    assert np.abs(means.motion[:, 2]).mean() < 0.75 * np.abs(plain.motion[:, 2]).mean()
    # a frame beside the first sample's onset, rewritten: that sample alone is made again
    import cv2

    first = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    beside = list_frames(Path(first["frames_dir"]))[first["onset"] + 1]
    assert cv2.imwrite(str(beside), 255 - cv2.imread(str(beside)))
    again = prepare("casme2", root, out, FeatureConfig(flow="dis", frames=5), progress=False)
    assert made.written > 1 and (again.written, again.reused) == (1, made.written - 1)
    with pytest.raises(UserError, match="frames 4: an odd number"):
        prepare("casme2", root, tmp_path / "even", FeatureConfig(flow="dis", frames=4), progress=False)
    with pytest.raises(UserError, match="means of 5 frames"):
        MotionOptions.of(json.loads((out / "config.json").read_text())["feature"])


def test_flow_to_a_magnified_apex_reads_the_motion_larger_and_the_runtime_refuses_it(cache, generated, tmp_path):
    """``FeatureConfig.magnify`` (a benchmark's experiment): the apex replaced by onset + a (apex - onset), so
    a micro-expression's small motion reads about a times as large, in the same direction; a factor below 1 is
    one line, and the runtime refuses a model trained on such flow."""
    from edge_mer.flow.base import MotionOptions

    out = tmp_path / "magnified"
    prepare("casme2", generated["casme2"], out, FeatureConfig(flow="dis", magnify=3.0), progress=False)
    assert json.loads((out / "config.json").read_text())["feature"]["magnify"] == 3.0
    assert "magnify" not in json.loads((cache / "config.json").read_text())["feature"]  # older caches stay valid
    plain, magnified = FeatureSet.load(cache), FeatureSet.load(out)
    assert plain.ids == magnified.ids and np.array_equal(plain.texture, magnified.texture)
    u, w = plain.motion[:, :2].ravel(), magnified.motion[:, :2].ravel()
    assert np.corrcoef(u, w)[0, 1] > 0.7
    assert 1.5 < np.sqrt((w ** 2).mean() / (u ** 2).mean()) < 3.5
    with pytest.raises(UserError, match=r"magnify 0\.5: a factor from 1"):
        prepare("casme2", generated["casme2"], tmp_path / "less", FeatureConfig(flow="dis", magnify=0.5),
                progress=False)
    with pytest.raises(UserError, match="magnified 3 times"):
        MotionOptions.of(json.loads((out / "config.json").read_text())["feature"])
