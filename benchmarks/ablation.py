"""Ablation benchmark of the MMT on the synthetic composite (MEGC2019 layout, LOSO).

Generates the synthetic composite (CASME II + SAMM + SMIC-HS layouts, at least
20 subjects), prepares its features (DIS flow, S = 112), then trains the full
model and each ablation under the MEGC2019 protocol (leave-one-subject-out over
all subjects, pooled predictions) and writes a table (UF1, UAR, accuracy,
parameters, GFLOPs, time) to ``benchmarks/results/ablation.md`` and ``.json``.
Variants already in the JSON are kept, so an interrupted run resumes.

    python benchmarks/ablation.py [--variants full,single-scale,...] [--epochs 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

from edge_mer.errors import script_main
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.model.config import ABLATIONS
from edge_mer.train.loop import TrainConfig
from edge_mer.train.run import RunConfig, run

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(ABLATIONS))
    ap.add_argument("--model", default="mmt_small")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="benchmarks/.work/ablation", help="data, features and runs (not committed)")
    args = ap.parse_args()
    work = Path(args.work)
    data, feats = work / "data", work / "features"
    prepare_synthetic_composite(data, feats, args.subjects, args.clips, args.seed)
    out_json = RESULTS / "ablation.json"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"results": {}}
    for variant in args.variants.split(","):
        if variant in doc["results"]:
            continue
        cfg = RunConfig(features=str(feats), protocol="megc2019", model=args.model, ablation=variant,
                        train=TrainConfig(epochs=args.epochs, seed=args.seed), final_model=False)
        r = run(cfg, work / "runs" / variant, progress=False)
        doc["results"][variant] = {k: r[k] for k in ("uf1", "uar", "accuracy", "samples", "folds", "params",
                                                     "gflops", "seconds", "per_dataset")}
        doc |= {"date": dt.date.today().isoformat(), "model": args.model, "epochs": args.epochs,
                "subjects": args.subjects, "clips_per_subject": args.clips,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
        RESULTS.mkdir(exist_ok=True)
        out_json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{variant}: UF1 {r['uf1']:.4f} UAR {r['uar']:.4f} ({r['seconds']:.0f} s)", flush=True)
    _table(doc)


def _table(doc: dict) -> None:
    lines = [f"# MMT ablations on the synthetic composite ({doc.get('date', '')})", "",
             f"Model {doc.get('model')}, {doc.get('epochs')} epochs, MEGC2019 protocol (LOSO over "
             f"{doc.get('subjects')} synthetic subjects, {doc.get('clips_per_subject')} clips each, predictions "
             f"pooled), DIS flow at S = 112. Machine: {doc.get('machine')}.", "",
             "Command: `python benchmarks/ablation.py`", "",
             "| variant | UF1 | UAR | accuracy | samples | parameters | GFLOPs | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in doc["results"].items():
        lines.append(f"| {name} | {r['uf1']:.4f} | {r['uar']:.4f} | {r['accuracy']:.4f} | {r['samples']} | "
                     f"{r['params']:,} | {r['gflops']:.3f} | {r['seconds']:.0f} |")
    (RESULTS / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
