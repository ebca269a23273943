"""Reading the datasets' annotation files: .xlsx, .xls and .csv, as rows of cells.

Real annotation sheets move their header row down (SAMM), leave header cells
blank (CASME II) and mix integers and text. Rows are read raw and the header is
located by its first cell; column names are compared in a normalised form
(lower case, no spaces, underscores or punctuation).
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple

from edge_mer.errors import UserError

Row = Tuple[Any, ...]


def norm(name: object) -> str:
    """``"Onset Frame"`` -> ``"onsetframe"``; None -> ``""``."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower()) if name is not None else ""


def cell_text(value: object) -> str:
    """A cell as text: ``6.0`` -> ``"6"``, None -> ``""``, spaces stripped."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_rows(path: Path, sheet: str | None = None) -> list[Row]:
    """All rows of ``sheet`` (default: the first) of a spreadsheet or CSV file."""
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                return [tuple(r) for r in csv.reader(f)]
        if suffix in (".xlsx", ".xlsm"):
            return _read_xlsx(path, sheet)
        if suffix == ".xls":
            return _read_xls(path, sheet)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {exc} (is the file complete?)") from None
    raise UserError(f"unsupported annotation file {path.name}: expected .xlsx, .xls or .csv")


def _read_xlsx(path: Path, sheet: str | None) -> list[Row]:
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb[sheet] if sheet is not None and sheet in wb.sheetnames else wb[wb.sheetnames[0]]
        return [tuple(r) for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


def _read_xls(path: Path, sheet: str | None) -> list[Row]:
    try:
        import xlrd  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise UserError(f"{path.name} is an old .xls file: pip install xlrd, or save it as .xlsx") from None
    book = xlrd.open_workbook(str(path))
    ws = book.sheet_by_name(sheet) if sheet in book.sheet_names() else book.sheet_by_index(0)
    return [tuple(ws.row_values(i)) for i in range(ws.nrows)]


@dataclass
class Table:
    """Rows under a located header; ``row_number`` is 1-based as a spreadsheet shows it."""

    path: Path
    header: list[str]  # normalised names; blank header cells are "" (pandas calls them "Unnamed: k")
    rows: list[tuple[int, Row]]

    def column(self, *names: str) -> int | None:
        """Index of the first column whose normalised name is one of ``names``."""
        for n in names:
            if n in self.header:
                return self.header.index(n)
        return None

    def require(self, *names: str) -> int:
        idx = self.column(*names)
        if idx is None:
            raise UserError(f"{self.path.name}: no column named {' or '.join(names)} in its header row "
                            f"(found: {', '.join(h for h in self.header if h) or 'nothing'})")
        return idx


def find_table(path: Path, first_cell: str = "subject", sheet: str | None = None,
               header: bool = True) -> Table:
    """The table of ``path`` whose header row starts with ``first_cell`` (any row)."""
    rows = read_rows(path, sheet)
    if not header:
        return Table(path, [], [(i + 1, r) for i, r in enumerate(rows) if any(cell_text(c) for c in r)])
    for i, r in enumerate(rows):
        if r and norm(r[0]) == first_cell:
            names = [norm(c) for c in r]
            body = [(j + 1, rr) for j, rr in enumerate(rows) if j > i and any(cell_text(c) for c in rr)]
            return Table(path, names, body)
    raise UserError(f"{path.name}: no header row whose first cell is {first_cell!r}; "
                    "is this the right annotation file?")


def get(row: Row, idx: int | None) -> Any:
    return row[idx] if idx is not None and idx < len(row) else None


def folder_levels(root: Path, max_depth: int = 4) -> Iterator[list[tuple[Path, list[Path]]]]:
    """The folders under ``root``, breadth first, each with its sorted entries: ``root`` first, then its
    subfolders, and so on to ``max_depth`` levels below it. Each folder is listed once; folders that cannot
    be read are passed over."""
    level = [root]
    for _ in range(max_depth + 1):
        listed: list[tuple[Path, list[Path]]] = []
        for d in level:
            try:
                listed.append((d, sorted(d.iterdir())))
            except OSError:
                continue
        yield listed
        level = [e for _, entries in listed for e in entries if e.is_dir()]


def any_file(folder: Path, patterns: Iterable[str], max_depth: int = 4) -> Path | None:
    """The first file under ``folder`` (breadth first, to ``max_depth``) matching a glob pattern."""
    for level in folder_levels(folder, max_depth):
        for _, entries in level:
            files = [e for e in entries if e.is_file()]
            for pat in patterns:
                hits = [e for e in files if e.match(pat)]
                if hits:
                    return hits[0]
    return None
