"""What keeps the recipe from its draw's ceiling: the development draw rendered again with one source of difficulty
switched off at a time, and the recipe trained on each under the same folds.

The recipe search (``benchmarks/recipe.py``) trains on the diverse composite drawn with data seed 1. This renders
that draw again with the same subjects, clips, labels and movements (switching a nuisance off changes nothing else
the generator draws) but without blinks, sensor noise, flicker or head motion, without any of them, and, on top,
without the weak extra action units and the dropped ones that make a class's patterns vary; then it trains one
variant of the recipe (default: motion only, the best of the search) on every condition with the same five
subject-disjoint folds and seeds. The gap between conditions says which difficulty costs the most, so the next
change to the features or the recipe goes where the loss is. Writes ``benchmarks/results/headroom.md`` and
``.json`` and resumes: runs already in the JSON are kept.

    python benchmarks/headroom.py [--conditions as-drawn,no-nuisances,...] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from recipe import VARIANTS, run_variant

from edge_mer.atomic import write_text
from edge_mer.errors import UserError, script_main
from edge_mer.eval.metrics import mean_and_spread
from edge_mer.eval.truth import draw_summary, errors_table, other_draw
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.synth.diversity import Diversity
from edge_mer.synth.render import Nuisances
from edge_mer.train.run import KFOLDS, seconds_text

RESULTS = Path(__file__).resolve().parent / "results"
STILL = {"head_drift": 0.0, "head_jitter": 0.0, "head_rotation": 0.0}
QUIET = {**STILL, "noise": 0.0, "flicker": 0.0, "blinks": False}

# name: (changes to the lab's nuisances, changes to the diversity, what is switched off)
CONDITIONS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "as-drawn": ({}, {}, "nothing: the development draw as the recipe search trains on it"),
    "no-blinks": ({"blinks": False}, {}, "blinks (a tenth of the clips has one)"),
    "no-noise": ({"noise": 0.0}, {}, "sensor noise (1.5 grey levels per pixel and frame)"),
    "no-flicker": ({"flicker": 0.0}, {}, "illumination flicker (0.5 %)"),
    "still-head": (STILL, {}, "head motion (drift of 0.02 eye distances, jitter, roll of 0.3°)"),
    "no-nuisances": (QUIET, {}, "all of the above"),
    "whole-patterns": (QUIET, {"extra_au": 0.0, "drop_au": 0.0},
                       "all of the above, and the weak extra action unit (a quarter of the samples) and the "
                       "dropped one (a quarter of the multi-unit patterns)"),
}


def _prepare(name: str, work: Path, data_seed: int) -> None:
    """The condition's draw (``work/name/data``) and its DIS features at S = 112 (``work/name/features``)."""
    nuisances, diversity, _ = CONDITIONS[name]
    folder = work / name
    prepare_synthetic_composite(folder / "data", folder / "features", 0, 0, data_seed, diverse=True,
                                nuisances=replace(Nuisances.lab(), **nuisances),
                                diversity=replace(Diversity(), **diversity))


