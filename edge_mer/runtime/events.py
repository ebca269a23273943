"""Recognition events: one JSON object per line, written and flushed one by one.

Every event reaches the disk (flush + fsync) before the loop goes on, so a
killed process loses nothing it has reported; stdout gets the same line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from edge_mer.errors import UserError


@dataclass
class Event:
    onset_ts: float
    apex_ts: float
    offset_ts: float
    onset: int
    apex: int
    offset: int
    label: str
    probs: dict[str, float]
    latency_ms: float  # from the arrival of the offset frame to this event
    score: float = 0.0
    truth: str | None = None  # demo: the matched truth event, when there is one

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        if d["truth"] is None:
            del d["truth"]
        return json.dumps(d, sort_keys=True)


class EventWriter:
    """JSON lines to a file (appended, fsynced per event) and/or stdout."""

    def __init__(self, path: Path | None = None, stdout: bool = True) -> None:
        self.path = path
        self.stdout = stdout
        self.count = 0
        self._f: IO[str] | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
            except OSError as exc:
                raise UserError(f"cannot write events to {path}: {exc.strerror}") from None

    def write(self, event: Event) -> None:
        line = event.to_json()
        if self._f is not None:
            self._f.write(line + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        if self.stdout:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
