"""Diverse synthetic subjects: people move with their own strength, asymmetry and tempo, a class shows in
more than one AU combination, and the coding is sometimes wrong, as in the real datasets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, tree_digest

from edge_mer.data.labels import composite_class
from edge_mer.data.synthetic import (
    COMPOSITE_CSV,
    COMPOSITE_SAMPLES,
    COMPOSITE_SHARE,
    MANIFEST,
    DatasetConfig,
    composite_counts,
    write_dataset,
)
from edge_mer.errors import UserError
from edge_mer.synth.aus import AUCode, parse_aus
from edge_mer.synth.diversity import Diversity, SubjectStyle, draw_style, vary_sample
from edge_mer.synth.faces import make_subject
from edge_mer.synth.render import FaceRenderer, default_face_iod
from edge_mer.synth.timeline import PlannedExpression, activations

SMALL = ("--size", "128x96", "--fps", "40", "--quiet")
SIZE = (112, 112)


def _apex_motion(style: SubjectStyle, pattern: str) -> tuple[float, float]:
    """Rendered displacement (pixels) at the subject's right and left mouth corners at the apex."""
    varied = vary_sample(Diversity(drop_au=0, extra_au=0, ambiguous=0, mislabelled=0, au_gain=(1, 1)), style,
                         parse_aus(pattern), [], np.random.default_rng(0))
    ev = PlannedExpression("micro", 0, 5, 10, varied.aus, 2.0, "happiness", varied.gains)
    r = FaceRenderer(make_subject(0, 0), SIZE, default_face_iod(SIZE))
    field = r.displacement(activations([ev], 5)[0])
    assert field is not None

    def at(name: str) -> float:
        x, y = (int(round(v)) for v in r.points[name])
        return float(np.linalg.norm(field[y - 1:y + 2, x - 1:x + 2], axis=-1).max())

    return at("mouth_corner_r"), at("mouth_corner_l")


def test_an_asymmetric_subject_smiles_more_on_one_side():
    even = SubjectStyle(gain=1.0, asymmetry=0.0, weak_side="R", tempo=1.0, rise=(0.3, 0.6))
    right, left = _apex_motion(even, "12")
    assert right == pytest.approx(left, rel=0.05)
    lopsided = SubjectStyle(gain=1.0, asymmetry=0.5, weak_side="R", tempo=1.0, rise=(0.3, 0.6))
    weak, strong = _apex_motion(lopsided, "12")
    assert strong == pytest.approx(left, rel=0.05)  # the stronger side moves as before
    assert weak == pytest.approx(0.5 * strong, rel=0.15)


def test_without_diversity_a_sample_is_its_pattern():
    style = draw_style(Diversity.none(), np.random.default_rng(1))
    assert (style.gain, style.asymmetry, style.tempo) == (1.0, 0.0, 1.0)
    varied = vary_sample(Diversity.none(), style, parse_aus("1+2+5"), parse_aus("12"), np.random.default_rng(2))
    assert varied.aus == tuple(parse_aus("1+2+5")) and varied.gains == (1.0, 1.0, 1.0) and varied.note == ""


def test_samples_vary_within_a_class_and_are_sometimes_ambiguous_or_mislabelled():
    div = Diversity()
    rng = np.random.default_rng(3)
    styles = [draw_style(div, rng) for _ in range(400)]
    gains = np.array([s.gain for s in styles])
    assert gains.min() >= 0.5 and gains.max() <= 2.0 and (gains < 0.75).mean() > 0.15 and (gains > 1.4).mean() > 0.15
    notes, shapes = [], set()
    for i in range(3000):
        v = vary_sample(div, styles[i % 400], parse_aus("1+2+5"), parse_aus("4+7"), rng)
        notes.append(v.note)
        shapes.add(tuple(sorted({c.number for c in v.aus})))
        assert {1, 2} <= {c.number for c in v.aus}  # the key AUs of surprise are never dropped
    assert len(shapes) >= 8  # 1+2, 1+2+5, with a weak extra AU, with another class's AUs ...
    assert notes.count("mislabelled") / 3000 == pytest.approx(div.mislabelled, abs=0.012)
    ambiguous = notes.count("ambiguous") / 3000  # some ambiguous samples are also mislabelled
    assert ambiguous == pytest.approx(div.ambiguous * (1 - div.mislabelled), abs=0.015)


