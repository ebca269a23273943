"""Each person's motion brought to one strength (MMTConfig.person_rms): the gains, and every place that feeds such
a model (training and its held-out subjects, evaluation, calibration sets, the device loop)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

from edge_mer.flow.person import MAX_GAIN, PersonLevel, flow_rms, scaled_by_person


def _expressions(seed: int, n: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, size=(n, 3, 8, 8)).astype(np.float32)


def test_subjects_who_move_half_or_twice_as_strongly_give_one_size_and_keep_their_order():
    base = _expressions(0)
    motion = np.concatenate([base, 0.5 * base, 2.0 * base])
    subjects = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    out = scaled_by_person(motion, subjects, 0.05, others_only=False)
    np.testing.assert_allclose(out[5:10], out[:5], rtol=1e-5)
    np.testing.assert_allclose(out[10:], out[:5], rtol=1e-5)
    assert np.median(flow_rms(out[:5])) == pytest.approx(0.05)
    assert (np.argsort(flow_rms(out[:5])) == np.argsort(flow_rms(base))).all()  # stronger stays stronger
    assert out.dtype == np.float32


def test_a_scored_sample_takes_its_gain_from_the_subjects_other_samples_only():
    motion = _expressions(1)
    motion[0] *= 10  # one strong expression among weaker ones
    levels = flow_rms(motion)
    scored = scaled_by_person(motion, ["a"] * 5, 0.05, others_only=True)
    for i in range(5):
        others = np.delete(levels, i)
        np.testing.assert_allclose(scored[i], motion[i] * 0.05 / np.median(others), rtol=1e-5)
    # a subject seen once has no other expression: scored as it comes, trained on at the target
    single = motion[:1]
    np.testing.assert_array_equal(scaled_by_person(single, ["z"], 0.05, others_only=True), single)
    assert flow_rms(scaled_by_person(single, ["z"], 0.05, others_only=False))[0] == pytest.approx(0.05)


def test_a_person_seen_only_still_is_lifted_at_most_four_times():
    still = _expressions(2) * 1e-4
    out = scaled_by_person(still, ["s"] * 5, 0.05, others_only=False)
    np.testing.assert_allclose(out, still * MAX_GAIN, rtol=1e-6)


def test_the_device_scales_each_expression_by_the_ones_before_it_and_forgets_on_reset():
    m = _expressions(3, 4)
    person = PersonLevel(0.05, keep=2)
    np.testing.assert_array_equal(person(m[0]), m[0])  # nobody known yet: as it comes
    np.testing.assert_allclose(person(m[1][None])[0], m[1] * 0.05 / flow_rms(m[0]), rtol=1e-5)
    np.testing.assert_allclose(person(m[2]), m[2] * 0.05 / np.median(flow_rms(m[:2])), rtol=1e-5)
    np.testing.assert_allclose(person(m[3]), m[3] * 0.05 / np.median(flow_rms(m[1:3])), rtol=1e-5)  # keeps 2
    person.reset()
    assert person.gain == 1.0


@pytest.fixture(scope="module")
def person_model(composite_features, tmp_path_factory):
    """An STSTNet trained (LOSO, then on everything) reading each person's motion at RMS 0.05, and its ONNX file."""
    pytest.importorskip("torch")  # training and export: the train extra
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("person") / "run"
    run_cli("train", "--features", str(composite_features), "--protocol", "megc2019", "--model", "ststnet",
            "--set", "person_rms=0.05", "--epochs", "3", "--batch-size", "8", "--threads", "1", "--quiet",
            "--out", str(out), check=True)
    run_cli("export", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(out / "person.onnx"), check=True)
    return out


def test_evaluation_reads_each_subject_as_the_model_was_trained_to(person_model, composite_features):
    """eval gives the checkpoint each sample scaled by its subject's other samples: the same answers as the model
    asked directly about inputs so scaled, which differ from the answers on the motion as it comes."""
    import torch

    from edge_mer.eval.score import evaluate
    from edge_mer.features.cache import FeatureSet
    from edge_mer.model.checkpoint import load_checkpoint

    model, ck = load_checkpoint(person_model / "checkpoint.pt")
    assert ck["config"]["person_rms"] == 0.05
    fs = FeatureSet.load(composite_features)
    result = evaluate(person_model / "checkpoint.pt", composite_features, backend="torch")
    with torch.no_grad():
        scaled = model(torch.from_numpy(scaled_by_person(fs.motion, fs.subjects, 0.05, True)), torch.from_numpy(
            fs.texture)).argmax(1).numpy()
        plain = model(torch.from_numpy(fs.motion), torch.from_numpy(fs.texture)).argmax(1).numpy()
    assert result["accuracy"] == pytest.approx(float(np.mean(scaled == fs.labels)))
    gains = flow_rms(scaled_by_person(fs.motion, fs.subjects, 0.05, True)) / flow_rms(fs.motion)
    assert gains.max() < 0.5 and (plain != scaled).any()  # these flows are strong: scaled well down, read otherwise


def test_the_device_loop_gives_such_a_model_each_person_at_one_strength(person_model, tmp_path):
    """The run says on its first line that it scales each person's motion; a recognizer asked about the same
    expression twice answers the second time on the motion scaled by the first's gain."""
    from edge_mer.flow.person import person_rms
    from edge_mer.flow.stage import make_stage
    from edge_mer.runtime.backends import open_backend
    from edge_mer.runtime.loop import Recognizer
    from edge_mer.runtime.session import model_meta
    from edge_mer.runtime.timing import StageTimer

    model = tmp_path / "person.onnx"
    for f in ("person.onnx", "person.onnx.json"):
        shutil.copy(person_model / f, tmp_path / f)
    proc = run_cli("run", "--demo", "--demo-seconds", "24", "--no-realtime", "--model", str(model), "--quiet",
                   "--events", str(tmp_path / "events.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "each person's motion brought to RMS 0.05" in proc.stderr.splitlines()[0]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(events) >= 2 and events[0]["person_gain"] == 1.0  # nobody known yet
    assert all(0 < e["person_gain"] <= MAX_GAIN for e in events) and len({e["person_gain"] for e in events}) > 1
    be = open_backend("onnxruntime", model, threads=1)
    assert person_rms(model_meta(be)) == 0.05
    stage = make_stage("opencv-dis", be.size)
    recognizer = Recognizer(be, stage, 0.05)
    rng = np.random.default_rng(0)
    onset = rng.integers(0, 255, (160, 160), np.uint8)
    apex = np.roll(onset, 1, axis=1)
    matrix = np.float32([[1, 0, 10], [0, 1, 10]])
    motion, texture = stage(onset, apex, matrix)
    first, second = (recognizer(onset, apex, matrix, StageTimer()) for _ in range(2))
    np.testing.assert_allclose(first, be.infer(motion, texture)[0], atol=1e-6)
    gain = 0.05 / max(float(flow_rms(motion)), 0.05 / MAX_GAIN)
    np.testing.assert_allclose(second, be.infer(motion * np.float32(gain), texture)[0], atol=1e-6)
    assert not np.allclose(first, second)
