"""Scores split by what a synthetic dataset's generator knows about each sample.

A diverse synthetic dataset (``synth dataset --diverse``) records in its SYNTHETIC_MANIFEST.json, for every clip,
the expression the face really shows, whether the annotation names another class on purpose ("mislabelled") or the
face shows a second class's action units as well ("ambiguous"), and how strongly the subject moved (the amplitude
in pixels of the 112-pixel aligned crop, the subject's gain included). With that a prediction file says more than
its UF1: how far the model is from the best any model can score against the annotation (an oracle that reads every
face right still disagrees with each mislabelled annotation), and whether its errors sit with the weak movers, the
ambiguous faces or the mislabelled samples, which coded action units it misreads and which subjects (with the gain
and asymmetry each was drawn with). Real datasets record none of this; these figures exist for synthetic data only.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
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
from edge_mer.synth.aus import format_aus, parse_aus

NOTES = ("clean", "ambiguous", "mislabelled")


@dataclass(frozen=True)
class SampleTruth:
    shown: str  # the composite class the face shows ("": a class outside the composite, e.g. "others")
    note: str  # one of NOTES
    amplitude: float  # displacement at the apex in pixels of the 112-pixel crop, the subject's gain included
    dataset: str = ""  # "casme2", "samm" or "smic"
    aus: str = ""  # the action units the annotation codes, in order ("1+2+5"; "R12": the right side only)


def coded_aus(text: str) -> str:
    """An annotation's AU column in one spelling: codes sorted by number, then side ("12+R14", "1+2+5")."""
    return format_aus(sorted(parse_aus(str(text).replace(",", "+")), key=lambda c: (c.number, c.side)))


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
        out[f"{c['dataset']}/{c['subject']}/{c['clip']}"] = SampleTruth(
            shown, c.get("note") or "clean", float(c["amplitude"]), c["dataset"], coded_aus(c.get("aus", "")))
    return out


def ceiling(truth: dict[str, SampleTruth], ids: Sequence[str], labels: Sequence[int],
            names: Sequence[str]) -> dict[str, float]:
    """UF1, UAR and accuracy against the annotation of a model that names every face's shown class: the most a
    model can score. A face that shows a class outside the composite counts as named by its annotation (no
    model could know better), so this bounds from above."""
    oracle = [names.index(truth[i].shown) if truth[i].shown in names else int(y) for i, y in zip(ids, labels)]
    return _named_scores(labels, oracle, names)


