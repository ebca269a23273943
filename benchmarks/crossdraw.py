"""Cross-draw check: does a recipe change hold when the subjects change?

The recipe search (``benchmarks/recipe.py``) scores five folds of one development draw, so each fold trains on
about 54 subjects, and one draw of 68 subjects has a character of its own. Here each variant trains on every
sample of one development draw (68 subjects, as many as a LOSO fold's 67 plus one) and is scored on every
sample of another (68 other subjects), both ways: draws 1 and 2, neither of them the benchmark's draw 0. It
also scores the model on the samples it trained on (its fit, eval mode, no augmentation), which says whether a
model lacks capacity or data. A variant is a name of ``recipe.VARIANTS`` and trains on its features there.
Writes ``benchmarks/results/crossdraw.md`` and ``.json`` and resumes: runs already in the JSON are kept. Each
run keeps its class probabilities on the draw it is scored on (under ``--work``), from which the table adds,
per variant whose runs all kept them, the seeds' probabilities averaged, where the errors are (as the recipe
and recognition benchmarks split them) and the coded action units the reference variant misreads most; those
figures are kept in the JSON, so the table holds them where the predictions are gone (another machine).

    python benchmarks/crossdraw.py --variants ststnet-regions+head-removed,... [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from recipe import VARIANTS, WORK, Kind, _features_folder, extended, features_of, prepare_kind

from edge_mer.atomic import write_text
from edge_mer.errors import script_main
from edge_mer.eval.metrics import averaged, mean_and_spread, scores
from edge_mer.eval.truth import (
    amplitude_bands,
    breakdown,
    ceiling,
    coded_reference,
    errors_table,
    pattern_errors,
    patterns_table,
    read_truth,
    save_runs,
)
from edge_mer.model.config import model_config
from edge_mer.train.loop import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
DRAWS = (1, 2)
OTHER_DRAWS = "benchmarks/.work/crossdraw"  # draws other than 1: their data and features, and the runs' predictions
DIRECTIONS = ((1, 2), (2, 1))  # (trained on, scored on)
# the recipe's model: listed first, the variant others are compared with where the one they extend was not run
# here, and the one whose misread patterns are listed
REFERENCE = "ststnet-regions+head-removed"


def _draw_folder(work: Path, draw: int) -> Path:
    """Draw 1 is the recipe search's (its data and features are shared with it); others live under ``work``."""
    return Path(WORK) if draw == 1 else work / f"draw-{draw}"


def draw_features(work: Path, draw: int, kind: Kind) -> Path:
    """Draw ``draw``'s features of ``kind``, rendered and prepared where they are missing."""
    folder = _draw_folder(work, draw)
    out = folder / _features_folder(kind)
    prepare_kind(folder / "data", out, draw, kind)
    return out


def _features(work: Path, draw: int, name: str) -> Path:
    return draw_features(work, draw, features_of(name))


def run_variant(name: str, seed: int, features: dict[int, str], epochs: int, work: str) -> dict[str, Any]:
    """Both directions of one variant and seed, one after the other."""
    return combined(name, seed, {f"{a}->{b}": run_direction(name, seed, a, b, features, epochs, work)
                                 for a, b in DIRECTIONS})


