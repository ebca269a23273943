"""Loaders of CASME II, SAMM, SMIC-HS, CAS(ME)^3 part A and the MEGC2019 composite.

Each takes the dataset's folder as distributed and finds its annotation file and
frame tree there by their real names and layout (``annotations`` overrides the
file). Every annotation row becomes a sample or a reported problem; nothing is
dropped silently. Frame numbers are the numbers in the frame file names.

Apex policy, for SMIC-HS (no apex annotated) and for rows whose apex is missing
or written as ``/``: ``middle`` takes the frame nearest the middle of onset and
offset (default); ``motion`` leaves the apex open and the feature stage takes the
frame that moved most from the onset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_mer.data.labels import COMPOSITE_LABELS, COMPOSITE_NAMES, composite_class
from edge_mer.data.records import DatasetIndex, Problem, Sample
from edge_mer.errors import UserError
from edge_mer.runtime.frames import list_frames
from edge_mer.spot.tables import Table, any_file, cell_text, find_table, folder_levels, get, read_rows

DATASETS = ("casme2", "samm", "smic", "casme3", "megc2019")
APEX_POLICIES = ("middle", "motion")


def _int(value: object) -> int | None:
    text = cell_text(value)
    return int(text) if re.fullmatch(r"\d+", text) else None


def _find_dir(root: Path, accept: Callable[[Path], bool], max_depth: int = 4) -> Path | None:
    """The shallowest folder under ``root`` (itself included) that ``accept`` likes."""
    for level in folder_levels(root, max_depth):
        for d, _ in level:
            if accept(d):
                return d
    return None


def _has_subdirs(pattern: str) -> Callable[[Path], bool]:
    rx = re.compile(pattern)

    def accept(d: Path) -> bool:
        try:
            return any(e.is_dir() and rx.fullmatch(e.name) for e in d.iterdir())
        except OSError:
            return False
    return accept


def _require_root(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")


def _annotation_file(root: Path, given: Path | None, patterns: list[str], what: str) -> Path:
    if given is not None:
        if not given.is_file():
            raise UserError(f"annotation file not found: {given}")
        return given
    found = any_file(root, patterns)
    if found is None:
        raise UserError(f"no {what} under {root} (looked for {', '.join(patterns)}); "
                        "pass --annotations FILE")
    return found


def middle_frame(onset: int, offset: int, frames: Iterable[int]) -> int:
    """``--apex middle``: the frame number nearest the middle of onset and offset (the earlier of two), among
    ``frames`` from onset to offset (all of them when none lies there)."""
    mid = (onset + offset) / 2
    numbers = list(frames)
    inside = [n for n in numbers if onset <= n <= offset] or numbers
    return min(inside, key=lambda n: (abs(n - mid), n))


def _resolve(sample: Sample, frames: dict[int, Path], policy: str, index: DatasetIndex) -> None:
    """Fill in frame paths (and the apex by policy); report what is missing."""
    if sample.apex is None and policy == "middle" and frames:
        sample.apex = middle_frame(sample.onset, sample.offset, frames)
        sample.apex_source = "middle"
    elif sample.apex is None:
        sample.apex_source = policy
    sample.onset_path = str(frames[sample.onset]) if sample.onset in frames else None
    sample.offset_path = str(frames[sample.offset]) if sample.offset in frames else None
    if sample.apex is not None:
        sample.apex_path = str(frames[sample.apex]) if sample.apex in frames else None
    elif frames and sample.onset_path and sample.offset_path:
        sample.apex_path = ""  # chosen later from the frames between onset and offset
    if not frames:
        index.problems.append(Problem("missing-frames", f"{sample.id}: no frames in {sample.frames_dir}",
                                      sample.row, Path(index.annotations or "").name or None, sample.id))
        return
    missing = [f"{name} {n}" for name, n, p in (("onset", sample.onset, sample.onset_path),
                                                ("apex", sample.apex, sample.apex_path),
                                                ("offset", sample.offset, sample.offset_path))
               if n is not None and not p]
    if missing:
        index.problems.append(Problem("missing-frames", f"{sample.id}: frame {', '.join(missing)} not on disk "
                                      f"in {sample.frames_dir}", sample.row,
                                      Path(index.annotations or "").name or None, sample.id))


def _row_problem(index: DatasetIndex, table: Table, row: int, message: str) -> None:
    index.problems.append(Problem("unparseable-row", message, row, table.path.name))


def _sheet_samples(index: DatasetIndex, table: Table, dataset: str, frames_dir: Callable[[str, str], Path],
                   subject_name: Callable[[str], str | None], clip_id: Callable[[str, int], str],
                   policy: str) -> None:
    """Samples from a sheet with subject, clip, onset/apex/offset, AU and emotion columns."""
    c_sub = table.require("subject", "sub")
    c_clip = table.require("filename", "seq", "clip")
    c_on = table.require("onsetframe", "onset")
    c_ap = table.column("apexframe", "apex")
    c_off = table.require("offsetframe", "offset")
    c_au = table.column("actionunits", "au", "aus")
    c_emo = table.require("estimatedemotion", "emotion", "objectiveclass")
    for row_no, row in table.rows:
        subject = subject_name(cell_text(get(row, c_sub)))
        clip = cell_text(get(row, c_clip))
        onset, offset = _int(get(row, c_on)), _int(get(row, c_off))
        if subject is None or not clip or onset is None or offset is None:
            _row_problem(index, table, row_no, f"cannot read subject/clip/onset/offset from {list(row)[:8]}")
            continue
        if offset < onset:
            _row_problem(index, table, row_no, f"offset {offset} before onset {onset}")
            continue
        apex_cell = cell_text(get(row, c_ap))
        apex = _int(apex_cell)
        native = cell_text(get(row, c_emo))
        sample = Sample(dataset, subject, clip_id(clip, onset), onset, apex, offset, "", None, None, None,
                        native, composite_class(dataset, native), cell_text(get(row, c_au)), row_no)
        folder = frames_dir(subject, clip)
        sample.frames_dir = str(folder)
        if apex is None:
            index.problems.append(Problem("missing-apex", f"{sample.id}: apex written as {apex_cell or 'nothing'!r}; "
                                          f"apex policy {policy!r}", row_no, table.path.name, sample.id))
        elif not onset <= apex <= offset:
            index.problems.append(Problem("unparseable-row", f"{sample.id}: apex {apex} outside onset..offset",
                                          row_no, table.path.name, sample.id))
        index.samples.append(sample)
        _resolve(sample, list_frames(folder), policy, index)


def casme2_subject(text: str) -> str | None:
    m = re.fullmatch(r"(?:sub)?0*(\d+)", text.strip(), re.IGNORECASE)
    return f"sub{int(m.group(1)):02d}" if m else None


def samm_subject(text: str) -> str | None:
    m = re.fullmatch(r"0*(\d+)", text.strip())
    return f"{int(m.group(1)):03d}" if m else None


def smic_subject(text: str) -> str | None:
    m = re.fullmatch(r"s0*(\d+)", text.strip(), re.IGNORECASE)
    return f"s{int(m.group(1))}" if m else None


def smic_clip(text: str) -> str:
    """``s01_ne_01`` -> ``s1_ne_01``: the subject part as the folders write it."""
    return re.sub(r"^[sS]0*(\d+)", lambda m: f"s{int(m.group(1))}", text.strip())


def _sub_folder(base: Path, subject: str, alternatives: list[str]) -> Path:
    for name in [subject, *alternatives]:
        if (base / name).is_dir():
            return base / name
    return base / subject


@dataclass(frozen=True)
class SheetLayout:
    """Where a sheet-annotated dataset keeps its sheet and frames, and how it names things."""

    dataset: str
    sheet_patterns: tuple[str, ...]
    sheet_what: str
    subject_dirs: str  # regex of the subject folder names that mark the frame tree
    tree_what: str
    subject: Callable[[str], str | None]
    clip_id: Callable[[str, int], str]
    clip_dir: Callable[[Path, str, str], Path]  # (frame tree, subject, clip) -> frames folder
    sheet_name: str | None = None


def _casme2_dir(base: Path, subject: str, clip: str) -> Path:
    return _sub_folder(base, subject, [f"sub{int(subject[3:])}"]) / clip


def _samm_dir(base: Path, subject: str, clip: str) -> Path:
    return _sub_folder(base, subject, [str(int(subject))]) / clip


def _casme3_dir(base: Path, subject: str, clip: str) -> Path:
    folder = base / subject / clip
    return folder / "color" if (folder / "color").is_dir() else folder


CASME2 = SheetLayout("casme2", ("CASME2-coding*.xls*", "CASME2*coding*.xls*", "CASME2*.xlsx"),
                     "CASME II coding sheet (CASME2-coding-*.xlsx)", r"sub\d+",
                     "CASME II frame tree (CASME2_RAW_selected/subXX/...)", casme2_subject, lambda c, _o: c,
                     _casme2_dir)
SAMM = SheetLayout("samm", ("SAMM_Micro_FACS_Codes*.xls*", "SAMM*Codes*.xls*"),
                   "SAMM coding sheet (SAMM_Micro_FACS_Codes_v2.xlsx)", r"\d{3}",
                   "SAMM frame tree (SAMM/006/006_1_2/...)", samm_subject, lambda c, _o: c, _samm_dir)
CASME3 = SheetLayout("casme3", ("cas(me)3_part_A_ME_label*.xls*", "*part_A_ME_label*.xls*"),
                     "CAS(ME)^3 part A ME label sheet (cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx)", r"spNO\.\d+",
                     "CAS(ME)^3 part A frame tree (spNO.1/a/color/...)", lambda s: s or None,
                     lambda c, o: f"{c}_{o}", _casme3_dir, sheet_name="label")


def _load_sheet_dataset(layout: SheetLayout, root: Path, annotations: Path | None, apex_policy: str) -> DatasetIndex:
    _require_root(root)
    sheet = _annotation_file(root, annotations, list(layout.sheet_patterns), layout.sheet_what)
    base = _find_dir(root, _has_subdirs(layout.subject_dirs), max_depth=5)
    if base is None:
        raise UserError(f"no {layout.tree_what} under {root}")
    index = DatasetIndex(layout.dataset, str(root), str(sheet))
    table = find_table(sheet, "subject", sheet=layout.sheet_name)
    found = base

    def frames_dir(subject: str, clip: str) -> Path:
        return layout.clip_dir(found, subject, clip)

    _sheet_samples(index, table, layout.dataset, frames_dir, layout.subject, layout.clip_id, apex_policy)
    return index


def load_casme2(root: Path, annotations: Path | None = None, apex_policy: str = "middle") -> DatasetIndex:
    return _load_sheet_dataset(CASME2, root, annotations, apex_policy)


def load_samm(root: Path, annotations: Path | None = None, apex_policy: str = "middle") -> DatasetIndex:
    return _load_sheet_dataset(SAMM, root, annotations, apex_policy)


def load_casme3(root: Path, annotations: Path | None = None, apex_policy: str = "middle") -> DatasetIndex:
    return _load_sheet_dataset(CASME3, root, annotations, apex_policy)


def load_smic(root: Path, annotations: Path | None = None, apex_policy: str = "middle") -> DatasetIndex:
    _require_root(root)
    if annotations is not None:
        raise UserError("SMIC-HS has no annotation file: its labels are its folders (sN/micro/CLASS/CLIP)")
    base = _find_dir(root, lambda d: d.name.upper() == "HS" and _has_subdirs(r"s\d+")(d), max_depth=5)
    if base is None:
        base = _find_dir(root, lambda d: _has_subdirs(r"s\d+")(d) and any((e / "micro").is_dir()
                                                                          for e in d.iterdir() if e.is_dir()))
    if base is None:
        raise UserError(f"no SMIC-HS frame tree (HS/sN/micro/negative/...) under {root}")
    index = DatasetIndex("smic", str(root), None)
    index.notes.append(f"SMIC-HS annotates no apex: apex policy {apex_policy!r}")
    subjects = sorted((d for d in base.iterdir() if d.is_dir() and smic_subject(d.name)),
                      key=lambda d: int(d.name[1:]))
    for sdir in subjects:
        micro = sdir / "micro"
        for cls in sorted(p for p in micro.iterdir() if p.is_dir()) if micro.is_dir() else []:
            for clip in sorted(p for p in cls.iterdir() if p.is_dir()):
                frames = list_frames(clip)
                if not frames:
                    index.problems.append(Problem("missing-frames", f"no frames in {clip}", file=str(clip)))
                    continue
                numbers = list(frames)
                sample = Sample("smic", sdir.name, clip.name, numbers[0], None, numbers[-1], str(clip), None, None,
                                None, cls.name, composite_class("smic", cls.name))
                if not sample.composite:
                    index.problems.append(Problem("unknown-label", f"{sample.id}: class folder {cls.name!r}",
                                                  file=str(cls), sample=sample.id))
                index.samples.append(sample)
                _resolve(sample, frames, apex_policy, index)
    return index


def _composite_csv(root: Path, given: Path | None) -> Path:
    if given is not None:
        if not given.is_file():
            raise UserError(f"ground-truth file not found: {given}")
        return given
    for path in sorted(root.rglob("*.csv")):
        try:
            rows = read_rows(path)
        except UserError:
            continue
        if rows and len(rows[0]) >= 4 and cell_text(rows[0][0]).lower() in ("casme2", "samm", "smic"):
            return path
    raise UserError(f"no MEGC2019 ground-truth CSV (db,subject,filename,label rows) under {root}; "
                    "pass --annotations FILE")


def _dataset_dir(root: Path, marker: Callable[[Path], bool], name: str) -> Path:
    found = _find_dir(root, marker, max_depth=3)
    if found is None:
        raise UserError(f"no {name} folder under {root}: the composite needs CASME II, SAMM and SMIC-HS "
                        "as distributed, side by side")
    return found


def _holds_file(*patterns: str) -> Callable[[Path], bool]:
    def accept(d: Path) -> bool:
        try:
            return any(e.is_file() and any(e.match(p) for p in patterns) for e in d.iterdir())
        except OSError:
            return False
    return accept


def load_megc2019(root: Path, annotations: Path | None = None, apex_policy: str = "middle") -> DatasetIndex:
    """The composite: samples listed in the ground-truth CSV, read from the three datasets."""
    _require_root(root)
    gt = _composite_csv(root, annotations)
    parts = {
        "casme2": load_casme2(_dataset_dir(root, _holds_file("CASME2*coding*.xls*"), "CASME II"),
                              None, apex_policy),
        "samm": load_samm(_dataset_dir(root, _holds_file("SAMM*Codes*.xls*"), "SAMM"), None, apex_policy),
        "smic": load_smic(_dataset_dir(root, lambda d: d.name.upper() == "HS", "SMIC-HS"), None, apex_policy),
    }
    index = DatasetIndex("megc2019", str(root), str(gt))
    by_key = {(s.dataset, s.subject, s.clip): s for part in parts.values() for s in part.samples}
    norm_subject = {"casme2": casme2_subject, "samm": samm_subject, "smic": smic_subject}
    seen: set[tuple[str, str, str]] = set()
    for row_no, row in enumerate(read_rows(gt), start=1):
        cells = [cell_text(c) for c in row]
        if not any(cells):
            continue
        if len(cells) < 4 or cells[0].lower() not in norm_subject or cells[3] not in ("0", "1", "2"):
            index.problems.append(Problem("unparseable-row", f"expected db,subject,filename,label; got {cells}",
                                          row_no, gt.name))
            continue
        db = cells[0].lower()
        subject = norm_subject[db](cells[1])
        clip = smic_clip(cells[2]) if db == "smic" else cells[2]
        label = COMPOSITE_NAMES[int(cells[3])]
        key = (db, subject or cells[1], clip)
        sample = by_key.get(key)
        if sample is None:
            index.problems.append(Problem("not-in-dataset", f"{db}/{cells[1]}/{cells[2]} is in the ground truth "
                                          f"but not in the {db} annotations or folders", row_no, gt.name))
            continue
        if key in seen:
            index.problems.append(Problem("unparseable-row", f"{sample.id} listed twice", row_no, gt.name))
            continue
        seen.add(key)
        if sample.composite and sample.composite != label:
            index.problems.append(Problem("label-mismatch", f"{sample.id}: ground truth says {label}, the "
                                          f"{db} label {sample.native!r} maps to {sample.composite}; "
                                          "the ground truth is used", row_no, gt.name, sample.id))
        sample.composite = label
        index.samples.append(sample)
    wanted = {s.id for s in index.samples}
    for name, part in parts.items():
        # frame problems of the samples the composite uses; the rest of each dataset is not its business
        index.problems += [p for p in part.problems if p.sample in wanted]
        index.notes += [f"{name}: {n}" for n in part.notes]
    counts = {k: sum(s.composite == k for s in index.samples) for k in COMPOSITE_LABELS}
    index.notes.append("composite: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return index


LOADERS: dict[str, Callable[[Path, Path | None, str], DatasetIndex]] = {
    "casme2": load_casme2, "samm": load_samm, "smic": load_smic, "casme3": load_casme3, "megc2019": load_megc2019,
}


def load(dataset: str, root: Path, annotations: Path | None = None, apex_policy: str = "middle") -> DatasetIndex:
    if dataset not in LOADERS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if apex_policy not in APEX_POLICIES:
        raise UserError(f"unknown apex policy {apex_policy!r}; choose from {', '.join(APEX_POLICIES)}")
    return LOADERS[dataset](root, annotations, apex_policy)
