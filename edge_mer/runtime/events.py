"""Recognition events: one JSON object per line, written and flushed one by one.

Every event reaches the disk (write + fsync) before the loop goes on, so a
killed process loses nothing it has reported; stdout gets the same line.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

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
    face: dict[str, Any] | None = None  # the face it was measured on: box (frame pixels) and alignment method
    person_gain: float | None = None  # a person-level model: the factor its motion was multiplied by

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        for optional in ("truth", "face", "person_gain"):
            if d[optional] is None:
                del d[optional]
        return json.dumps(d, sort_keys=True)


class EventOut(Protocol):
    """What the loop hands its events to (``EventWriter``, ``sinks.EventSinks``)."""

    def write(self, event: Event) -> None: ...


class EventWriter:
    """JSON lines to a file (appended, fsynced per event) and/or stdout.

    A line that cannot be written whole (a full disk, a removed USB stick) is cut off again, so the file holds
    only whole events; the loop goes on, the event still reaches stdout, and ``lost`` counts the events the
    file missed (``failure`` says why, once on stderr). The next event tries the file again: a disk that
    frees up gets the events that follow."""

    def __init__(self, path: Path | None = None, stdout: bool = True) -> None:
        self.path = path
        self.stdout = stdout
        self.count = 0
        self.lost = 0
        self.failure: str | None = None
        self._fd: int | None = None
        self._regular = False  # a plain file (not a FIFO or a terminal): whole lines can be kept there
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
                self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
                if self._regular:
                    self._drop_cut_event(self._fd, path)
            except OSError as exc:
                if self._fd is not None:
                    os.close(self._fd)
                raise UserError(f"cannot write events to {path}: {exc.strerror}") from None

    @staticmethod
    def _drop_cut_event(fd: int, path: Path) -> None:
        """Cut an event left half written by a kill or a full disk in an earlier run (a last line that starts
        like an event and has no end), so that the next one starts a line of its own. A file whose end is not
        such a line is not an events file: refused, never cut."""
        end = os.fstat(fd).st_size
        if end == 0:
            return
        with open(os.dup(fd), "rb", closefd=True) as f:
            f.seek(max(0, end - 65536))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        start = tail.rfind(b"\n") + 1
        if (start == 0 and end > len(tail)) or not tail[start:].startswith(b"{"):
            raise UserError(f"{path} does not end in events (JSON lines): is --events another file? Give the "
                            "events a file of their own")
        os.ftruncate(fd, end - len(tail) + start)

    def write(self, event: Event) -> None:
        self.write_line(event.to_json())

    def write_line(self, text: str) -> None:
        """One event already made JSON (``Event.to_json``), without its newline."""
        line = text + "\n"
        if self._fd is not None:
            self._append(line.encode("utf-8"))
        if self.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        self.count += 1

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        before = os.fstat(self._fd).st_size if self._regular else 0
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(28, os.strerror(28))  # a short write: the disk filled up mid-line
            if self._regular:
                os.fsync(self._fd)
        except OSError as exc:
            self.lost += 1
            if self._regular:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)  # only whole events stay in the file
            if self.failure is None:
                self.failure = f"cannot write events to {self.path}: {exc.strerror or exc}"
                print(f"warning: {self.failure}; they still go to stdout, and the file gets them again "
                      "once it can be written", file=sys.stderr)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
