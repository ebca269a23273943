"""How commands print what they report."""

from __future__ import annotations

import json
from typing import Any


def print_json(obj: Any) -> None:
    """One JSON document on stdout, keys sorted; paths and other objects as their text."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))
