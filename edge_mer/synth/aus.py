"""FACS action units as smooth local displacement fields, and emotions as AU sets.

Each AU is a few Gaussian "bumps" anchored at facial points; a bump moves the
skin around its anchor in one direction. Offsets and widths are in units of the
inter-ocular distance (IOD), so an AU looks the same on every face and at every
resolution. A field is normalised so its largest displacement is 1: multiplied
by an amplitude it moves the skin by at most that many pixels.

Directions are image directions (x right, y down) for the subject's right side
(the left of the image); the subject's left side is the mirror image. Midline
bumps (lips, chin, nose) have no side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from edge_mer.errors import UserError

Points = Dict[str, np.ndarray]


@dataclass(frozen=True)
class Bump:
    anchor: str  # point name without side suffix for bilateral bumps ("eye"), full name for midline
    offset: tuple[float, float]  # IOD units, for the subject's right side
    direction: tuple[float, float]  # image direction, subject's right side
    sigma: float  # IOD units
    weight: float = 1.0
    midline: bool = False


@dataclass(frozen=True)
class ActionUnit:
    number: int
    name: str
    bumps: tuple[Bump, ...]


def _b(anchor: str, off: tuple[float, float], d: tuple[float, float], s: float, w: float = 1.0) -> Bump:
    return Bump(anchor, off, d, s, w)


def _m(anchor: str, off: tuple[float, float], d: tuple[float, float], s: float, w: float = 1.0) -> Bump:
    return Bump(anchor, off, d, s, w, midline=True)


ACTION_UNITS: dict[int, ActionUnit] = {au.number: au for au in (
    ActionUnit(1, "inner brow raiser", (
        _b("brow_inner", (0, -0.02), (0, -1), 0.13), _b("brow_inner", (0, -0.2), (0, -1), 0.14, 0.5))),
    ActionUnit(2, "outer brow raiser", (
        _b("brow_outer", (0, -0.02), (0, -1), 0.13), _b("brow_outer", (0, -0.2), (0, -1), 0.14, 0.5))),
    ActionUnit(4, "brow lowerer", (
        _b("brow_inner", (0, 0), (0.45, 0.9), 0.14), _b("brow_mid", (0, 0), (0.2, 1.0), 0.14, 0.6))),
    ActionUnit(5, "upper lid raiser", (_b("eye", (0, -0.12), (0, -1), 0.08),)),
    ActionUnit(6, "cheek raiser", (
        _b("cheek", (0, -0.05), (-0.25, -1), 0.18), _b("eye", (0, 0.14), (0, -1), 0.08, 0.5))),
    ActionUnit(7, "lid tightener", (
        _b("eye", (0, 0.11), (0, -1), 0.08), _b("eye", (0, -0.11), (0, 1), 0.07, 0.4))),
    ActionUnit(9, "nose wrinkler", (
        _b("nose_wing", (0, -0.1), (0, -1), 0.11), _b("brow_inner", (0, 0.02), (0.2, 1.0), 0.1, 0.4))),
    ActionUnit(10, "upper lip raiser", (
        _m("upper_lip", (0, 0), (0, -1), 0.13), _b("nose_wing", (0, 0.13), (0, -1), 0.1, 0.6))),
    ActionUnit(12, "lip corner puller", (
        _b("mouth_corner", (0, 0), (-0.6, -0.8), 0.13), _b("cheek", (0, 0.1), (-0.3, -1), 0.18, 0.35))),
    ActionUnit(14, "dimpler", (_b("mouth_corner", (0, 0), (-1, 0), 0.09),)),
    ActionUnit(15, "lip corner depressor", (_b("mouth_corner", (0, 0.02), (-0.25, 1), 0.11),)),
    ActionUnit(17, "chin raiser", (
        _m("chin", (0, -0.08), (0, -1), 0.18), _m("lower_lip", (0, 0), (0, -1), 0.09, 0.5))),
    ActionUnit(25, "lips part", (
        _m("lower_lip", (0, 0), (0, 1), 0.09), _m("upper_lip", (0, 0), (0, -1), 0.07, 0.3))),
    ActionUnit(26, "jaw drop", (
        _m("chin", (0, 0), (0, 1), 0.28), _m("lower_lip", (0, 0), (0, 1), 0.14, 0.7))),
    ActionUnit(43, "eyes closed", (_b("eye", (0, -0.1), (0, 1), 0.1),)),
)}


@dataclass(frozen=True)
class AUCode:
    """One coded AU: its number and the side it acts on (``""`` both, ``"R"``, ``"L"``)."""

    number: int
    side: str = ""

    def __str__(self) -> str:
        return f"{self.side}{self.number}"


def parse_aus(text: str) -> list[AUCode]:
    """Parse a FACS string such as ``"4+L10"`` or ``"R14"``."""
    codes = []
    for part in str(text).replace(" ", "").split("+"):
        if not part:
            continue
        side = part[0] if part[0] in "RLB" else ""
        number = part[len(side):]
        if not number.isdigit() or int(number) not in ACTION_UNITS:
            raise UserError(f"unknown action unit {part!r} in {text!r}; known: "
                            + ", ".join(str(n) for n in ACTION_UNITS))
        codes.append(AUCode(int(number), "" if side == "B" else side))
    return codes


def format_aus(codes: list[AUCode]) -> str:
    return "+".join(str(c) for c in codes)


def _point(points: Points, anchor: str, side: str) -> np.ndarray:
    if anchor == "brow_mid":
        return np.asarray((points[f"brow_inner_{side}"] + points[f"brow_outer_{side}"]) / 2)
    return points[f"{anchor}_{side}"]


def au_field(code: AUCode, points: Points, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) float32 displacement of ``code`` on a face, peak magnitude 1."""
    h, w = shape
    iod = float(np.linalg.norm(points["eye_l"] - points["eye_r"]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w, 2), np.float32)
    sides = {"": ("r", "l"), "R": ("r",), "L": ("l",)}[code.side]
    for bump in ACTION_UNITS[code.number].bumps:
        for side in (("",) if bump.midline else sides):
            mirror = -1.0 if side == "l" else 1.0
            base = points[bump.anchor] if bump.midline else _point(points, bump.anchor, side)
            centre = base + np.array([mirror * bump.offset[0], bump.offset[1]]) * iod
            d = np.array([mirror * bump.direction[0], bump.direction[1]])
            d = d / np.linalg.norm(d)
            s = bump.sigma * iod
            g = bump.weight * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * s * s))
            field[..., 0] += g * d[0]
            field[..., 1] += g * d[1]
    peak = float(np.sqrt((field ** 2).sum(-1)).max())
    return field / peak if peak > 0 else field


