"""Generated recognition datasets are laid out and annotated like the real ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pandas as pd
import pytest
from conftest import run_cli, tree_digest

from edge_mer.data.synthetic import COMPOSITE_CSV, MANIFEST, DatasetConfig, write_dataset
from edge_mer.errors import UserError
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.synth.faces import photo_names

SMALL = ("--size", "128x96", "--fps", "40", "--quiet")


def _synth(tmp: Path, layout: str, subjects: int = 3, clips: int = 2, *extra: str) -> dict:
    out = tmp / layout
    proc = run_cli("synth", "dataset", "--layout", layout, "--subjects", str(subjects),
                   "--clips-per-subject", str(clips), "--out", str(out), "--json", *SMALL, *extra, check=True)
    return json.loads(proc.stdout)


def _manifest(root: Path) -> list[dict]:
    return json.loads((root / MANIFEST).read_text())["clips"]


def _assert_frames_on_disk(root: Path, clips: list[dict], name) -> None:
    for c in clips:
        folder = root / c["frames_dir"]
        files = sorted(p.name for p in folder.iterdir())
        expected = sorted(name(c, n) for n in range(c["onset"], c["offset"] + 1))
        assert files == expected, folder


def test_casme2_layout_and_sheet(tmp_path):
    summary = _synth(tmp_path, "casme2")
    root = tmp_path / "casme2"
    assert summary["samples"] == 6 and summary["subjects"] == 3
    assert sorted(p.name for p in (root / "CASME2_RAW_selected").iterdir()) == ["sub01", "sub02", "sub03"]
    sheet = pd.read_excel(root / "CASME2-coding-20190701.xlsx")
    assert list(sheet.columns) == ["Subject", "Filename", "Unnamed: 2", "OnsetFrame", "ApexFrame", "OffsetFrame",
                                   "Unnamed: 6", "Action Units", "Estimated Emotion"]
    assert sheet["Subject"].dtype.kind == "i"  # integer subjects, zero-padded folders
    assert set(sheet["Estimated Emotion"]) <= {"happiness", "disgust", "repression", "surprise", "others"}
    for clip in sheet["Filename"]:
        assert re.fullmatch(r"EP\d\d_\d\d f?".replace(" ", ""), clip)
    clips = _manifest(root)
    _assert_frames_on_disk(root, clips, lambda c, n: f"img{n}.jpg")
    # the sheet and the frames agree
    for row, c in zip(sheet.itertuples(), clips):
        assert (row.OnsetFrame, row.OffsetFrame) == (c["onset"], c["offset"])
        assert f"CASME2_RAW_selected/sub{row.Subject:02d}/{row.Filename}" == c["frames_dir"]
    frame = cv2.imread(str(root / clips[0]["frames_dir"] / f"img{clips[0]['onset']}.jpg"))
    assert frame.shape == (96, 128, 3)


def test_casme2_apex_slash_quirk(tmp_path):
    cfg = DatasetConfig(layout="casme2", subjects=2, clips_per_subject=4, size=(64, 48), fps=30,
                        missing_apex_rate=0.5)
    write_dataset(cfg, tmp_path, progress=False)
    apex = pd.read_excel(tmp_path / "CASME2-coding-20190701.xlsx")["ApexFrame"].astype(str)
    assert (apex == "/").any() and (apex != "/").any()


def test_samm_layout_header_row_is_not_first(tmp_path):
    _synth(tmp_path, "samm")
    root = tmp_path / "samm"
    raw = pd.read_excel(root / "SAMM_Micro_FACS_Codes_v2.xlsx", header=None)
    header_row = int(raw.index[raw[0] == "Subject"][0])
    assert header_row == 13  # 13 rows of notes come first
    sheet = pd.read_excel(root / "SAMM_Micro_FACS_Codes_v2.xlsx", header=header_row)
    assert list(sheet.columns) == ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
                                   "Offset Frame", "Duration", "Type", "Action Units", "Notes",
                                   "Estimated Emotion"]
    assert sorted(sheet["Subject"].unique()) == [6, 7, 8]  # integers in the sheet ...
    assert sorted(p.name for p in (root / "SAMM").iterdir()) == ["006", "007", "008"]  # ... padded on disk
    clips = _manifest(root)
    _assert_frames_on_disk(root, clips, lambda c, n: f"{c['subject']}_{n:05d}.jpg")
    first = root / clips[0]["frames_dir"] / f"{clips[0]['subject']}_{clips[0]['onset']:05d}.jpg"
    assert cv2.imread(str(first), cv2.IMREAD_UNCHANGED).ndim == 2  # SAMM is grey


def test_samm_default_frame_size(tmp_path):
    cfg = DatasetConfig(layout="samm", subjects=1, clips_per_subject=1, fps=20)
    write_dataset(cfg, tmp_path, progress=False)
    c = _manifest(tmp_path)[0]
    img = cv2.imread(str(tmp_path / c["frames_dir"] / f"{c['subject']}_{c['onset']:05d}.jpg"),
                     cv2.IMREAD_UNCHANGED)
    assert img.shape == (650, 960)


def test_smic_layout_has_no_annotation_file(tmp_path):
    _synth(tmp_path, "smic")
    root = tmp_path / "smic"
    assert not list(root.rglob("*.xls*")) and not list(root.rglob("*.csv"))
    clips = _manifest(root)
    for c in clips:
        assert re.fullmatch(r"SMIC_all_raw/HS/s\d+/micro/(negative|positive|surprise)/s\d+_(ne|po|sur)_\d\d",
                            c["frames_dir"])
        assert c["frames_dir"].split("/")[4] == c["emotion"]
    _assert_frames_on_disk(root, clips, lambda c, n: f"image{n:06d}.bmp")


def test_megc2019_composite(tmp_path):
    summary = _synth(tmp_path, "megc2019", 6, 3)
    root = tmp_path / "megc2019"
    for sub in ("CASME2/CASME2-coding-20190701.xlsx", "SAMM/SAMM_Micro_FACS_Codes_v2.xlsx",
                "SMIC/SMIC_all_raw/HS", "CASME2/CASME2_RAW_selected", "SAMM/SAMM"):
        assert (root / sub).exists(), sub
    gt = pd.read_csv(root / COMPOSITE_CSV, header=None, names=["db", "subject", "filename", "label"], dtype=str)
    clips = _manifest(root)
    included = [c for c in clips if c["composite"]]
    assert len(gt) == len(included) == sum(summary["composite"].values())
    assert set(gt["db"]) == {"casme2", "samm", "smic"}
    assert set(gt["label"]) <= {"0", "1", "2"}
    excluded = {c["emotion"] for c in clips if not c["composite"]}
    assert excluded <= {"others", "Other"}
    smic = gt[gt["db"] == "smic"]
    assert all(re.fullmatch(r"s0\d", s) for s in smic["subject"])  # s01 in the CSV ...
    assert all(Path(c["frames_dir"]).parts[3] in {"s1", "s2", "s3", "s4"} for c in clips if c["dataset"] == "smic")
    names = {"negative": "0", "positive": "1", "surprise": "2"}
    by_key = {(c["dataset"], c["clip"]): names[c["composite"]] for c in included}
    for row in gt.itertuples():
        clip = row.filename if row.db != "smic" else "s" + str(int(row.filename.split("_")[0][1:])) + \
            row.filename[row.filename.index("_"):]
        assert by_key[(row.db, clip)] == row.label
    for c in clips:
        assert (root / c["frames_dir"]).is_dir()
    # the photographs the subjects were drawn from: a draw stays tied to the faces it was rendered with
    assert json.loads((root / MANIFEST).read_text())["faces"] == photo_names()


def test_a_draw_rendered_from_other_photographs_is_not_reused(tmp_path):
    """A cached composite rendered when only two photographs shipped holds other subjects than the same
    arguments give now: the benchmarks' preparation refuses it with one line instead of mixing the two."""
    data, features = tmp_path / "data", tmp_path / "features"
    data.mkdir()
    (data / MANIFEST).write_text(json.dumps({"generator": "edge-mer synth dataset", "clips": []}))  # no "faces"
    with pytest.raises(UserError, match=r"rendered from the photographs astronaut, hopper; .*delete it"):
        prepare_synthetic_composite(data, features, 3, 1, 0)
    assert (data / MANIFEST).is_file() and not features.exists()  # nothing removed, nothing prepared