def run_direction(name: str, seed: int, a: int, b: int, features: dict[int, str], epochs: int,
                  work: str) -> dict[str, Any]:
    """Variant ``name`` trained on all of draw ``a`` and scored on all of draw ``b`` (and on draw ``a``: its
    fit); its class probabilities on draw ``b`` kept under ``work``."""
    import numpy as np
    import torch

    from edge_mer.features.cache import FeatureSet
    from edge_mer.train.loop import predict, train_model

    torch.set_num_threads(1)
    model, train_changes, model_changes, _ = VARIANTS[name]
    train = replace(TrainConfig(epochs=epochs, seed=seed), **train_changes)
    cfg = model_config(model, size=112, changes=model_changes)
    start = time.time()
    on, to = FeatureSet.load(Path(features[a])), FeatureSet.load(Path(features[b]))
    # a model of person_rms reads each subject's motion scaled: by all of the subject's samples where trained, by
    # the subject's other samples where scored
    trained = on.motion_as_read(cfg.person_rms, scored=False)
    fit = train_model(cfg, train, trained, on.texture, on.labels, seed,
                      on_epoch=lambda e, loss: print(f"  {name} seed {seed}, draw {a} -> {b}: epoch {e + 1}/"
                                                     f"{train.epochs} loss {loss:.3f} ({time.time() - start:.0f} s)",
                                                     flush=True) if (e + 1) % 10 == 0 else None)
    probs = predict(fit, to.motion_as_read(cfg.person_rms, scored=True), to.texture)
    held = scores(to.labels, probs.argmax(1), cfg.class_names)
    kept = _predictions(Path(work), name, seed, a, b)
    kept.parent.mkdir(parents=True, exist_ok=True)
    np.savez(kept, ids=np.asarray(to.ids), labels=to.labels, probs=probs)
    own = scores(on.labels, predict(fit, trained, on.texture).argmax(1), cfg.class_names)
    return {"uf1": held.uf1, "uar": held.uar, "fit_uf1": own.uf1, "seconds": time.time() - start,
            "trained_on": len(on), "scored_on": len(to), "epochs": train.epochs}


