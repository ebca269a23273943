"""Argument types that refuse impossible values when the command line is read, before any work starts, and
the parser that says so in one line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line ending in one ``edge-mer: error:`` line (and exit 2) like every other
    error a user can cause, instead of the usage text and a second line."""

    def error(self, message: str) -> NoReturn:
        print(f"edge-mer: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer type for argparse: ``low`` <= value (<= ``high``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def positive(text: str) -> float:
    """A finite number above zero (seconds, frame rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def face_choice(text: str) -> str:
    """``--face``: largest, central, left, right or X,Y (checked here, used by ``edge_mer.face.mesh.picker``)."""
    from edge_mer.errors import UserError

    try:
        from edge_mer.face.mesh import picker
    except ImportError:  # no OpenCV: the command says so in its one line, before the choice is needed
        return text.strip().lower()
    try:
        picker(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--face ", "", 1)) from None
    return text.strip().lower()


FACE_HELP = ("which face to follow when there are several: largest (default; ties: the most central), central, "
             "left, right, or X,Y (the one nearest that pixel); once followed it stays the same person")


def frame_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT, each at least 32 pixels."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError("frames must be at least 32x32")
    return w, h


def sink_uri(text: str) -> Any:
    """``--events``: a file, mqtt[s]:// or http(s):// sink (``edge_mer.runtime.sinks.parse_sink``)."""
    from edge_mer.errors import UserError
    from edge_mer.runtime.sinks import parse_sink

    try:
        return parse_sink(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--events ", "", 1)) from None


def serve_address(text: str) -> tuple[str, int]:
    """``--serve``: ``PORT`` or ``HOST:PORT`` (``[v6]:PORT``) -> (host, port); 127.0.0.1 unless a host is given."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected PORT or HOST:PORT (e.g. 8080 or 0.0.0.0:8080), got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def setting(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE``: a setting (a training or model field, an Ansible variable); VALUE is read as JSON when
    it is JSON (lists, numbers, true)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE with KEY a variable name, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
