"""The feature cache follows its inputs: an apex corrected in the sheet, a truncated file or a killed run are
recomputed on the next run, a broken cache is named in one line, and workers end with their parent."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from openpyxl import load_workbook

from edge_mer.errors import UserError
from edge_mer.features.cache import FeatureSet, read_sample
from edge_mer.features.prepare import FeatureConfig, prepare

CFG = FeatureConfig(size=64, flow="dis")
PROC = Path("/proc/self/stat").exists()


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


@pytest.fixture
def casme2(generated, tmp_path) -> tuple[Path, Path]:
    """A copy of the small CASME II (its sheet may be edited) and its prepared cache."""
    root = tmp_path / "CASME2"
    shutil.copytree(generated["casme2"], root)
    out = tmp_path / "features"
    summary = prepare("casme2", root, out, CFG, progress=False)
    assert summary.written == summary.samples and summary.stale == 0
    return root, out


def test_corrected_apex_is_recomputed(casme2):
    root, out = casme2
    before = {r["id"]: r for r in _rows(out)}
    motion_before = {i: m for i, m in zip(FeatureSet.load(out).ids, FeatureSet.load(out).motion)}
    sheet = next(root.glob("CASME2-coding-*.xlsx"))
    wb = load_workbook(sheet)
    ws = wb.active
    header = [c.value for c in ws[1]]
    col = {name: header.index(name) + 1 for name in ("Subject", "Filename", "OnsetFrame", "ApexFrame")}
    for r in range(2, ws.max_row + 1):  # an annotated apex of a sample in the composite classes
        sid = f"casme2/sub{int(ws.cell(r, col['Subject']).value):02d}/{ws.cell(r, col['Filename']).value}"
        if isinstance(ws.cell(r, col["ApexFrame"]).value, int) and sid in motion_before:
            break
    onset = ws.cell(r, col["OnsetFrame"]).value
    assert ws.cell(r, col["ApexFrame"]).value != onset + 1
    ws.cell(r, col["ApexFrame"]).value = onset + 1  # the coder corrects the apex
    wb.save(sheet)

    summary = prepare("casme2", root, out, CFG, progress=False)
    assert (summary.written, summary.stale, summary.reused) == (1, 1, summary.samples - 1)
    after = {r["id"]: r for r in _rows(out)}
    assert after[sid]["apex"] == onset + 1 and "other inputs" in after[sid]["recomputed"]
    assert after[sid]["key"] != before[sid]["key"]
    stored = read_sample(out / after[sid]["file"])
    assert stored.apex == onset + 1 and stored.key == after[sid]["key"]
    fs = FeatureSet.load(out)
    changed = [i for i, m in zip(fs.ids, fs.motion) if not np.array_equal(m, motion_before[i])]
    assert changed == [sid]
    # nothing changed since: a third run reuses everything
    again = prepare("casme2", root, out, CFG, progress=False)
    assert (again.written, again.reused) == (0, summary.samples)


def test_truncated_empty_and_old_files_are_named_then_recomputed(casme2):
    root, out = casme2
    rows = [r for r in _rows(out) if r["composite"]]
    truncated, empty, old = (out / r["file"] for r in rows[:3])
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(UserError) as err:
        FeatureSet.load(out)
    line = str(err.value)
    assert "\n" not in line and str(truncated) in line and "rerun edge-mer data prepare" in line
    proc = run_cli("calibrate", "build-set", "--features", str(out), "--out", str(out.parent / "set.npz"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("edge-mer: error: feature file") and str(truncated) in proc.stderr
    empty.write_bytes(b"")
    with np.load(old) as z:  # as edge-mer 0.1 wrote it: no key
        arrays = {k: z[k] for k in z.files if k != "key"}
    np.savez(old, **arrays)

    summary = prepare("casme2", root, out, CFG, progress=False)
    assert (summary.written, summary.stale) == (3, 3)
    why = {r["file"]: r.get("recomputed", "") for r in _rows(out)}
    assert "truncated or corrupt" in why[str(truncated.relative_to(out))]
    assert why[str(empty.relative_to(out))] == "empty"
    assert "older edge-mer" in why[str(old.relative_to(out))]
    assert len(FeatureSet.load(out)) == len(rows)


def test_files_that_do_not_match_their_rows_are_reported(casme2):
    _, out = casme2
    rows = [r for r in _rows(out) if r["composite"]]
    a, b = out / rows[0]["file"], out / rows[1]["file"]
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)
    with pytest.raises(UserError, match=r"made from other inputs.*inconsistent.*rerun edge-mer data prepare"):
        FeatureSet.load(out)


def test_missing_file_is_named(casme2):
    _, out = casme2
    gone = out / next(r for r in _rows(out) if r["composite"])["file"]
    gone.unlink()
    with pytest.raises(UserError, match=re.escape(f"{gone}: missing; rerun edge-mer data prepare")):
        FeatureSet.load(out)


@pytest.mark.parametrize("model", ["text", "png"])
def test_landmarks_that_are_no_model_give_one_line(generated, tmp_path, model):
    bad = tmp_path / "bad.txt"
    if model == "text":
        bad.write_text("this is not a landmark model\n")
    else:
        bad = Path(__file__).parents[1] / "edge_mer" / "assets" / "faces" / "astronaut.png"
    proc = run_cli("data", "prepare", "--dataset", "casme2", "--root", str(generated["casme2"]),
                   "--out", str(tmp_path / "f"), "--landmarks", str(bad), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-mer: error:")
    assert str(bad) in lines[0] and ".yaml" in lines[0] and ".dat" in lines[0]


# --- a run that is killed: its workers end with it, the next run completes --------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...; field 22 (start time) is [19]


def _children(pid: int) -> dict[int, str]:
    """pid -> start time of the processes whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == pid:
            found[int(entry.name)] = fields[19]
    return found


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] not in "ZX"  # a zombie has ended