def test_a_benchmark_refusing_a_draw_says_so_in_one_line(tmp_path):
    """The benchmarks end a refusal as the CLI does: one line naming the script, exit 2, no traceback."""
    pytest.importorskip("torch")  # the benchmarks train: a host-side install
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / MANIFEST).write_text(json.dumps({"clips": []}))  # rendered from two photographs
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "recipe.py"), "--work", str(tmp_path),
                           "--variants", "recipe", "--seeds", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert re.fullmatch(r"recipe\.py: error: \S+ was rendered from the photographs astronaut, hopper; .*\n",
                        done.stderr), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing prepared, no run started


def test_the_recognition_benchmark_checks_its_models_before_any_work(tmp_path):
    """``--models NAME+ABLATION`` (e.g. mmt_small+motion-only) is checked before the draw is rendered."""
    pytest.importorskip("torch")  # the benchmarks train: a host-side install
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "recognition.py"), "--work", str(tmp_path / "w"),
                           "--models", "ststnet,mmt_small+no-texture"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("recognition.py: error: unknown ablation 'no-texture'; choose from full, ")
    assert not (tmp_path / "w").exists()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        run_cli("synth", "dataset", "--layout", "megc2019", "--subjects", "3", "--clips-per-subject", "1",
                "--out", str(out), "--seed", str(seed), *SMALL, check=True)
    da, db, dc = tree_digest(a), tree_digest(b), tree_digest(c)
    assert da == db
    shared = set(da) & set(dc)
    assert sum(da[k] != dc[k] for k in shared) > 0.5 * len(shared) or set(da) != set(dc)


