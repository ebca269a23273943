"""The one way edge-mer writes a file: into a temporary file beside it, flushed to disk, then renamed over it.

A reader, a crash or a kill sees the old file or the whole new one, never a part; a failed write leaves
the old file as it was and no temporary file behind. Every writer of results, caches, models and
sidecars goes through here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``np.savez``, ``onnx.save``); when
    the block ends without an error the file is synced and renamed to ``path``, otherwise it is removed.
    ``suffix``: an ending the writer insists on (``np.savez`` adds ``.npz`` to a name without it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part{suffix}")
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def replacing_together(*paths: Path) -> Iterator[list[Path]]:
    """``replacing`` for files that belong together (a model and its sidecar): a temporary path beside each; when
    the block ends without an error all are synced first and then renamed one right after the other, so a kill
    finds the earlier set or the new one, save for the microseconds between two renames."""
    tmps = []
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmps.append(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part{path.suffix}"))
    try:
        yield tmps
        for tmp in tmps:
            _sync(tmp)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
        for folder in {path.parent for path in paths}:
            _sync_folder(folder)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def writable_folder(path: Path) -> bool:
    """Whether a file can be written at ``path``: its folder exists and this process may write there (checked
    before long work, so that its result is not lost at the end)."""
    return path.parent.is_dir() and os.access(path.parent, os.W_OK)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """The rename itself reaches the disk with the folder's entry (POSIX); elsewhere this is a no-op."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename is still atomic
    finally:
        os.close(fd)
