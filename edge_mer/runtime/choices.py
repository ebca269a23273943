"""Choices a machine makes once and keeps: which precision of a model ONNX Runtime runs faster on this CPU,
which layout of the CUDA flow solve is fastest on this GPU. Measured the first time, kept in a JSON file of
the user's cache folder (like TensorRT's timing cache) under a key naming everything the measurement depends
on, so that another model, GPU, kernel build or version measures again."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from edge_mer.atomic import write_text


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-mer"


def _read(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # unreadable: measured again, and rewritten
    return known if isinstance(known, dict) else {}


def recall(name: str, key: str) -> dict[str, Any] | None:
    """What was kept under ``key`` in the cache file ``name``, or None."""
    found = _read(cache_dir() / name).get(key)
    return found if isinstance(found, dict) else None


def keep(name: str, key: str, value: dict[str, Any]) -> None:
    """Keep ``value`` under ``key`` in the cache file ``name``; a read-only home still runs (it measures again
    next time)."""
    path = cache_dir() / name
    known = _read(path)
    known[key] = value
    with contextlib.suppress(OSError):
        write_text(path, json.dumps(known, indent=2, sort_keys=True) + "\n")
