"""Scores split by what a synthetic dataset's generator knows about each sample.

A diverse synthetic dataset (``synth dataset --diverse``) records in its SYNTHETIC_MANIFEST.json, for every
clip, the expression the face really shows, whether the annotation names another class on purpose
("mislabelled") or the face shows a second class's action units as well ("ambiguous"), and how strongly the
subject moved (the amplitude in pixels of the 112-pixel aligned crop, the subject's gain included). With that
a prediction file says more than its UF1: how far the model is from the best any model can score against the
annotation (an oracle that reads every face right still disagrees with each mislabelled annotation), and
whether its errors sit with the weak movers, the ambiguous faces or the mislabelled samples. Real datasets
record none of this; these figures exist for synthetic data only.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.atomic import write_text
from edge_mer.data.labels import composite_class
from edge_mer.data.synthetic import MANIFEST
from edge_mer.errors import UserError
from edge_mer.eval.metrics import scores
from edge_mer.features.cache import FeatureSet
from edge_mer.model.config import MMTConfig

NOTES = ("clean", "ambiguous", "mislabelled")


@dataclass(frozen=True)
class SampleTruth:
    shown: str  # the composite class the face shows ("": a class outside the composite, e.g. "others")
    note: str  # one of NOTES
    amplitude: float  # displacement at the apex in pixels of the 112-pixel crop, the subject's gain included


def read_truth(root: Path) -> dict[str, SampleTruth]:
    """Sample id (``dataset/subject/clip``, as the feature cache names it) -> its truth, from ``root``'s
    manifest."""
    path = Path(root) / MANIFEST
    try:
        clips = json.loads(path.read_text())["clips"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a synthetic dataset's manifest: {e}") from None
    out = {}
    for c in clips:
        shown = composite_class(c["dataset"], c.get("shown") or c["emotion"])
        out[f"{c['dataset']}/{c['subject']}/{c['clip']}"] = SampleTruth(shown, c.get("note") or "clean",
                                                                        float(c["amplitude"]))
    return out


def ceiling(truth: dict[str, SampleTruth], ids: Sequence[str], labels: Sequence[int],
            names: Sequence[str]) -> dict[str, float]:
    """UF1, UAR and accuracy against the annotation of a model that names every face's shown class: the most a
    model can score. A face that shows a class outside the composite counts as named by its annotation (no
    model could know better), so this bounds from above."""
    oracle = [names.index(truth[i].shown) if truth[i].shown in names else int(y) for i, y in zip(ids, labels)]
    s = scores(np.asarray(labels), np.asarray(oracle), names)
    return {"uf1": s.uf1, "uar": s.uar, "accuracy": s.accuracy}


def breakdown(truth: dict[str, SampleTruth], ids: Sequence[str], labels: Sequence[int], pred: Sequence[int],
              bands: tuple[float, float]) -> dict[str, list[int]]:
    """Accuracy against the annotation per note, and on the clean samples per amplitude band
    (``< bands[0]``, between, ``>= bands[1]`` pixels). Each entry: [right, of]."""
    missing = [i for i in ids if i not in truth]
    if missing:
        raise UserError(f"{len(missing)} predicted sample(s) are not in the dataset's manifest, e.g. {missing[0]}")
    counts: dict[str, list[int]] = {k: [0, 0] for k in (*NOTES, "weak", "middle", "strong")}
    for i, y, p in zip(ids, labels, pred):
        t, right = truth[i], int(int(y) == int(p))
        keys = [t.note]
        if t.note == "clean":
            keys.append("weak" if t.amplitude < bands[0] else "strong" if t.amplitude >= bands[1] else "middle")
        for k in keys:
            counts[k][0] += right
            counts[k][1] += 1
    return counts


def amplitude_bands(truth: dict[str, SampleTruth], ids: Sequence[str]) -> tuple[float, float]:
    """The thirds of the clean samples' amplitudes."""
    amps = [truth[i].amplitude for i in ids if i in truth and truth[i].note == "clean"]
    if not amps:
        raise UserError("no clean sample to take the amplitude bands from")
    lo, hi = np.percentile(amps, [100 / 3, 200 / 3])
    return round(float(lo), 3), round(float(hi), 3)