def _run(name: str, variant: str, seed: int, epochs: int, work: str) -> dict[str, Any]:
    features = str(Path(work) / name / "features")
    return {"condition": name, **run_variant(variant, seed, features, epochs, str(Path(work) / name))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help=f"from {', '.join(CONDITIONS)}")
    ap.add_argument("--variant", default="motion-only", help="the recipe variant trained (benchmarks/recipe.py)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--data-seed", type=int, default=1, help="the development draw (the benchmark's is 0)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs trained side by side")
    ap.add_argument("--work", default="benchmarks/.work/headroom", help="draws, features and runs (not committed)")
    args = ap.parse_args()
    if args.data_seed == 0:
        raise UserError("data seed 0 is the benchmark's own draw: this search would look at its test subjects")
    names = args.conditions.split(",")
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise UserError(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    if args.variant not in VARIANTS:
        raise UserError(f"unknown variant {args.variant}; choose from {', '.join(VARIANTS)}")
    out_json = RESULTS / "headroom.json"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    held = doc.get("variant", args.variant), doc.get("data_seed", args.data_seed)
    if doc["runs"] and held != (args.variant, args.data_seed):  # refused before any draw is rendered
        raise UserError(f"{out_json} holds runs of {held[0]} on data seed {held[1]}: move it aside to start another "
                        "table")
    work = Path(args.work)
    for name in names:
        print(f"draw: {name}", flush=True)
        _prepare(name, work, args.data_seed)
    if why := other_draw(doc, work / names[0] / "data", out_json):  # as the recipe search: one photograph set
        raise UserError(why)
    doc |= draw_summary(work / names[0] / "data", work / names[0] / "features")
    doc |= {"variant": args.variant, "data_seed": args.data_seed, "folds": KFOLDS,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    todo = [(n, int(s)) for n in names for s in args.seeds.split(",") if f"{n}/{s}" not in doc["runs"]]
    print(f"{len(todo)} runs to do ({KFOLDS} folds each), {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [pool.submit(_run, n, args.variant, s, args.epochs, str(work)) for n, s in todo]
        for k, done in enumerate(as_completed(jobs), 1):
            r = done.result()
            doc["runs"][f"{r['condition']}/{r['seed']}"] = r
            doc["date"] = dt.date.today().isoformat()
            write_text(out_json, json.dumps(doc, indent=2, sort_keys=True) + "\n")
            print(f"[{k}/{len(todo)}] {r['condition']} seed {r['seed']}: UF1 {r['uf1']:.4f} UAR {r['uar']:.4f} "
                  f"({r['seconds']:.0f} s)", flush=True)
            _table(doc, quiet=True)
    if doc["runs"]:
        _table(doc)


def _table(doc: dict[str, Any], quiet: bool = False) -> None:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in doc["runs"].values():
        by.setdefault(r["condition"], []).append(r)
    base = {r["seed"]: r["uf1"] for r in by.get("as-drawn", [])}
    lines = [f"# Where the recipe loses against its draw's ceiling ({doc.get('date', '')})", "",
             f"The development draw of the diverse composite (data seed {doc['data_seed']}, 68 subjects, faces from "
             f"the photographs {', '.join(doc['faces'])}) rendered again with one source of difficulty switched "
             "off at a time: the same subjects, clips, labels and movements, so every condition has the same "
             f"annotation and the same ceiling (UF1 {doc['ceiling']['uf1']:.4f}). The recipe's `{doc['variant']}` "
             f"variant trained on each under {doc['folds']} subject-disjoint folds (`train --protocol kfold`), DIS "
             "flow at S = 112, the last epoch's model. UF1 and UAR: mean ± standard deviation over the training "
             "seeds; ΔUF1: the mean of the per-seed differences to the draw as it is. Machine: "
             f"{doc['machine']}, one thread per run.", "",
             "Command: `python benchmarks/headroom.py` (results in `benchmarks/results/headroom.json`)", "",
             "| condition | switched off | seeds | UF1 | ΔUF1 | UAR | training s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    order = [n for n in CONDITIONS if n in by]
    for name in order:
        runs = sorted(by[name], key=lambda r: r["seed"])
        paired = [r["uf1"] - base[r["seed"]] for r in runs if r["seed"] in base]
        delta = "" if name == "as-drawn" or not paired else f"{statistics.fmean(paired):+.4f}"
        lines.append(f"| {name} | {CONDITIONS[name][2]} | {len(runs)} | {mean_and_spread([r['uf1'] for r in runs])} | "
                     f"{delta} | {mean_and_spread([r['uar'] for r in runs])} | {seconds_text(runs)} |")
    lines += ["", *errors_table({n: [r["breakdown"] for r in by[n] if r.get("breakdown")] for n in order},
                                doc["ceiling"], doc["amplitude_bands"], doc.get("coded_reference"))]
    write_text(RESULTS / "headroom.md", "\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
