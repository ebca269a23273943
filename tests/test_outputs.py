"""Outputs checked before the work starts, and folders that appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from edge_mer.errors import UserError
from edge_mer.outputs import check_file, check_folder, staged_folder


def _one_line(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-mer: error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])


def test_a_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("the earlier run")
    with pytest.raises(RuntimeError), staged_folder(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed half way")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with staged_folder(out) as tmp:
        (tmp / "new.txt").write_text("whole")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]  # no file of the earlier run left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # and no staging folder


def test_outputs_are_checked_before_the_work(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(UserError, match="also this command's input"):
        check_file(model, inputs=[model], force=True)
    with pytest.raises(UserError, match="exists; pass --force"):
        check_file(model)
    check_file(model, force=True)
    check_file(tmp_path / "new" / "deeper" / "m.onnx")  # folders that do not exist yet are made
    with pytest.raises(UserError, match="is a folder"):
        check_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"ck")
    with pytest.raises(UserError, match="holds this command's input"):
        check_folder(run, inputs=[run / "checkpoint.pt"], force=True)
    with pytest.raises(UserError, match="not empty"):
        check_folder(run)
    check_folder(run, force=True)
    with pytest.raises(UserError, match="is a file"):
        check_folder(model)


def test_an_unwritable_place_is_refused_before_the_work(read_only_disk):
    """A read-only file system (a mount that refuses root too): the run and the benchmark refuse their JSON
    output before any frame, with one line."""
    ro = read_only_disk
    with pytest.raises(UserError, match="not writable"):
        check_file(ro / "m.onnx")
    _one_line(run_cli("run", "--demo", "--json-summary", str(ro / "s.json")), "--json-summary", "not writable")
    _one_line(run_cli("bench", "--frames", "10", "--json", str(ro / "b.json")), "--json", "not writable")


def test_synth_dataset_refuses_an_earlier_dataset_and_replaces_it_whole_with_force(tmp_path):
    out = tmp_path / "data"
    args = ("synth", "dataset", "--layout", "casme2", "--subjects", "1", "--clips-per-subject", "1", "--size",
            "96x96", "--fps", "30", "--out", str(out), "--quiet")
    run_cli(*args, check=True)
    stray = out / "CASME2_RAW_selected" / "sub99"
    stray.mkdir(parents=True)
    (stray / "img1.jpg").write_bytes(b"an orphan from an earlier, larger dataset")
    _one_line(run_cli(*args), "not empty", "--force")
    assert stray.exists()  # refused: nothing touched
    proc = run_cli(*args, "--force")
    assert proc.returncode == 0, proc.stderr
    assert not stray.exists() and (out / "SYNTHETIC_MANIFEST.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_train_refuses_to_replace_its_own_inputs_or_an_earlier_run(tmp_path):
    pytest.importorskip("torch")  # without it, train says that it needs torch first
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"the FP32 checkpoint")
    features = tmp_path / "features"
    features.mkdir()
    _one_line(run_cli("train", "--features", str(features), "--out", str(run)), "not empty", "--force")
    _one_line(run_cli("train", "--features", str(features), "--qat", str(run / "checkpoint.pt"), "--out", str(run),
                      "--force"), "holds this command's input")
    _one_line(run_cli("train", "--features", str(features), "--out", str(features), "--force"),
              "holds this command's input")
    assert (run / "checkpoint.pt").read_bytes() == b"the FP32 checkpoint"


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(full_disk):
    """The synthetic dataset and video on a disk too small for them: one line, exit 1, and no dataset, video or
    staging folder left behind (OpenCV's writers say nothing of a full disk; the kit checks what they wrote)."""
    for args in (("synth", "dataset", "--layout", "casme2", "--subjects", "1", "--clips-per-subject", "1",
                  "--out", str(full_disk / "data"), "--quiet"),
                 ("synth", "video", "--seconds", "2", "--size", "160x120", "--out", str(full_disk / "clip.avi"),
                  "--quiet")):
        proc = run_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("edge-mer: error:"), proc.stderr
        assert "Traceback" not in proc.stderr
        assert list(full_disk.iterdir()) == [], [p.name for p in full_disk.iterdir()]


def test_a_folder_output_is_never_the_working_folder(tmp_path, monkeypatch):
    """A folder output is replaced whole: '.' (or a folder above it) would take the working folder away."""
    monkeypatch.chdir(tmp_path)
    for out in (Path("."), tmp_path, tmp_path.parent):
        with pytest.raises(UserError, match="is the working folder or holds it"):
            check_folder(out, force=True)
    _one_line(run_cli("synth", "dataset", "--out", ".", "--force"), "working folder")  # run_cli runs here too
