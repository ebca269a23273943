"""Subject diversity for synthetic recognition data.

Real micro-expression datasets are hard under leave-one-subject-out because people differ: how strongly they
move, whether one side of the face moves more than the other, how fast, which action units (AUs) a feeling
shows up in, and how reliably a coder labels it. ``Diversity`` says how far each of these varies; a
``SubjectStyle`` is one person's habits (drawn once per subject), and ``vary_sample`` turns one coded sample
(emotion and AU pattern) into what is rendered for that person and what the annotation says.

Ranges follow what the datasets' papers and coding show rather than a fit: apex displacements of a few tenths
of a pixel to a few pixels at 112, durations of 1/25 s to 1/2 s, one-sided AUs (R14, L2) in the codes, and a
coded label that does not always match the AUs (MEGC2019 maps labels, not AUs, to its classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_mer.synth.aus import ACTION_UNITS, AUCode

#: AUs that may show weakly beside a pattern (a person's habitual tension, a swallow, a squint).
LEAK_AUS = (1, 4, 6, 7, 10, 14, 17, 25)
#: AUs a pattern never loses when one of its AUs is dropped: they make the class (smile, raised brows).
KEY_AUS = frozenset({1, 2, 12})


@dataclass(frozen=True)
class Diversity:
    """How much synthetic subjects and their samples differ (``none()`` switches everything off)."""

    amplitude: tuple[float, float] = (0.5, 2.0)  # a subject's gain on every AU (log-uniform)
    asymmetry: tuple[float, float] = (0.0, 0.6)  # a subject's weaker side moves by (1 - a) of the other
    tempo: tuple[float, float] = (0.7, 1.4)  # a subject's factor on the duration of an expression
    rise: tuple[float, float] = (0.3, 0.6)  # a subject's usual share of the duration from onset to apex
    au_gain: tuple[float, float] = (0.7, 1.3)  # per sample and AU
    drop_au: float = 0.25  # a multi-AU pattern loses one of its AUs that is not a key AU
    extra_au: float = 0.25  # one weak AU outside the pattern (gain 0.2-0.45)
    ambiguous: float = 0.06  # another class's pattern shows as well, at 0.4-0.8 of the sample's strength
    mislabelled: float = 0.04  # the annotation names another class than the AUs show
    class_shares: tuple[float, float, float] = (0.57, 0.25, 0.18)  # negative, positive, surprise (MEGC2019)
    identity_spread: float = 1.6  # factor on the range of the identity warps (face shape, tone, light)

    @classmethod
    def none(cls) -> Diversity:
        return cls(amplitude=(1.0, 1.0), asymmetry=(0.0, 0.0), tempo=(1.0, 1.0), au_gain=(1.0, 1.0), drop_au=0.0,
                   extra_au=0.0, ambiguous=0.0, mislabelled=0.0, identity_spread=1.0)


@dataclass(frozen=True)
class SubjectStyle:
    """One synthetic person's habits."""

    gain: float
    asymmetry: float
    weak_side: str  # "R" or "L": the subject's own side that moves less
    tempo: float
    rise: tuple[float, float]  # range of the onset-to-apex share of the duration


def draw_style(div: Diversity, rng: np.random.Generator) -> SubjectStyle:
    lo, hi = div.amplitude
    gain = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    centre = float(rng.uniform(*div.rise))
    return SubjectStyle(gain=gain, asymmetry=float(rng.uniform(*div.asymmetry)),
                        weak_side=str(rng.choice(["R", "L"])), tempo=float(rng.uniform(*div.tempo)),
                        rise=(max(0.15, centre - 0.08), min(0.85, centre + 0.08)))


@dataclass(frozen=True)
class Varied:
    """What one sample shows and what its annotation says."""

    aus: tuple[AUCode, ...]  # rendered, sides split where the subject is asymmetric
    gains: tuple[float, ...]  # per rendered AU, on top of the sample's amplitude
    coded_aus: tuple[AUCode, ...]  # what the annotation's AU column says (weak extra AUs are not coded)
    note: str  # "", "ambiguous" (another class's AUs show too) or "mislabelled" (the label is another class's)


def _has_sides(number: int) -> bool:
    return any(not b.midline for b in ACTION_UNITS[number].bumps)


def _split_sides(aus: list[AUCode], gains: list[float], style: SubjectStyle) -> tuple[list[AUCode], list[float]]:
    """A bilateral AU of an asymmetric subject: both sides at the weaker side's gain, plus the stronger side
    alone at the difference (midline parts move with the stronger side)."""
    strong = "L" if style.weak_side == "R" else "R"
    out_aus: list[AUCode] = []
    out_gains: list[float] = []
    for code, g in zip(aus, gains):
        if code.side == "" and style.asymmetry > 0 and _has_sides(code.number):
            out_aus += [code, AUCode(code.number, strong)]
            out_gains += [g * (1 - style.asymmetry), g * style.asymmetry]
        else:
            out_aus.append(code)
            out_gains.append(g * (1 - style.asymmetry) if code.side == style.weak_side else g)
    return out_aus, out_gains


def vary_sample(div: Diversity, style: SubjectStyle, pattern: list[AUCode], other_pattern: list[AUCode],
                rng: np.random.Generator) -> Varied:
    """``pattern``: the sample's AU pattern; ``other_pattern``: one of another class, shown when the sample is
    ambiguous. Draws are made in a fixed order whatever happens, so a sample's randomness does not depend on
    the choices before it."""
    u_drop, u_extra, u_amb, u_label = rng.random(4)
    gains_drawn = rng.uniform(*div.au_gain, size=len(pattern) + len(other_pattern) + 1)
    extra = int(rng.choice(LEAK_AUS))
    extra_gain = float(rng.uniform(0.2, 0.45))
    amb_gain = float(rng.uniform(0.4, 0.8))
    drop_pick = int(rng.integers(0, 1 << 16))

    aus = list(pattern)
    droppable = [i for i, c in enumerate(aus) if c.number not in KEY_AUS]
    if len(aus) > 1 and droppable and u_drop < div.drop_au:
        del aus[droppable[drop_pick % len(droppable)]]
    gains = [float(g) for g in gains_drawn[:len(aus)]]
    coded = list(aus)
    note = ""
    if u_amb < div.ambiguous:
        note = "ambiguous"
        for j, code in enumerate(other_pattern):
            if code.number not in {c.number for c in aus}:
                aus.append(code)
                gains.append(amb_gain * float(gains_drawn[len(pattern) + j]))
                coded.append(code)
    present = {c.number for c in aus}
    if u_extra < div.extra_au and extra not in present:
        aus.append(AUCode(extra))
        gains.append(extra_gain)
    if u_label < div.mislabelled:
        note = "mislabelled"
    aus, gains = _split_sides(aus, gains, style)
    return Varied(tuple(aus), tuple(gains), tuple(coded), note)