@pytest.fixture(scope="module")
def longer(tmp_path_factory) -> Path:
    """Enough clips that a run is still busy when the first sample is written."""
    from edge_mer.data.synthetic import DatasetConfig, write_dataset

    root = tmp_path_factory.mktemp("longer") / "CASME2"
    write_dataset(DatasetConfig(layout="casme2", subjects=4, clips_per_subject=10, size=(160, 120), fps=40, seed=5),
                  root, progress=False)
    return root


@pytest.mark.skipif(not PROC, reason="needs /proc (Linux)")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_leaves_no_workers_and_resumes(longer, tmp_path, how):
    out = tmp_path / "features"
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge_mer", "data", "prepare", "--dataset", "casme2",
                                 "--root", str(longer), "--out", str(out), "--size", "64", "--flow", "dis",
                                 "--workers", "2", "--quiet"], stdout=subprocess.DEVNULL, stderr=err)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("samples/*/*/*.npz")):
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no sample written in 2 minutes"
            time.sleep(0.01)
        workers = _children(proc.pid)
        proc.send_signal(how)
        code = proc.wait(timeout=60)
        deadline = time.monotonic() + 10  # generous: a worker polls its parent every 0.5 s
        while any(_alive(p, s) for p, s in workers.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p, s in workers.items() if _alive(p, s)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p, s in workers.items():  # a failed test leaves nothing running either
            if _alive(p, s):
                subprocess.run(["kill", "-9", str(p)], check=False)
    assert len(workers) >= 2, f"expected the workers among the children, found {workers}"
    assert not left, f"workers {left} outlived their parent"
    written = sorted(out.glob("samples/*/*/*.npz"))
    rows = _rows(out)
    assert len(written) < len(rows), "the run ended before it was killed: give it more clips"
    assert not [p for p in out.rglob("*") if ".part" in p.name], "a half-written file was left"
    if how == signal.SIGTERM:
        assert code == 130 and "edge-mer: interrupted" in (tmp_path / "stderr").read_text()
        for r in rows:  # every sample the index calls done is there, whole, with its key
            if r["status"] == "ok":
                assert read_sample(out / r["file"], 64).key == r["key"]
    assert any(r["status"] == "pending" for r in rows)
    with pytest.raises(UserError, match="not computed yet"):
        FeatureSet.load(out)

    summary = prepare("casme2", longer, out, CFG, workers=2, progress=False)
    assert summary.failed == 0 and summary.reused == len(written)
    assert summary.written + summary.reused + summary.skipped == summary.samples
    assert len(FeatureSet.load(out)) == sum(1 for r in _rows(out) if r["status"] == "ok" and r["composite"])
