"""Fault injection: every command that writes a result, killed (SIGKILL, no chance to clean up) at points drawn
from a seed, then run again as a user would.

After a kill, the output is either as it was (absent, or the earlier result when ``--force`` was replacing it)
or the complete new result; the rerun then ends in the complete result, or in a clear refusal (one
``edge-mer: error:`` line) with a complete result in place. Never a silently wrong one: each result is checked
by reading it the way the next command does.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

pytest.importorskip("cv2")

SEEDS = (0, 1, 2, 3)  # even: killed while --force replaces an earlier result; odd: killed on a fresh output


@dataclass
class Writer:
    """A command that writes ``out``, and how to tell that ``out`` is a complete, usable result."""

    argv: Callable[[Path], list[str]]
    complete: Callable[[Path], None]  # raises AssertionError (or the reader's error) when it is not
    force: bool = True  # the command has --force (else it replaces its output as a matter of course)


def kill_point(took: float, seed: int) -> float:
    """Seconds into a run that took ``took``: seeds 0 and 1 anywhere from a quarter of it to just past its end,
    seeds 2 and 3 in its last tenth or just after, where the results are written."""
    u = random.Random(seed).random()
    return took * (0.25 + 0.8 * u if seed < 2 else 0.9 + 0.15 * u)


def _kill_after(argv: list[str], seconds: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edge_mer", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _present(out: Path) -> bool:
    return out.exists() and (out.is_file() or any(out.iterdir()))


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
        for side in src.parent.glob(src.name + ".json"):  # an ONNX file's sidecar
            shutil.copy2(side, dst.parent / side.name.replace(src.name, dst.name))


def inject(tmp_path: Path, writer: Writer, name: str) -> dict[str, int]:
    """The reference run (its time sets the kill points), then one killed run per seed and the reruns."""
    ref = tmp_path / "reference" / name
    ref.parent.mkdir()
    start = time.monotonic()
    run_cli(*writer.argv(ref), check=True)
    took = time.monotonic() - start
    writer.complete(ref)
    seen = {"kept": 0, "absent": 0, "complete": 0, "refused": 0}
    for seed in SEEDS:
        at = kill_point(took, seed)
        out = tmp_path / f"seed{seed}" / name
        out.parent.mkdir()
        earlier = seed % 2 == 0 and writer.force
        if earlier:
            _copy(ref, out)
            before = sorted(p.name for p in out.parent.iterdir())
        _kill_after(writer.argv(out) + (["--force"] if earlier else []), at)
        if earlier:
            writer.complete(out)  # the earlier result, or the complete new one
            seen["kept"] += 1
            assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == before
            continue
        if _present(out):
            writer.complete(out)
            seen["complete"] += 1
        else:
            seen["absent"] += 1
        proc = run_cli(*writer.argv(out))  # the user runs it again, as it was
        if proc.returncode == 0:
            writer.complete(out)
        else:
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("edge-mer: error:"), proc.stderr
            assert "exists" in lines[0] or "not empty" in lines[0], lines[0]
            writer.complete(out)
            seen["refused"] += 1
    return seen


# -- the writers -----------------------------------------------------------------------------------------------

def _dataset_complete(out: Path) -> None:
    from edge_mer.data.loaders import load

    index = load("casme2", out)
    assert len(index.samples) == 4 and all(s.complete for s in index.samples), index.problems


DATASET = Writer(lambda out: ["synth", "dataset", "--layout", "casme2", "--subjects", "2", "--clips-per-subject", "2",
                              "--size", "160x120", "--fps", "60", "--out", str(out), "--quiet"], _dataset_complete)


def _video_complete(out: Path) -> None:
    from edge_mer.runtime.sources import open_path

    with open_path(out) as src:
        while src.read()[0]:
            pass
        assert src.frames_read == 240 and src.early_end() is None


VIDEO = Writer(lambda out: ["synth", "video", "--seconds", "8", "--size", "320x240", "--out", str(out), "--truth",
                            str(out.with_suffix(".csv")), "--quiet"], _video_complete, force=False)


def _sheet_complete(out: Path) -> None:
    import cv2

    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 100


FACES = Writer(lambda out: ["synth", "faces", "--subjects", "6", "--out", str(out)], _sheet_complete, force=False)


def _summary_complete(out: Path) -> None:
    summary = json.loads(out.read_text())
    assert summary["frames"] == 150 and summary["stopped_by"] is None


RUN = Writer(lambda out: ["run", "--demo", "--demo-seconds", "5", "--no-realtime", "--quiet", "--json-summary",
                          str(out)], _summary_complete, force=False)


def test_synth_and_run_outputs_survive_a_kill(tmp_path):
    for name, writer in (("data", DATASET), ("clip.avi", VIDEO), ("sheet.png", FACES), ("summary.json", RUN)):
        (tmp_path / name).mkdir()
        print(name, inject(tmp_path / name, writer, name))


def test_prepare_resumes_after_a_kill_and_never_keeps_a_broken_sample(generated, tmp_path):
    """The feature cache is resumed in place: after a kill it loads whole, or is refused with one line naming
    what to rerun; the rerun completes it."""
    from edge_mer.errors import UserError
    from edge_mer.features.cache import FeatureSet

    root = generated["casme2"]
    argv = ["data", "prepare", "--dataset", "casme2", "--root", str(root), "--flow", "dis", "--size", "64",
            "--workers", "2", "--quiet"]
    ref = tmp_path / "reference"
    start = time.monotonic()
    run_cli(*argv, "--out", str(ref), check=True)
    took = time.monotonic() - start
    expected = len(FeatureSet.load(ref))
    for seed in SEEDS:
        out = tmp_path / f"seed{seed}"
        _kill_after([*argv, "--out", str(out)], kill_point(took, seed))
        if (out / "index.jsonl").exists():
            try:
                assert len(FeatureSet.load(out)) == expected
            except UserError as exc:
                assert "rerun edge-mer data prepare" in str(exc) and "\n" not in str(exc)
        proc = run_cli(*argv, "--out", str(out), "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert len(FeatureSet.load(out)) == expected
        assert summary["failed"] == 0 and summary["written"] + summary["reused"] >= expected


TINY = ("--model", "mmt_test", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet")


def _run_complete(out: Path) -> None:
    from edge_mer.model.checkpoint import load_checkpoint

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"uf1", "uar"} <= set(metrics)
    assert len((out / "predictions.csv").read_text().splitlines()) == metrics["samples"] + 1
    load_checkpoint(out / "checkpoint.pt")


def _qat_complete(out: Path) -> None:
    from edge_mer.model.checkpoint import load_checkpoint

    report = json.loads((out / "qat.json").read_text())
    assert Path(report["checkpoint"]).name == "checkpoint.pt" and report["quantizers"]
    assert load_checkpoint(out / "checkpoint.pt")[1]["quant"]


def _artifact_complete(out: Path) -> None:
    from edge_mer.runtime.artifact import load_artifact
    from edge_mer.runtime.backends.onnxruntime import make_session

    make_session(load_artifact(out).path)


def _set_complete(out: Path) -> None:
    from edge_mer.quant.calibset import load_set

    assert len(load_set(out)) >= 32


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """DIS features of a synthetic composite large enough for a calibration set (50 samples)."""
    from edge_mer.data.synthetic import DatasetConfig, write_dataset

    d = tmp_path_factory.mktemp("faults-data")
    write_dataset(DatasetConfig(layout="megc2019", subjects=10, clips_per_subject=5, size=(160, 120), fps=40,
                                seed=11), d / "data", progress=False)
    run_cli("data", "prepare", "--dataset", "megc2019", "--root", str(d / "data"), "--out", str(d / "features"),
            "--flow", "dis", "--quiet", check=True)
    return d / "features"


def test_train_export_and_calibration_survive_a_kill(features, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    f = str(features)
    base = tmp_path / "base"
    run_cli("train", "--features", f, "--protocol", "split", "--out", str(base), *TINY, check=True)
    ck = base / "checkpoint.pt"
    run_cli("export", "--checkpoint", str(ck), "--out", str(tmp_path / "base.onnx"), check=True)
    run_cli("calibrate", "build-set", "--features", f, "--n", "48", "--out", str(tmp_path / "base.npz"), check=True)
    writers = {
        "run": Writer(lambda out: ["train", "--features", f, "--protocol", "split", "--out", str(out), *TINY],
                      _run_complete),
        "model.onnx": Writer(lambda out: ["export", "--checkpoint", str(ck), "--out", str(out)], _artifact_complete),
        "calib.npz": Writer(lambda out: ["calibrate", "build-set", "--features", f, "--n", "48", "--out", str(out)],
                            _set_complete),
        "model.int8.onnx": Writer(lambda out: ["calibrate", "--onnx", str(tmp_path / "base.onnx"), "--set",
                                               str(tmp_path / "base.npz"), "--out", str(out)], _artifact_complete),
        "qat": Writer(lambda out: ["train", "--features", f, "--qat", str(ck), "--calibration",
                                   str(tmp_path / "base.npz"), "--epochs", "1", "--threads", "1", "--quiet", "--out",
                                   str(out)], _qat_complete),
    }
    for name, writer in writers.items():
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        print(name, inject(d, writer, name))