def combined(name: str, seed: int, ways: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One run's record from its two directions' (``"1->2"``, ``"2->1"``)."""
    epochs = {w.pop("epochs") for w in ways.values()}
    return {"variant": name, "seed": seed, "epochs": epochs.pop(), **ways,
            "uf1": statistics.mean(ways[f"{a}->{b}"]["uf1"] for a, b in DIRECTIONS)}


def _predictions(work: Path, name: str, seed: int, a: int, b: int) -> Path:
    """Where a run keeps its class probabilities on the draw it is scored on (with the samples' ids and labels)."""
    return work / "predictions" / name / f"{seed}-{a}to{b}.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", required=True, help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--epochs", type=int, default=60, help="the recipe's epochs (variants may change them)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trainings side by side (a run's two "
                                                                      "directions are two)")
    ap.add_argument("--work", default=OTHER_DRAWS, help="draw 2's data and features, and the runs' predictions")
    ap.add_argument("--again", action="store_true", help="train the named variants' seeds again even where the "
                                                          "results hold them (e.g. to keep their predictions)")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    work = Path(args.work)
    feats = {n: {d: str(_features(work, d, n)) for d in DRAWS} for n in names}
    out_json = RESULTS / "crossdraw.json"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    todo = [(n, int(s)) for n in names for s in args.seeds.split(",")
            if args.again or f"{n}/{s}" not in doc["runs"]]
    print(f"{len(todo)} runs to do (two trainings each, side by side where --jobs allows), {args.jobs} trainings "
          "at a time", flush=True)
    ways: dict[tuple[str, int], dict[str, Any]] = {run: {} for run in todo}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = {pool.submit(run_direction, n, s, a, b, feats[n], args.epochs, str(work)): (n, s, f"{a}->{b}")
                for n, s in todo for a, b in DIRECTIONS}
        k = 0
        for done in as_completed(jobs):
            n, s, way = jobs[done]
            ways[n, s][way] = done.result()
            if len(ways[n, s]) < len(DIRECTIONS):
                continue
            r = combined(n, s, ways[n, s])
            doc["runs"][f"{n}/{s}"] = r
            doc |= {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
            save_runs(out_json, doc)
            k += 1
            print(f"[{k}/{len(todo)}] {n} seed {s}: UF1 {r['uf1']:.4f} (1->2 {r['1->2']['uf1']:.4f}, 2->1 "
                  f"{r['2->1']['uf1']:.4f})", flush=True)
    _table(doc, work)
    save_runs(out_json, doc)  # with the analysis the table made from the kept predictions


def _paired(doc: dict[str, Any], name: str, other: str, way: str = "") -> str:
    """The mean over the seeds both ran of ``name``'s UF1 less ``other``'s (of the direction ``way``, else of
    both's mean)."""
    runs = doc["runs"]

    def uf1(key: str) -> float:
        return runs[key][way]["uf1"] if way else runs[key]["uf1"]

    diffs = [uf1(f"{name}/{s}") - uf1(f"{other}/{s}") for s in _seeds(doc, name) if f"{other}/{s}" in runs]
    return f"{statistics.mean(diffs):+.4f}" if other and diffs else ""


def _seeds(doc: dict[str, Any], name: str) -> list[str]:
    return sorted(k.split("/")[-1] for k in doc["runs"] if k.rsplit("/", 1)[0] == name)


def _analyse(doc: dict[str, Any], work: Path, names: list[str]) -> None:
    """From the runs' kept predictions, for each variant whose runs all kept theirs: its seeds' probabilities
    averaged, where its errors are and the patterns it misreads most, as table rows in ``doc["analysis"]`` (so
    that the table keeps them when the predictions are gone), and the draws' limits in ``doc["limits"]``."""
    import numpy as np

    if not all((_draw_folder(work, d) / "data").is_dir() for d in DRAWS):
        return
    truths = {d: read_truth(_draw_folder(work, d) / "data") for d in DRAWS}
    merged = {f"{d}/{i}": t for d in DRAWS for i, t in truths[d].items()}
    class_names = model_config("ststnet_regions").class_names
    kept: dict[str, dict[tuple[int, int], list[Any]]] = {}
    for n in names:
        files = [(a, b, _predictions(work, n, int(s), a, b)) for s in _seeds(doc, n) for a, b in DIRECTIONS]
        if files and all(f.is_file() for _, _, f in files):
            for a, b, f in files:
                kept.setdefault(n, {}).setdefault((a, b), []).append(np.load(f))
    if not kept:
        return
    first = REFERENCE if REFERENCE in kept else next(iter(kept))
    limits = []
    for a, b in sorted(DIRECTIONS, key=lambda way: way[1]):
        one = kept[first][(a, b)][0]
        ids, labels = [str(i) for i in one["ids"]], one["labels"].tolist()
        top, coded = (f(truths[b], ids, labels, class_names) for f in (ceiling, coded_reference))
        limits.append(f"draw {b}'s annotation allows UF1 {top['uf1']:.4f} at most (naming every face's shown "
                      f"class), and naming each sample by the class annotated most often for its dataset and coded "
                      f"action units among the draw's other samples scores {coded['uf1']:.4f}")
    bands = amplitude_bands(merged, list(merged))
    doc["limits"] = {"text": "; ".join(limits), "bands": list(bands)}
    for n, ways in kept.items():
        cells, shared = [], []
        groups: list[dict[str, list[int]]] = []
        patterns: dict[Any, list[int]] = {}
        for (_, b), runs in ways.items():
            ids = [f"{b}/{i}" for i in runs[0]["ids"]]
            labels = runs[0]["labels"]
            together = averaged(labels, [r["probs"] for r in runs], class_names)
            cells.append(f"{together.scores.uf1:.4f}")
            shared.append(together.shared)
            for answer in (r["probs"].argmax(1) for r in runs):
                groups.append(breakdown(merged, ids, labels, answer, bands))
                pattern_errors(merged, ids, labels, answer, class_names, patterns)
        doc.setdefault("analysis", {})[n] = {
            "seeds": _seeds(doc, n), "averaged": f"| {n} | {' | '.join(cells)} | {statistics.mean(shared):.3f} |",
            "errors": errors_table({n: groups}, None, bands)[-1], "patterns": patterns_table(patterns, class_names)[2:]}


def _errors(doc: dict[str, Any], names: list[str]) -> list[str]:
    """Markdown lines from ``doc["analysis"]`` (``_analyse``): the draws' limits, the seeds averaged, where the
    errors are and the patterns the recipe's model (else the first variant listed) misreads most."""
    analysis = doc.get("analysis", {})
    have = [n for n in names if n in analysis]
    if not have or "limits" not in doc:
        return []
    reference = REFERENCE if REFERENCE in have else have[0]
    bands = doc["limits"]["bands"]
    return ["", "## Where the errors are", "",
            "From the probabilities each run kept on the draw it was scored on: " + doc["limits"]["text"] + ".", "",
            "The seeds' probabilities averaged, per direction, and how many answers the seeds share:", "",
            "| variant | 1 → 2 | 2 → 1 | answers shared |", "|---|---:|---:|---:|",
            *(analysis[n]["averaged"] for n in have), "",
            *errors_table({}, None, (bands[0], bands[1]), heading="### Where the errors are",
                          pooled="the seeds and both directions"),
            *(analysis[n]["errors"] for n in have), "",
            f"### The patterns `{reference}` misreads most", "",
            "Samples of one dataset with the same coded action units, annotated class and note; its runs' answers "
            "pooled over the seeds and both directions (so each sample counts once a seed).", "",
            *patterns_table({}, ()), *analysis[reference]["patterns"]]  # its header, then the rows kept


def _table(doc: dict[str, Any], work: Path) -> None:
    runs = doc["runs"]
    names = sorted({r["variant"] for r in runs.values()}, key=lambda n: (n != REFERENCE, list(VARIANTS).index(n)))
    lines = [f"# Cross-draw check of recipe variants ({doc.get('date')})", "",
             "Each variant of `benchmarks/results/recipe.md` trained on every sample of one development draw of the "
             "diverse composite (`synth dataset --layout megc2019 --diverse`, data seeds 1 and 2: 68 subjects each, "
             "none of them in the benchmark's draw 0) and scored on every sample of the other, both ways, 60 epochs "
             "(where the variant says no other), the last epoch's model. UF1: the mean of the two directions, then "
             "mean ± standard deviation over the training seeds; ΔUF1: the mean of the per-seed differences to the "
             f"variant it extends (to {REFERENCE} where that one was not run here); fit: UF1 on the samples it "
             "trained on (eval mode, no augmentation), the mean of "
             "both directions and seeds. Machine: " + str(doc.get("machine")) + ", one thread per run.", "",
             "Command: `python benchmarks/crossdraw.py --variants NAME[,NAME...]` (results in "
             "`benchmarks/results/crossdraw.json`)", "",
             "| variant | seeds | UF1 | ΔUF1 | 1 → 2 | Δ 1 → 2 | 2 → 1 | Δ 2 → 1 | fit UF1 | s a run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        rs = [runs[f"{n}/{s}"] for s in _seeds(doc, n)]
        parent = extended(n, names) or (REFERENCE if n != REFERENCE and REFERENCE in names else "")
        ways = {w: [r[w]["uf1"] for r in rs] for w in ("1->2", "2->1")}
        fit = statistics.mean(r[w]["fit_uf1"] for r in rs for w in ways)
        secs = statistics.mean(r[w]["seconds"] for r in rs for w in ways) * 2
        cells = [n, str(len(rs)), mean_and_spread([r["uf1"] for r in rs]), _paired(doc, n, parent)]
        for w in ways:
            cells += [f"{statistics.mean(ways[w]):.4f}", _paired(doc, n, parent, w)]
        lines.append("| " + " | ".join([*cells, f"{fit:.4f}", f"{secs:.0f}"]) + " |")
    print("\n".join(lines[-len(names) - 2:]))
    _analyse(doc, work, names)
    lines += _errors(doc, names)
    write_text(RESULTS / "crossdraw.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    script_main(main)
