"""Loaders read the real layouts and their quirks; every row becomes a sample or a reported problem."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import GENERATED_LAYOUTS, run_cli
from openpyxl import Workbook

from edge_mer.data.loaders import load
from edge_mer.data.synthetic import MANIFEST
from edge_mer.errors import UserError
from edge_mer.runtime.frames import frame_number, list_frames


def _manifest(root: Path) -> list[dict]:
    return json.loads((root / MANIFEST).read_text())["clips"]


@pytest.mark.parametrize("layout", GENERATED_LAYOUTS)
def test_index_counts_match_what_the_generator_wrote(generated, layout):
    proc = run_cli("data", "index", "--dataset", layout, "--root", str(generated[layout]), "--json", check=True)
    got = json.loads(proc.stdout)
    clips = _manifest(generated[layout])
    if layout == "megc2019":
        clips = [c for c in clips if c["composite"]]  # the composite lists only its three classes
    assert got["samples"] == len(clips)
    assert got["complete"] == len(clips)
    assert got["subjects"] == len({(c["dataset"], c["subject"]) for c in clips})
    assert got["classes"] == dict(Counter(c["emotion"] for c in clips))
    assert got["composite"] == dict(Counter(c["composite"] or "excluded" for c in clips))
    kinds = {p["kind"] for p in got["problems"]}
    assert kinds <= {"missing-apex"}  # the '/' apex cells the generator wrote, nothing else
    if layout == "casme2":
        hidden = sum(c["apex_written"] == "/" for c in clips)
        assert sum(p["kind"] == "missing-apex" for p in got["problems"]) == hidden > 0


def test_loaded_frames_are_the_generated_ones(generated):
    index = load("casme2", generated["casme2"])
    truth = {(c["subject"], c["clip"]): c for c in _manifest(generated["casme2"])}
    for s in index.samples:
        c = truth[(s.subject, s.clip)]
        assert (s.onset, s.offset) == (c["onset"], c["offset"])
        assert Path(s.onset_path).name == f"img{c['onset']}.jpg"
        if c["apex_written"] != "/":
            assert s.apex == c["apex"] and s.apex_source == "annotation"
        else:  # the middle frame stands in
            assert s.apex_source == "middle" and abs(s.apex - (c["onset"] + c["offset"]) / 2) <= 0.5


def test_text_index_lists_problems_with_rows(generated):
    proc = run_cli("data", "index", "--dataset", "casme2", "--root", str(generated["casme2"]), check=True)
    assert proc.stdout.startswith("casme2: 9 samples (9 with all frames on disk) of 3 subjects")
    assert "[missing-apex] CASME2-coding-20190701.xlsx:row " in proc.stdout


# ---- hand-made fixtures, one quirk each ---------------------------------------------------------------

def _frames(folder: Path, numbers, pattern: str = "img{}.jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        cv2.imwrite(str(folder / pattern.format(n)), np.full((8, 8), n % 255, np.uint8))


def _xlsx(path: Path, rows, sheet: str = "Sheet1") -> None:
    wb = Workbook()
    ws = wb.active
    ws.title = sheet
    for r, row in enumerate(rows, start=1):
        for c, v in enumerate(row, start=1):
            if v is not None:
                ws.cell(row=r, column=c, value=v)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                 "Estimated Emotion"]


@pytest.fixture
def casme2_quirks(tmp_path) -> Path:
    root = tmp_path / "CASME2"  # any folder name
    base = root / "CASME2_RAW_selected" / "CASME2_RAW_selected"  # nested, as some copies are
    _frames(base / "sub01" / "EP02_01f", range(9, 14))  # img9 .. img13: numeric, not text, order
    _frames(base / "sub01" / "EP03_02", range(100, 110))
    _frames(base / "sub02" / "EP19_05f", range(46, 50))
    _frames(base / "sub02" / "EP01_12", range(1, 3))  # offset 5 is missing on disk
    _xlsx(root / "CASME2-coding-20140508.xlsx", [
        CASME2_HEADER,
        [1, "EP02_01f", None, 9, 11, 13, None, "12", "happiness"],
        ["01", "EP03_02", None, 100, "/", 109, None, "4+L10", "disgust"],  # text subject, '/' apex
        ["sub02", "EP19_05f ", None, 46, None, 49, None, "14", "repression"],  # blank apex, trailing space
        [2, "EP01_12", None, 1, 2, 5, None, "1+2", "surprise"],  # frames missing
        [2, "EP09_09", None, "abc", 3, 4, None, "", "others"],  # unreadable onset
    ])
    return root


def test_casme2_quirks(casme2_quirks):
    index = load("casme2", casme2_quirks)
    by_clip = {s.clip: s for s in index.samples}
    assert set(by_clip) == {"EP02_01f", "EP03_02", "EP19_05f", "EP01_12"}
    assert Path(by_clip["EP02_01f"].onset_path).name == "img9.jpg"
    assert by_clip["EP03_02"].subject == "sub01" and by_clip["EP03_02"].apex == 104  # middle of 100..109
    assert by_clip["EP03_02"].aus == "4+L10" and by_clip["EP03_02"].composite == "negative"
    assert by_clip["EP19_05f"].apex_source == "middle" and by_clip["EP19_05f"].complete
    broken = by_clip["EP01_12"]
    assert not broken.complete  # kept, not dropped
    problems = {(p.kind, p.row) for p in index.problems}
    assert ("missing-frames", 5) in problems
    assert ("unparseable-row", 6) in problems
    assert ("missing-apex", 3) in problems and ("missing-apex", 4) in problems


def test_casme2_quirks_cli_text(casme2_quirks):
    proc = run_cli("data", "index", "--dataset", "casme2", "--root", str(casme2_quirks), check=True)
    assert "4 samples (3 with all frames on disk) of 2 subjects" in proc.stdout
    assert "[missing-frames] CASME2-coding-20140508.xlsx:row 5: casme2/sub02/EP01_12: frame offset 5 not on disk" \
        in proc.stdout
    assert "[unparseable-row] CASME2-coding-20140508.xlsx:row 6" in proc.stdout


def test_samm_header_row_and_subject_padding(tmp_path):
    root = tmp_path / "samm_copy"
    _frames(root / "SAMM" / "006" / "006_1_2", range(5562, 5570), "006_{:05d}.jpg")
    _frames(root / "SAMM" / "011" / "011_2_3", range(90, 95), "011_{:05d}.jpg")
    notes = [["SAMM Micro-Movement FACS Codes"]] + [[f"note {i}"] for i in range(12)]
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
              "Type", "Action Units", "Notes", "Estimated Emotion"]
    _xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", [*notes, header,
        [6, "006_1_2", 1, 5562, 5566, 5569, 8, "Micro - 1/2", "R14", None, "Contempt"],
        ["011", "011_2_3", 2, 90, 92, 94, 5, "Micro - 1/2", "7", None, "Other"]])
    index = load("samm", root)
    assert [s.subject for s in index.samples] == ["006", "011"]
    assert [s.composite for s in index.samples] == ["negative", ""]  # "Other" is excluded from the composite
    assert all(s.complete for s in index.samples) and not index.problems


def test_smic_numeric_order_and_apex_policy(tmp_path):
    clip = tmp_path / "SMIC" / "HS" / "s3" / "micro" / "positive" / "s3_po_05"
    _frames(clip, [9, 10, 11, 100], "image{:06d}.bmp")
    _frames(tmp_path / "SMIC" / "HS" / "s3" / "micro" / "surprise" / "s3_sur_01", [5, 6, 7], "reg_image{}.bmp")
    index = load("smic", tmp_path / "SMIC")
    s = {x.clip: x for x in index.samples}
    assert (s["s3_po_05"].onset, s["s3_po_05"].offset) == (9, 100)
    assert s["s3_po_05"].apex_source == "middle" and s["s3_sur_01"].apex == 6
    motion = load("smic", tmp_path / "SMIC", apex_policy="motion")
    assert all(x.apex is None and x.apex_source == "motion" for x in motion.samples)
    assert any("no apex" in n for n in index.notes)


def test_megc_composite_quirks(generated, tmp_path):
    import shutil

    root = tmp_path / "composite"
    shutil.copytree(generated["megc2019"], root)
    gt = root / "MEGC2019_composite_3class_gt.csv"
    rows = gt.read_text().splitlines()
    smic_row = next(r for r in rows if r.startswith("smic,s0"))
    casme_row = next(r for r in rows if r.startswith("casme2,"))
    db, subj, clip, label = casme_row.split(",")
    wrong = str((int(label) + 1) % 3)
    rows = [r for r in rows if r != casme_row] + [f"{db},{subj},{clip},{wrong}", "samm,099,099_1_1,0"]
    gt.unlink()
    (root / "labels").mkdir()
    (root / "labels" / "megc2019_gt.csv").write_text("\n".join(rows) + "\n")  # found by its content
    index = load("megc2019", root)
    kinds = Counter(p.kind for p in index.problems)
    assert kinds["not-in-dataset"] == 1 and kinds["label-mismatch"] == 1
    assert len(index.samples) == len(rows) - 1
    _, smic_subject, smic_clip, _ = smic_row.split(",")  # e.g. s01, s01_ne_01 against folders s1, s1_ne_01
    folder_clip = "s" + smic_clip[1:].lstrip("0")
    assert any(s.clip == folder_clip and s.subject == "s" + smic_subject[1:].lstrip("0")
               for s in index.samples if s.dataset == "smic")


def test_bad_input_is_one_clear_line(tmp_path):
    proc = run_cli("data", "index", "--dataset", "casme2", "--root", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"edge-mer: error: dataset folder not found: " \
                                                           f"{tmp_path / 'nowhere'}"
    (tmp_path / "c" / "CASME2_RAW_selected" / "sub01").mkdir(parents=True)
    (tmp_path / "c" / "CASME2-coding-1.xlsx").write_bytes(b"PK\x03\x04 this is not a workbook")
    proc = run_cli("data", "index", "--dataset", "casme2", "--root", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(UserError, match="no header row"):
        _xlsx(tmp_path / "d" / "CASME2-coding-x.xlsx", [["nothing", "here"]])
        (tmp_path / "d" / "CASME2_RAW_selected" / "sub01").mkdir(parents=True)
        load("casme2", tmp_path / "d")


def test_frame_numbers():
    assert frame_number("img46.jpg") == 46
    assert frame_number("006_05562.jpg") == 5562
    assert frame_number("reg_image059976.bmp") == 59976
    assert frame_number("cover.jpg") is None


def test_list_frames_sorts_numerically(tmp_path):
    _frames(tmp_path, [1, 2, 10, 100, 11])
    assert list(list_frames(tmp_path)) == [1, 2, 10, 11, 100]
