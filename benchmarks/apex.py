"""Apex choice for clips without an annotated apex: how much of the expression each policy's frame shows.

SMIC-HS, and CASME II's rows whose apex cell is ``/``, give no apex; ``data prepare --apex`` then takes the middle
frame (``middle``, the default) or the frame whose face moved most from the onset (``motion``:
``edge_mer.spot.signal.apex_index``). On the diverse synthetic composite every clip's true onset, apex and offset
are known, so both policies can be asked about every clip of every dataset, annotated or not: the table gives
how far each policy's frame lies from the true apex and how much of the apex's displacement the face shows there
(the generator's raised-cosine profile: 1 at the apex, 0 at onset and offset). ``motion``'s settings were chosen
on the development draw (data seed 1); the benchmark's draw (data seed 0) checks them on subjects they were not
chosen on. Writes ``benchmarks/results/apex.md`` and ``.json``.

    python benchmarks/apex.py [--data-seeds 1,0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2

from edge_mer.atomic import write_text
from edge_mer.data.loaders import load, middle_frame
from edge_mer.data.records import Sample
from edge_mer.data.synthetic import MANIFEST
from edge_mer.errors import script_main
from edge_mer.face import FaceAligner
from edge_mer.features.prepare import apex_by_motion, prepare_synthetic_composite
from edge_mer.runtime.frames import list_frames
from edge_mer.synth.timeline import PlannedExpression

RESULTS = Path(__file__).resolve().parent / "results"
WORK = {1: "benchmarks/.work/recipe", 0: "benchmarks/.work/recognition"}  # the draws' own folders, shared
ROLE = {1: "development draw (settings chosen here)", 0: "benchmark draw (held out)"}
POLICIES = ("middle", "motion")
DATASETS = ("casme2", "samm", "smic")
_ALIGNER: list[FaceAligner] = []


def _init() -> None:
    cv2.setNumThreads(1)
    _ALIGNER.append(FaceAligner(112))


def _choose(sample: Sample) -> tuple[str, dict[str, int]]:
    """Each policy's apex frame number for ``sample`` (its annotated apex, if any, is not used)."""
    onset = cv2.imread(sample.onset_path or "", cv2.IMREAD_GRAYSCALE)
    align = _ALIGNER[0].align(onset, sample.id)
    middle = middle_frame(sample.onset, sample.offset, list_frames(Path(sample.frames_dir)))
    motion, _ = apex_by_motion(sample, align.crop(onset), align)
    return sample.id, {"middle": middle, "motion": motion}


def measure(data: Path) -> dict[str, dict[str, dict[str, float]]]:
    """dataset -> policy -> mean frames off, mean share of the apex's displacement shown, share under 0.8."""
    index = load("megc2019", data)
    truth = {f"{c['dataset']}/{c['subject']}/{c['clip']}": c
             for c in json.loads((data / MANIFEST).read_text())["clips"]}
    samples = [s for s in index.samples if s.onset_path]
    chosen: dict[str, dict[str, int]] = {}
    with Pool(os.cpu_count() or 1, initializer=_init) as pool:
        for k, (sid, picks) in enumerate(pool.imap_unordered(_choose, samples, chunksize=4), 1):
            chosen[sid] = picks
            if k % 50 == 0 or k == len(samples):
                print(f"  {k}/{len(samples)} clips", file=sys.stderr, flush=True)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for ds in DATASETS:
        rows = [(truth[sid], picks) for sid, picks in chosen.items() if sid.startswith(ds + "/")]
        out[ds] = {}
        for policy in POLICIES:
            off, shown = [], []
            for c, picks in rows:
                ev = PlannedExpression("micro", c["onset"], c["apex"], c["offset"], (), 1.0)
                off.append(abs(picks[policy] - c["apex"]) / (c["offset"] - c["onset"]))
                shown.append(ev.intensity(picks[policy]))
            out[ds][policy] = {"clips": len(rows), "off_share": statistics.mean(off),
                               "shown": statistics.mean(shown), "under_0.8": sum(v < 0.8 for v in shown) / len(rows)}
    return out


def _table(doc: dict[str, Any]) -> None:
    lines = [f"# Apex choice without an annotated apex ({doc['date']})", "",
             "Every clip of the diverse synthetic composite asked both `data prepare --apex` policies, its annotated "
             "apex ignored. *off*: mean distance of the chosen frame from the true apex, as a share of the clip "
             "(onset to offset); *shown*: mean share of the apex's displacement the face shows at the chosen frame; "
             "*under 0.8*: clips whose chosen frame shows less than 80 % of it. `motion` is "
             "`edge_mer.spot.signal.apex_index` (the spotter's facial parts, head motion removed, eyes left out, "
             f"averaged over 15 % of the clip). {doc['machine']}.", "",
             "Command: `python benchmarks/apex.py` (results in `benchmarks/results/apex.json`)", "",
             "| draw | dataset | clips | policy | off | shown | under 0.8 |", "|---|---|---:|---|---:|---:|---:|"]
    for seed, per in doc["draws"].items():
        draw = f"{seed}: {ROLE.get(int(seed), 'another draw')}"
        for ds, policies in per.items():
            for policy, m in policies.items():
                lines.append(f"| {draw} | {ds} | {m['clips']} | {policy} | {m['off_share']:.3f} | {m['shown']:.3f} "
                             f"| {m['under_0.8']:.3f} |")
    write_text(RESULTS / "apex.md", "\n".join(lines) + "\n")
    print("\n".join(lines[-1 - 2 * len(DATASETS) * len(doc["draws"]):]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-seeds", default="1,0", help="draws to measure: 1 development, 0 the benchmark's")
    args = ap.parse_args()
    doc: dict[str, Any] = {"date": dt.date.today().isoformat(), "draws": {},
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    for seed in (int(s) for s in args.data_seeds.split(",")):
        work = Path(WORK.get(seed, f"benchmarks/.work/draw-{seed}"))
        prepare_synthetic_composite(work / "data", work / "features", 0, 0, seed, diverse=True)
        print(f"data seed {seed}: {ROLE.get(seed, 'another draw')}", file=sys.stderr, flush=True)
        doc["draws"][str(seed)] = measure(work / "data")
    write_text(RESULTS / "apex.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _table(doc)


if __name__ == "__main__":
    script_main(main)