# Emotions as AU patterns. Every native label of every layout maps to a list of
# patterns; a sample draws one. The composite classes follow MEGC2019.
NEGATIVE_PATTERNS = ["4", "4+7", "9", "10", "14", "15", "17", "15+17", "4+9"]
POSITIVE_PATTERNS = ["12", "6+12"]
SURPRISE_PATTERNS = ["1+2", "1+2+5", "1+2+25", "1+2+26"]

EMOTION_PATTERNS: dict[str, dict[str, list[str]]] = {
    # CASME II's five classes used by the literature.
    "casme2": {
        "happiness": POSITIVE_PATTERNS,
        "disgust": ["9", "10", "4+9", "4+7", "9+10"],
        "repression": ["14", "15", "17", "15+17", "R14"],
        "surprise": SURPRISE_PATTERNS,
        "others": ["4", "1", "2", "7", "L2", "R12"],
    },
    # SAMM's objective emotion labels ("Other" is excluded from the composite).
    "samm": {
        "Anger": ["4", "4+7"],
        "Contempt": ["R14", "L14", "R12"],
        "Disgust": ["9", "10", "9+10"],
        "Fear": ["1+2+4+5", "1+4"],
        "Happiness": POSITIVE_PATTERNS,
        "Sadness": ["1+4+15", "15", "15+17"],
        "Surprise": SURPRISE_PATTERNS,
        "Other": ["7", "2", "L2"],
    },
    # CAS(ME)^3 part A's emotion labels.
    "casme3": {
        "happy": POSITIVE_PATTERNS,
        "disgust": ["9", "10", "9+10"],
        "fear": ["1+2+4+5", "1+4"],
        "anger": ["4", "4+7"],
        "sad": ["1+4+15", "15"],
        "surprise": SURPRISE_PATTERNS,
        "others": ["7", "2"],
    },
    "smic": {
        "negative": NEGATIVE_PATTERNS,
        "positive": POSITIVE_PATTERNS,
        "surprise": SURPRISE_PATTERNS,
    },
    "composite": {
        "negative": NEGATIVE_PATTERNS,
        "positive": POSITIVE_PATTERNS,
        "surprise": SURPRISE_PATTERNS,
    },
}