@pytest.mark.parametrize("layout", ["casme2", "samm", "smic"])
def test_text_summary(tmp_path, layout):
    proc = run_cli("synth", "dataset", "--layout", layout, "--subjects", "1", "--clips-per-subject", "1",
                   "--out", str(tmp_path / layout), *SMALL, check=True)
    assert re.match(rf"wrote 1 clips of 1 subjects \(\d+ frames\) in the {layout} layout", proc.stdout)


def test_switching_a_nuisance_off_changes_nothing_else(tmp_path):
    """A draw without blinks (or noise) has the same clips, labels, apexes, action units and amplitudes as the
    draw with them, so a benchmark can compare the two sample for sample (benchmarks/headroom.py)."""
    from dataclasses import replace

    from edge_mer.synth.diversity import Diversity
    from edge_mer.synth.render import Nuisances

    base = DatasetConfig(layout="casme2", subjects=2, clips_per_subject=3, size=(96, 72), fps=30,
                         blink_probability=1.0, diversity=Diversity())
    roots = {}
    for name, nuisances in (("lab", Nuisances.lab()), ("no-blinks", replace(Nuisances.lab(), blinks=False)),
                            ("no-noise", replace(Nuisances.lab(), noise=0.0))):
        roots[name] = tmp_path / name
        write_dataset(replace(base, nuisances=nuisances), roots[name])
    assert _manifest(roots["lab"]) == _manifest(roots["no-blinks"]) == _manifest(roots["no-noise"])
    lab, quiet = tree_digest(roots["lab"]), tree_digest(roots["no-blinks"])
    frames = [k for k in lab if k.endswith(".jpg")]
    assert frames and set(frames) == {k for k in quiet if k.endswith(".jpg")}
    assert any(lab[k] != quiet[k] for k in frames)  # every clip blinked in the first: its frames show it


def test_the_headroom_benchmark_checks_its_conditions_before_any_work(tmp_path):
    pytest.importorskip("torch")  # the benchmarks train: a host-side install
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "headroom.py"), "--work", str(tmp_path / "w"),
                           "--conditions", "as-drawn,no-glasses"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("headroom.py: error: unknown condition(s) no-glasses; choose from as-drawn, ")
    assert not (tmp_path / "w").exists()