def test_clips_per_subject_like_the_composite_are_uneven_and_sum_to_its_size():
    counts = composite_counts(0)
    assert {k: len(v) for k, v in counts.items()} == COMPOSITE_SHARE
    assert counts["smic"] and sum(counts["smic"]) == COMPOSITE_SAMPLES["smic"]  # SMIC has no excluded labels
    for dataset in ("casme2", "samm"):  # written with the clips MEGC2019 leaves out for their labels
        assert COMPOSITE_SAMPLES[dataset] < sum(counts[dataset]) < 1.2 * COMPOSITE_SAMPLES[dataset]
    assert all(min(v) >= 1 and max(v) >= 4 * min(v) for v in counts.values())
    assert composite_counts(0) == counts and composite_counts(1) != counts


def test_like_composite_needs_the_composite_layout_and_its_subjects(tmp_path):
    with pytest.raises(UserError, match="megc2019 layout and its 68 subjects"):
        write_dataset(DatasetConfig(layout="megc2019", subjects=12, like_composite=True), tmp_path / "x", False)


def test_a_diverse_composite_on_disk(tmp_path):
    out = tmp_path / "diverse"
    proc = run_cli("synth", "dataset", "--layout", "megc2019", "--diverse", "--subjects", "6",
                   "--clips-per-subject", "5", "--out", str(out), "--json", *SMALL, check=True)
    summary = json.loads(proc.stdout)
    doc = json.loads((out / MANIFEST).read_text())
    styles = doc["subject_styles"]
    assert len(styles) == 6 and len({round(s["gain"], 6) for s in styles.values()}) == 6
    clips = doc["clips"]
    assert summary["samples"] == len(clips) == 30
    for c in clips:
        assert c["shown"] and c["note"] in ("", "ambiguous", "mislabelled")
        if c["note"] == "mislabelled":  # the sheet names a class the face did not show
            assert composite_class(c["dataset"], c["emotion"]) != composite_class(c["dataset"], c["shown"])
        else:
            assert c["emotion"] == c["shown"]
    gt = pd.read_csv(out / COMPOSITE_CSV, header=None, names=["db", "subject", "filename", "label"], dtype=str)
    assert len(gt) == sum(1 for c in clips if c["composite"])  # the composite file carries the coded labels
    casme = pd.read_excel(out / "CASME2/CASME2-coding-20190701.xlsx")
    coded = [c for c in clips if c["dataset"] == "casme2"]
    assert list(casme["Estimated Emotion"]) == [c["emotion"] for c in coded]
    assert list(casme["Action Units"].astype(str)) == [c["aus"] for c in coded]


def test_a_diverse_dataset_is_reproducible(tmp_path):
    args = ("synth", "dataset", "--layout", "smic", "--diverse", "--subjects", "2", "--clips-per-subject", "2")
    for name in ("a", "b"):
        run_cli(*args, "--out", str(tmp_path / name), *SMALL, check=True)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_wider_identity_warps_make_subjects_further_apart():
    base = make_subject(3, 0)
    narrow, wide = make_subject(3, 0, 1.0), make_subject(3, 0, 2.0)
    assert narrow.params == base.params
    assert abs(wide.params.face_width - 1) == pytest.approx(2 * abs(base.params.face_width - 1), rel=1e-6)
    assert wide.params.photo == base.params.photo


def test_one_sided_codes_of_the_weak_side_are_weaker():
    style = SubjectStyle(gain=1.0, asymmetry=0.4, weak_side="L", tempo=1.0, rise=(0.3, 0.6))
    v = vary_sample(Diversity(drop_au=0, extra_au=0, ambiguous=0, mislabelled=0, au_gain=(1, 1)), style,
                    [AUCode(14, "L"), AUCode(12, "R")], [], np.random.default_rng(0))
    assert dict(zip(v.aus, v.gains)) == {AUCode(14, "L"): pytest.approx(0.6), AUCode(12, "R"): 1.0}
