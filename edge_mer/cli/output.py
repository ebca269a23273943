"""How commands print what they report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_mer.atomic import write_text
from edge_mer.errors import UserError


def print_json(obj: Any) -> None:
    """One JSON document on stdout, keys sorted; paths and other objects as their text."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_json(path: Path, obj: Any, what: str) -> None:
    """``obj`` as a JSON file, written atomically; an unwritable ``path`` is one line naming ``what`` it is."""
    try:
        write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write the {what} to {path}: {exc.strerror or exc}") from None