def _named_scores(labels: Sequence[int], named: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    """UF1, UAR and accuracy of the classes ``named`` against the annotation ``labels``."""
    s = scores(np.asarray(labels), np.asarray(named), names)
    return {"uf1": s.uf1, "uar": s.uar, "accuracy": s.accuracy}


def coded_reference(truth: dict[str, SampleTruth], ids: Sequence[str], labels: Sequence[int],
                    names: Sequence[str]) -> dict[str, float]:
    """UF1, UAR and accuracy against the annotation of a reader of the coded action units: each sample named
    by the class annotated most often for the same dataset and AU code among the other samples of ``ids``
    (its shown class where no other sample has that code or where the shown class is among those tied).

    A model sees motion, not codes; this says how far the codes, as the draw uses them, decide the annotated
    class (fear without its brow lowerer is coded as surprise is; a weak extra AU is not coded). Neither an
    upper bound nor a model's score: the codes do not record how strongly or how symmetrically the subject
    moved, which the motion a model reads does."""
    groups: dict[tuple[str, str], Counter[int]] = {}
    for i, y in zip(ids, labels):
        groups.setdefault((truth[i].dataset, truth[i].aus), Counter())[int(y)] += 1
    named = []
    for i, y in zip(ids, labels):
        others = groups[(truth[i].dataset, truth[i].aus)].copy()
        others[int(y)] -= 1
        shown = names.index(truth[i].shown) if truth[i].shown in names else int(y)
        most = max(others.values(), default=0)
        tied = sorted(k for k, n in others.items() if n == most and n > 0)
        named.append(shown if not tied or shown in tied else tied[0])
    return _named_scores(labels, named, names)


#: A pattern of samples: (dataset, coded AUs, annotated class, note)
Pattern = tuple[str, str, str, str]


def pattern_errors(truth: dict[str, SampleTruth], ids: Sequence[str], labels: Sequence[int], pred: Sequence[int],
                   names: Sequence[str], into: dict[Pattern, list[int]] | None = None) -> dict[Pattern, list[int]]:
    """Per pattern (dataset, coded action units, annotated class, note): [samples, wrong, wrong as each of
    ``names``], added to ``into`` when given (to pool runs, which may score other draws)."""
    counts = {} if into is None else into
    for i, y, p in zip(ids, labels, pred):
        t = truth[i]
        row = counts.setdefault((t.dataset, t.aus, names[int(y)], t.note), [0] * (2 + len(names)))
        row[0] += 1
        if int(p) != int(y):
            row[1] += 1
            row[2 + int(p)] += 1
    return counts


def patterns_table(counts: dict[Pattern, list[int]], names: Sequence[str], top: int = 12) -> list[str]:
    """Markdown lines: the ``top`` patterns with the most wrong answers, what they were read as."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:top]
    lines = ["| dataset | coded AUs | annotated | note | wrong | of | read as |", "|---|---|---|---|---:|---:|---|"]
    for (dataset, aus, label, note), row in rows:
        if not row[1]:
            break
        read = ", ".join(f"{names[k]} {n}" for k, n in enumerate(row[2:]) if n)
        lines.append(f"| {dataset} | {aus or '–'} | {label} | {note} | {row[1]} | {row[0]} | {read} |")
    return lines


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


def _kept(predictions: Path, data: Path) -> tuple[dict[str, SampleTruth], list[str], list[int], list[int]] | None:
    """A run's predictions.csv (``train``'s) read against the dataset at ``data``: the truth, the ids, the
    annotated and the predicted classes; None when the run left no predictions or the dataset has no manifest
    (not synthetic)."""
    if not predictions.is_file() or not (data / MANIFEST).is_file():
        return None
    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return read_truth(data), [r["id"] for r in rows], [int(r["truth"]) for r in rows], \
        [int(r["prediction"]) for r in rows]


def breakdown_of(predictions: Path, data: Path) -> dict[str, list[int]] | None:
    """``breakdown`` of a run's predictions.csv (``train``'s) against the dataset at ``data``; None when the run
    left no predictions or the dataset has no manifest (not synthetic)."""
    kept = _kept(predictions, data)
    if kept is None:
        return None
    truth, ids, labels, pred = kept
    return breakdown(truth, ids, labels, pred, amplitude_bands(truth, ids))


def misread_of(predictions: Path, data: Path, names: Sequence[str]) -> dict[str, list[list[Any]]] | None:
    """What a run's predictions.csv misreads, as a results file keeps it: ``"patterns"``, one row a pattern
    (``pattern_errors``: dataset, coded AUs, annotated class, note, samples, wrong, wrong as each of ``names``),
    and ``"subjects"``, one row a subject (subject, samples, wrong, its gain and asymmetry as the generator drew
    them); None as for ``breakdown_of``."""
    kept = _kept(predictions, data)
    if kept is None:
        return None
    truth, ids, labels, pred = kept
    styles = json.loads((data / MANIFEST).read_text()).get("subject_styles", {})

    def style(subject: str, key: str, default: float) -> float:
        return round(float(styles.get(subject, {}).get(key, default)), 3)

    subjects: dict[str, list[int]] = {}
    for i, y, p in zip(ids, labels, pred):
        row = subjects.setdefault(i.rsplit("/", 1)[0], [0, 0])
        row[0] += 1
        row[1] += int(int(y) != int(p))
    return {"patterns": [[*k, *v] for k, v in sorted(pattern_errors(truth, ids, labels, pred, names).items())],
            "subjects": [[s, n, wrong, style(s, "gain", 1.0), style(s, "asymmetry", 0.0)]
                         for s, (n, wrong) in sorted(subjects.items())]}


def misread_tables(runs: Sequence[dict[str, list[list[Any]]]], names: Sequence[str], top: int = 12) -> list[str]:
    """Markdown lines from ``misread_of`` of several runs (the seeds of one model), pooled (each sample counts once
    a run): the patterns misread most (``patterns_table``) and the subjects with the most wrong answers."""
    patterns: dict[Pattern, list[int]] = {}
    subjects: dict[str, list[Any]] = {}
    for r in runs:
        for row in r["patterns"]:
            into = patterns.setdefault(tuple(row[:4]), [0] * len(row[4:]))
            into[:] = [a + b for a, b in zip(into, row[4:])]
        for s, n, wrong, gain, asym in r["subjects"]:
            into_s = subjects.setdefault(s, [0, 0, gain, asym])
            into_s[0] += n
            into_s[1] += wrong
    lines = [*patterns_table(patterns, names, top), "",
             "| subject | wrong | of | gain | asymmetry |", "|---|---:|---:|---:|---:|"]
    for s, (n, wrong, gain, asym) in sorted(subjects.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]:
        if not wrong:
            break
        lines.append(f"| {s} | {wrong} | {n} | {gain:.2f} | {asym:.2f} |")
    return lines


def errors_table(groups: dict[str, list[dict[str, list[int]]]], top: dict[str, float] | None,
                 bands: tuple[float, float], coded: dict[str, float] | None = None,
                 heading: str = "## Where the errors are", pooled: str = "the seeds") -> list[str]:
    """Markdown lines: per group (model or variant), the accuracy per kind of sample, its runs pooled (over
    ``pooled``), under ``heading`` and a paragraph that explains the columns and gives the ceiling ``top`` and
    the coded AUs' reference ``coded`` (``coded_reference``) where known."""
    limits = "" if top is None else (
        f" A model that names every face's shown class would score at most UF1 {top['uf1']:.4f}, UAR "
        f"{top['uar']:.4f}, accuracy {top['accuracy']:.4f} against this draw's annotation: its ceiling.")
    if coded:
        limits += (f" Naming each sample by the class annotated most often for its dataset and coded action units "
                   f"among the other samples scores UF1 {coded['uf1']:.4f}, accuracy {coded['accuracy']:.4f}: "
                   "how far the codes decide the class.")
    lines = [heading, "",
             f"Accuracy against the annotation, {pooled} pooled. *clean*: the face shows the annotated class only; "
             "*ambiguous*: another class's action units show as well, weaker; *mislabelled*: the annotation names "
             "another class than the face shows, so a model that reads the face right is counted wrong. The clean "
             "samples are split into thirds by how far the face moves at the apex, in pixels of the 112-pixel "
             f"aligned crop (the subject's gain included): weak < {bands[0]} px, strong ≥ {bands[1]} px." + limits,
             "",
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
    names = MMTConfig().class_names
    return {"ceiling": ceiling(truth, fs.ids, fs.labels.tolist(), names),
            "coded_reference": coded_reference(truth, fs.ids, fs.labels.tolist(), names),
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