def breakdown_of(predictions: Path, data: Path) -> dict[str, list[int]] | None:
    """``breakdown`` of a run's predictions.csv (``train``'s) against the dataset at ``data``; None when the run
    left no predictions or the dataset has no manifest (not synthetic)."""
    if not predictions.is_file() or not (data / MANIFEST).is_file():
        return None
    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    truth = read_truth(data)
    ids = [r["id"] for r in rows]
    return breakdown(truth, ids, [int(r["truth"]) for r in rows], [int(r["prediction"]) for r in rows],
                     amplitude_bands(truth, ids))


def errors_table(groups: dict[str, list[dict[str, list[int]]]], top: dict[str, float],
                 bands: tuple[float, float]) -> list[str]:
    """Markdown lines: per group (model or variant), the accuracy per kind of sample, its runs pooled, under
    a paragraph that explains the columns and gives the ceiling ``top``."""
    lines = ["## Where the errors are", "",
             "Accuracy against the annotation, the seeds pooled. *clean*: the face shows the annotated class only; "
             "*ambiguous*: another class's action units show as well, weaker; *mislabelled*: the annotation names "
             "another class than the face shows, so a model that reads the face right is counted wrong. The clean "
             "samples are split into thirds by how far the face moves at the apex, in pixels of the 112-pixel "
             f"aligned crop (the subject's gain included): weak < {bands[0]} px, strong ≥ {bands[1]} px. A model "
             f"that names every face's shown class would score at most UF1 {top['uf1']:.4f}, UAR {top['uar']:.4f}, "
             f"accuracy {top['accuracy']:.4f} against this draw's annotation: its ceiling.", "",
             "| | clean | ambiguous | mislabelled | clean, weak | clean, middle | clean, strong |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, parts in groups.items():
        if not parts:
            continue
        cells = []
        for key in (*NOTES, "weak", "middle", "strong"):
            right, of = (sum(p[key][i] for p in parts) for i in (0, 1))
            cells.append(f"{right / of:.3f}" if of else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def draw_summary(data: Path, features: Path) -> dict[str, Any]:
    """What every table of a synthetic draw states once: the ceiling of its annotation and the amplitude
    bands, over the samples of the feature cache at ``features``."""
    fs = FeatureSet.load(features)
    truth = read_truth(data)
    return {"ceiling": ceiling(truth, fs.ids, fs.labels.tolist(), MMTConfig().class_names),
            "amplitude_bands": amplitude_bands(truth, fs.ids), "faces": rendered_faces(data)}


#: The photographs of every draw rendered before the manifest named them.
FIRST_FACES = ["astronaut", "hopper"]


def rendered_faces(data: Path) -> list[str]:
    """The photographs the synthetic subjects of ``data`` were drawn from, as its manifest records them."""
    return list(json.loads((Path(data) / MANIFEST).read_text()).get("faces", FIRST_FACES))


def other_draw(doc: dict[str, Any], data: Path, path: Path) -> str | None:
    """Why the runs of a results file ``doc`` (at ``path``) cannot share a table with runs on the synthetic draw
    at ``data``, rendered from other photographs; None when they can."""
    held, faces = doc.get("faces", FIRST_FACES), rendered_faces(data)
    if not doc.get("runs") or held == faces:
        return None
    return (f"{path} holds runs on subjects drawn from the photographs {', '.join(held)}; this draw is from "
            f"{', '.join(faces)}: move it aside (or choose another results name) to start a table of its own")


def save_runs(path: Path, doc: dict[str, Any]) -> None:
    """Write the results file ``doc`` (its runs under ``"runs"``) to ``path``, first taking into ``doc`` the runs
    that another benchmark process writing the same file saved in the meantime (a run of ``doc`` wins over the
    file's under the same key), so two processes side by side lose neither's runs."""
    if path.exists():
        doc["runs"] = {**json.loads(path.read_text())["runs"], **doc["runs"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
