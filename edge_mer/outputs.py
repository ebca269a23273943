"""A command's outputs, checked before its work starts and written so that a kill leaves the old result or the
whole new one.

* an output that is one of the command's own inputs (or a folder holding one) is refused, ``--force`` or not:
  replacing it would destroy what the result is made from;
* an existing result (a file, a non-empty folder) is refused unless ``--force``;
* an output whose folder cannot be created or written is refused, before minutes of work are lost at the end.

Single files go through :mod:`edge_mer.atomic`; a command that writes a whole folder (a training run, a
synthetic dataset) builds it beside its destination and swaps it in when it is complete (:func:`staged_folder`).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_mer.errors import UserError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _creatable(path: Path, flag: str) -> None:
    """The nearest existing folder above ``path`` exists as a folder and may be written."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable")


def check_file(out: Path, *, inputs: Iterable[Path | str | None] = (), force: bool = False,
               flag: str = "--out") -> None:
    """Before the work: ``out`` is neither an input nor (without ``force``) an earlier result, and can be
    written."""
    out = Path(out)
    for item in inputs:
        if item is not None and _same(out, Path(item)):
            raise UserError(f"{flag} {out} is also this command's input; write the result to another file")
    if out.is_dir():
        raise UserError(f"{flag} {out} is a folder; give a file name")
    if out.exists() and not force:
        raise UserError(f"{flag} {out} exists; pass --force to replace it, or choose another name")
    _creatable(out, flag)


def check_folder(out: Path, *, inputs: Iterable[Path | str | None] = (), force: bool = False,
                 flag: str = "--out") -> None:
    """Before the work: ``out`` holds none of the inputs, is empty or absent (without ``force``), and can be
    made."""
    out = Path(out)
    if _inside(Path.cwd(), out):  # replaced whole: never the folder this command runs in, nor one above it
        raise UserError(f"{flag} {out} is the working folder or holds it; give the result a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file; give a folder")
    for item in inputs:
        if item is not None and out.exists() and _inside(Path(item), out):
            raise UserError(f"{flag} {out} holds this command's input {item}; write the result to another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{flag} {out} is not empty (an earlier result?); pass --force to replace it, "
                        "or choose another folder")
    _creatable(out, flag)  # the folder is made beside it and renamed into its place
    if out.is_dir():
        _creatable(out / "x", flag)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` to write the whole result into; when the block ends without an error it
    replaces ``out`` (an earlier one is removed only once the new one is in place), otherwise it is removed.
    A kill while the block runs leaves ``out`` as it was and a hidden ``.NAME.*.part`` folder."""
    out = Path(out).resolve()  # '.' or 'run/..' have no name to put beside them
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = out.with_name(f".{out.name}.{tag}.part")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.{tag}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
