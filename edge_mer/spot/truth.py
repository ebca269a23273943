"""Spotting truth: expression intervals of one video, as 0-based frame indices, offset inclusive.

Three layouts (``.csv``, ``.xlsx`` or ``.xls``), told apart by their header row:

* a table with a header naming ``onset`` and ``offset`` columns (``apex`` and ``type``
  optional), frames numbered from 0: the generator's truth CSV (``onset, apex, offset,
  type, label, aus, amplitude``) or any such CSV. ``type`` is ``micro``, ``macro`` or
  ``blink``; without a ``type`` column every row is a micro-expression;
* the SAMM long-video sheet (header ``Subject, Filename, Inducement Code, Onset, Apex,
  Offset, Duration, Type, Action Units, Notes``, possibly below a few title rows; type
  ``Micro - 1/2`` or ``Macro``), frames numbered from 1 like SAMM's frame files;
* the CAS(ME)^2 sheet (no header: participant, video, onset, apex, offset, AUs, emotion,
  expression type ``micro-expression`` / ``macro-expression``), frames numbered from 1.

Only ``micro`` rows are micro-expression truth (``micro_intervals``). The real CAS(ME)^2
sheet leaves some offsets 0 (unknown); such an offset is taken as the apex mirrored about
the onset, ``2 * apex - onset``, as MEGC's spotting baselines do. A sheet that annotates
several videos is filtered by ``video`` (the file name without its suffix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mer.errors import UserError
from edge_mer.spot.tables import Row, cell_text, norm, read_rows

KINDS = ("micro", "macro", "blink")
_SAMM_COLUMNS = {"filename", "inducementcode", "duration"}


@dataclass(frozen=True)
class TruthInterval:
    """One annotated expression: of a truth file or sheet (``read_truth``), or planned by the demo source."""

    onset: int  # 0-based
    offset: int  # 0-based, inclusive
    kind: str  # "micro", "macro", "blink" or "other"
    apex: int | None = None
    video: str = ""
    label: str = ""  # the MEGC composite class where the truth gives one (the demo's does)


@dataclass
class _Layout:
    onset: int
    offset: int
    apex: int | None
    kind: int | None
    video: int | None
    base: int  # number of the first frame in the file
    first_row: int  # index of the first data row
    name: str


def _kind(text: str) -> str:
    t = norm(text)
    if not t:
        return "micro"
    for k in KINDS:
        if t.startswith(k):
            return k
    return "other"


def _column(header: list[str], *names: str) -> int | None:
    for n in names:
        if n in header:
            return header.index(n)
    return None


def _layout(rows: list[Row], path: Path) -> _Layout:
    for i, row in enumerate(rows[:30]):
        header = [norm(c) for c in row]
        onset = _column(header, "onset", "onsetframe")
        offset = _column(header, "offset", "offsetframe")
        if onset is None or offset is None:
            continue
        samm = bool(_SAMM_COLUMNS & set(header))
        return _Layout(onset, offset, _column(header, "apex", "apexframe"),
                       _column(header, "type", "expressiontype", "kind"),
                       _column(header, "filename", "video", "videoname"), 1 if samm else 0, i + 1,
                       "SAMM long-video sheet" if samm else "truth table")
    body = [r for r in rows if any(cell_text(c) for c in r)]
    if body and all(len(r) >= 5 and all(cell_text(c).isdigit() for c in r[2:5]) for r in body):
        return _Layout(2, 4, 3, 7, 1, 1, 0, "CAS(ME)^2 sheet")
    raise UserError(f"{path}: not a spotting truth file: expected a header row with onset and offset columns, "
                    "a SAMM long-video sheet or a CAS(ME)^2 sheet")


def _frame(cell: Any, path: Path, line: int, what: str) -> int | None:
    text = cell_text(cell)
    if text in ("", "/", "-"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{path}: row {line}: {what} {text!r} is not a frame number") from None
    if not value.is_integer() or value < 0:
        raise UserError(f"{path}: row {line}: {what} {text!r} is not a frame number")
    return int(value)


def _cell(row: Row, idx: int | None) -> Any:
    return row[idx] if idx is not None and idx < len(row) else None


def _interval(row: Row, lay: _Layout, path: Path, line: int) -> TruthInterval:
    onset = _frame(_cell(row, lay.onset), path, line, "onset")
    if onset is None:
        raise UserError(f"{path}: row {line}: no onset frame")
    apex = _frame(_cell(row, lay.apex), path, line, "apex")
    offset = _frame(_cell(row, lay.offset), path, line, "offset")
    if lay.base == 1 and offset == 0:  # CAS(ME)^2 writes 0 for an unknown offset
        offset = None
    if offset is None:
        if apex is None:
            raise UserError(f"{path}: row {line}: neither offset nor apex frame")
        offset = 2 * apex - onset
    onset, offset = onset - lay.base, offset - lay.base
    apex = apex - lay.base if apex is not None else None
    if onset < 0 or offset < onset:
        raise UserError(f"{path}: row {line}: onset {onset + lay.base} and offset {offset + lay.base} do not make "
                        f"an interval (frames numbered from {lay.base} in a {lay.name})")
    return TruthInterval(onset, offset, _kind(cell_text(_cell(row, lay.kind))), apex,
                         cell_text(_cell(row, lay.video)))


def read_truth(path: Path, video: str | None = None) -> list[TruthInterval]:
    """The intervals of ``path`` (of ``video`` when the file annotates several videos), sorted by onset."""
    if not path.exists():
        raise UserError(f"truth file not found: {path}")
    if not path.is_file():
        raise UserError(f"truth file is not a file: {path}")
    rows = read_rows(path)
    lay = _layout(rows, path)
    found = [_interval(r, lay, path, i + 1) for i, r in enumerate(rows)
             if i >= lay.first_row and any(cell_text(c) for c in r)]
    videos = sorted({t.video for t in found if t.video})
    if len(videos) > 1:
        wanted = [t for t in found if video is not None and norm(t.video) == norm(video)]
        if not wanted:
            shown = ", ".join(videos[:5]) + (", ..." if len(videos) > 5 else "")
            which = f"none is {video!r}" if video else "name the video"
            raise UserError(f"{path} annotates {len(videos)} videos ({shown}); {which}")
        found = wanted
    return sorted(found, key=lambda t: (t.onset, t.offset))


def micro_intervals(truth: list[TruthInterval]) -> list[tuple[int, int]]:
    """(onset, offset) of the micro-expressions."""
    return [(t.onset, t.offset) for t in truth if t.kind == "micro"]
