"""Spreadsheets and CSV files written byte-for-byte reproducibly.

openpyxl stamps the creation time into ``docProps/core.xml`` and the zip
entries; both are pinned here so the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from edge_mer.atomic import write_bytes

FIXED_TIME = dt.datetime(2020, 1, 1, 0, 0, 0)

Cell = Union[str, int, float, None]


def write_xlsx(path: Path, rows: Sequence[Sequence[Cell]], sheet: str = "Sheet1") -> None:
    """Write ``rows`` (None leaves a cell empty) to one worksheet of ``path``."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = sheet
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row, start=1):
            if value is not None:
                ws.cell(row=r, column=c, value=value)
    wb.properties.creator = "edge-mer synth"
    wb.properties.created = FIXED_TIME
    wb.properties.modified = FIXED_TIME
    raw = io.BytesIO()
    wb.save(raw)
    write_bytes(path, _pin_zip(raw.getvalue()))


def _pin_zip(data: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                body = _pin_core(body)
            pinned = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME.timetuple()[:6])
            pinned.compress_type = zipfile.ZIP_DEFLATED
            pinned.external_attr = 0o644 << 16
            dst.writestr(pinned, body)
    return out.getvalue()


def _pin_core(body: bytes) -> bytes:
    stamp = FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    return re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(<)", rb"\g<1>" + stamp + rb"\g<2>", body)


def write_csv(path: Path, rows: Sequence[Sequence[Cell]], header: Sequence[str] | None = None) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    write_bytes(path, buf.getvalue().encode())
