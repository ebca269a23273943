"""What native libraries (FFmpeg inside OpenCV) write to file descriptor 2 behind Python's back, caught so that a
command can turn it into its own one-line error."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to stderr meanwhile, instead of letting it through.

    FFmpeg reports an unreadable file on file descriptor 2 before OpenCV returns; a
    command turns that into its own one-line error, and the lines are yielded for it.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter)
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [x.strip() for x in sink.read().decode(errors="replace").splitlines() if x.strip()]
