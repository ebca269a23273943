"""Recipe search: what the diverse benchmark shows matters, chosen on subjects the benchmark never scores.

The recognition benchmark (``benchmarks/recognition.py``) scores the diverse synthetic composite drawn with
data seed 0. This search runs on another draw of it (``--data-seed``, default 1: 68 other subjects with other
identities, habits and clips), under five subject-disjoint folds (``train --protocol kfold``), so no setting
is ever chosen on a subject that the benchmark tests. Each variant changes one thing of the current recipe
(augmentation, class weighting, epochs, learning rate, weight decay, dropout, the contrastive weight, model
size) or is a baseline model; every variant is trained for each seed. Writes ``benchmarks/results/recipe.md``
and ``.json`` (UF1 and UAR as mean and spread over the seeds, and the change against the recipe), and resumes:
variants already in the JSON are kept.

    python benchmarks/recipe.py [--variants recipe,no-augmentation,...] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from edge_mer.atomic import write_text
from edge_mer.errors import script_main
from edge_mer.eval.metrics import mean_and_spread
from edge_mer.eval.truth import (
    FIRST_FACES,
    breakdown_of,
    draw_summary,
    errors_table,
    other_draw,
    save_runs,
)
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.train.loop import TrainConfig
from edge_mer.train.run import KFOLDS, OWN_OPTIONS, RunConfig, run, seconds_text

RESULTS = Path(__file__).resolve().parent / "results"
WORK = "benchmarks/.work/recipe"  # the development draw's data, features and runs (crossdraw.py reuses them)

# name: (model, changes to TrainConfig, changes to the model's config, what it tests)
# the model changes of the ensemble that the later variants change one more thing of
ENSEMBLE: dict[str, Any] = {"modalities": ("motion",), "ensemble_with": "ststnet"}
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "recipe": ("mmt_small", {}, {}, "the current recipe: AdamW lr 1e-3, weight decay 0.05, 60 epochs, dropout 0.1, "
                                    "contrastive weight 0.1, flip + shift + gain, class-weighted loss"),
    "no-augmentation": ("mmt_small", {"flip": False, "max_shift": 0, "gain": (1.0, 1.0)}, {},
                        "no flip, shift or gain"),
    "gain-0.5-2": ("mmt_small", {"gain": (0.5, 2.0)}, {}, "flow gain drawn from x0.5-x2 (subjects' own range)"),
    "rotate-zoom": ("mmt_small", {"rotate": 8.0, "zoom": (0.9, 1.1)}, {},
                    "each sample turned by up to 8 degrees and scaled by x0.9-x1.1, its flow vectors with it"),
    "mixup-0.2": ("mmt_small", {"mixup": 0.2}, {}, "mixup: pairs of samples and their targets blended, "
                                                  "share from Beta(0.2, 0.2)"),
    "no-class-weights": ("mmt_small", {"class_weighting": False}, {}, "plain cross-entropy"),
    "epochs-30": ("mmt_small", {"epochs": 30}, {}, "half the epochs"),
    "epochs-120": ("mmt_small", {"epochs": 120}, {}, "twice the epochs"),
    "lr-3e-4": ("mmt_small", {"lr": 3e-4}, {}, "a third of the learning rate"),
    "lr-3e-3": ("mmt_small", {"lr": 3e-3}, {}, "three times the learning rate"),
    "weight-decay-0.2": ("mmt_small", {"weight_decay": 0.2}, {}, "four times the weight decay"),
    "dropout-0.3": ("mmt_small", {}, {"dropout": 0.3}, "dropout 0.3"),
    "contrastive-0": ("mmt_small", {}, {"contrastive_weight": 0.0}, "no contrastive term"),
    "contrastive-0.5": ("mmt_small", {}, {"contrastive_weight": 0.5}, "contrastive weight 0.5"),
    "width-64": ("mmt_small", {}, {"dim": 64, "heads": 2, "proj_dim": 32}, "half the width (64, 2 heads)"),
    "depth-2": ("mmt_small", {}, {"depth": 2}, "two layers instead of four"),
    "motion-only": ("mmt_small", {}, {"modalities": ("motion",)}, "no texture branch (and so no contrastive term)"),
    "motion-only+head-removed": ("mmt_small", {}, {"modalities": ("motion",)},
                                 "motion-only on flow less the head's own motion (`--head removed`)"),
    "motion-only+head-removed+regions": ("mmt_small", {}, {"modalities": ("motion",), "regions": True},
                                         "motion-only+head-removed with its patch tokens cut from the eyes and the "
                                         "mouth corners (as motion-only+regions): the MMT alone reading what the "
                                         "regional CNN reads, at twice its resolution"),
    "motion-only+head-removed+regions+conv-stem": ("mmt_small", {}, {"modalities": ("motion",), "regions": True,
                                                                    "stem": "conv"},
                                                   "motion-only+head-removed+regions with the conv stem of "
                                                   "motion-only+conv-stem before its patch tokens: local filters "
                                                   "on the regions, as the regional CNN has, then attention"),
    "motion-only+head-removed+regions+strided-stem": ("mmt_small", {}, {"modalities": ("motion",), "regions": True,
                                                                        "stem": "strided"},
                                                      "motion-only+head-removed+regions+conv-stem with the stem's "
                                                      "filters at a stride of 2 instead of the max-pool: the same "
                                                      "tokens from a quarter of the filter positions"),
    "motion-only+head-removed+regions+conv-stem+regional-partner": (
        "mmt_small", {"partner_lr": 0.01},
        {"modalities": ("motion",), "regions": True, "stem": "conv", "ensemble_with": "ststnet_regions"},
        "motion-only+head-removed+regions+conv-stem with the regional CNN trained beside it at its own learning "
        "rate 1e-2 (as motion-only+ststnet+head-removed+regions+partner-lr-1e-2 pairs the plain MMT)"),
    "motion-only+regions": ("mmt_small", {}, {"modalities": ("motion",), "regions": True},
                            "motion-only with its patch tokens cut from the eyes and the mouth corners (four S/2 "
                            "regions, as `ststnet_regions` reads) instead of the whole face: as many tokens, none on "
                            "the forehead's centre, the cheeks or the chin"),
    "motion-only+pool-then-norm": ("mmt_small", {}, {"modalities": ("motion",), "pool_then_norm": True},
                                   "motion-only pooling its patch tokens before the final normalisation instead "
                                   "of after, so how strongly one part of the face moved against another reaches "
                                   "the head (a face that shows a weaker second class besides the annotated one)"),
    "motion-only+conv-stem": ("mmt_small", {}, {"modalities": ("motion",), "stem": "conv"},
                              "motion-only with a 3 x 3 convolution (16 filters, ReLU) and a 2 x 2 max-pool before "
                              "its patch tokens, as a shallow CNN reads the motion"),
    "motion-only+ststnet": ("mmt_small", {}, ENSEMBLE,
                            "motion-only with an STSTNet trained beside it on the same batches, each on its own "
                            "loss, predicting from their mean log-probability (`mmt_small_ens`)"),
    "motion-only+ststnet+mirror": ("mmt_small", {}, {**ENSEMBLE, "mirror_average": True},
                                   "motion-only+ststnet asked about each sample and its mirror image, predicting "
                                   "from the mean log-probability (trained exactly as motion-only+ststnet)"),
    "motion-only+ststnet+smoothing-0.1": ("mmt_small", {"label_smoothing": 0.1},
                                          ENSEMBLE,
                                          "motion-only+ststnet with label smoothing 0.1 (a tenth of each target "
                                          "spread over the classes: some annotations err)"),
    "motion-only+ststnet+epochs-120": ("mmt_small", {"epochs": 120}, ENSEMBLE,
                                       "motion-only+ststnet trained for twice the epochs"),
    "motion-only+ststnet+finer-flow": ("mmt_small", {}, ENSEMBLE,
                                       "motion-only+ststnet on DIS flow of crops twice as fine (224 pixels) averaged "
                                       "back to 112 (`--oversample 2`): a weak mover's motion spans twice the "
                                       "pixels where the flow is computed"),
    "motion-only+ststnet+apex-by-motion": ("mmt_small", {}, ENSEMBLE,
                                           "motion-only+ststnet with the apex of clips that have none annotated "
                                           "(the SMIC-like third) found by motion (`--apex motion`: the frame "
                                           "whose face moved most from the onset's, measured on the spotter's "
                                           "facial parts) instead of the middle frame"),
    "motion-only+ststnet+head-removed": ("mmt_small", {}, ENSEMBLE,
                                         "motion-only+ststnet on flow less the head's own motion (`--head removed`: "
                                         "an affine motion fitted robustly inside the face, as the spotter removes "
                                         "it): a head that drifts or turns between onset and apex moves the whole "
                                         "crop by as much as a weak expression"),
    "motion-only+ststnet+head-removed+epochs-120": ("mmt_small", {"epochs": 120},
                                                    ENSEMBLE,
                                                    "motion-only+ststnet+head-removed trained for twice the epochs "
                                                    "(do the two changes that gained add up?)"),
    "motion-only+ststnet+regions": ("mmt_small", {}, {**ENSEMBLE, "ensemble_with": "ststnet_regions"},
                                    "motion-only+ststnet with a partner that reads the eyes and the mouth corners "
                                    "at twice the resolution instead of the whole face (`ststnet_regions`: four "
                                    "28 x 28 regions of the motion at 56): a weak mover's motion is averaged over "
                                    "fewer pixels, a one-sided smile seen apart from the other corner"),
    "motion-only+ststnet+head-removed+person-level": ("mmt_small", {}, {**ENSEMBLE, "person_rms": 0.075},
                                                      "motion-only+ststnet+head-removed reading each subject's "
                                                      "motion brought to one strength (`--set person_rms=0.075`, "
                                                      "as ststnet-regions+head-removed+person-level)"),
    "motion-only+ststnet+head-removed+regions": ("mmt_small", {}, {**ENSEMBLE, "ensemble_with": "ststnet_regions"},
                                                 "motion-only+ststnet+head-removed with the regional partner "
                                                 "(`ststnet_regions`)"),
    "motion-only+ststnet+head-removed+regions+partner-lr-1e-2": (
        "mmt_small", {"partner_lr": 1e-2}, {**ENSEMBLE, "ensemble_with": "ststnet_regions"},
        "motion-only+ststnet+head-removed+regions with the partner at ten times the MMT's learning rate "
        "(`--set partner_lr=0.01`: the regional CNN alone's best rate on this draw)"),
    "ststnet-regions": ("ststnet_regions", {}, {}, "STSTNet on the eyes and the mouth corners at twice the "
                                                   "resolution (`ststnet_regions`)"),
    "ststnet-regions+head-removed": ("ststnet_regions", {}, {}, "ststnet-regions on flow less the head's own motion "
                                                                "(`--head removed`)"),
    "ststnet-regions+head-removed+epochs-120": ("ststnet_regions", {"epochs": 120}, {},
                                                "ststnet-regions+head-removed trained for twice the epochs"),
    "ststnet-regions+head-removed+lr-3e-3": ("ststnet_regions", {"lr": 3e-3}, {},
                                             "ststnet-regions+head-removed at three times the learning rate"),
    "ststnet-regions+head-removed+lr-1e-2": ("ststnet_regions", {"lr": 1e-2}, {},
                                             "ststnet-regions+head-removed at ten times the learning rate"),
    "ststnet-regions+head-removed+lr-3e-2": ("ststnet_regions", {"lr": 3e-2}, {},
                                             "ststnet-regions+head-removed at thirty times the learning rate"),
    "ststnet-regions+head-removed+lr-3e-3+epochs-120": ("ststnet_regions", {"lr": 3e-3, "epochs": 120}, {},
                                                        "ststnet-regions+head-removed+lr-3e-3 trained for twice "
                                                        "the epochs"),
    "ststnet-regions+head-removed+dropout-0.2": ("ststnet_regions", {}, {"dropout": 0.2},
                                                 "ststnet-regions+head-removed with dropout 0.2 before its fully "
                                                 "connected layer instead of 0.5"),
    "ststnet-regions+head-removed+gain-0.5-2": ("ststnet_regions", {"gain": (0.5, 2.0)}, {},
                                                "ststnet-regions+head-removed with the flow gain drawn from "
                                                "x0.5-x2 (subjects' own range) instead of x0.8-x1.25"),
    "ststnet-regions+head-removed+mixup-0.2": ("ststnet_regions", {"mixup": 0.2}, {},
                                               "ststnet-regions+head-removed with mixup (Beta(0.2, 0.2))"),
    "ststnet-regions+head-removed+rotate-zoom": ("ststnet_regions", {"rotate": 8.0, "zoom": (0.9, 1.1)}, {},
                                                 "ststnet-regions+head-removed with each sample turned by up to 8 "
                                                 "degrees and scaled by x0.9-x1.1 (faces aligned less exactly)"),
    "ststnet-regions+head-removed+whole-face": ("ststnet_regions", {}, {"ensemble_with": "ststnet"},
                                                "ststnet-regions+head-removed with a whole-face STSTNet (28 x 28) "
                                                "trained beside it, predicting from their mean log-probability"),
    "ststnet-regions+head-removed+motion-rms": ("ststnet_regions", {}, {"motion_rms": 0.075},
                                                "ststnet-regions+head-removed with each sample's flow scaled to RMS "
                                                "0.075 units (this flow's median on the draw; x4 at most): a weak "
                                                "mover's smile reaches the model as loud as a strong mover's"),
    "ststnet-regions+head-removed+filters-x2": ("ststnet_regions", {}, {"stst_width": 2},
                                                "ststnet-regions+head-removed with twice the filters a stream (6, 10 "
                                                "and 16: `ststnet_regions_wide`): it fits its own training samples "
                                                "to UF1 0.90 only (benchmarks/results/crossdraw.md)"),
    "ststnet-regions+head-removed+filters-x4": ("ststnet_regions", {}, {"stst_width": 4},
                                                "ststnet-regions+head-removed with four times the filters a stream "
                                                "(12, 20 and 32)"),
    "ststnet-regions+head-removed+balanced": ("ststnet_regions", {"class_power": 1.0}, {},
                                              "ststnet-regions+head-removed with each class weighing as much in the "
                                              "loss (cross-entropy weighted by 1/frequency, not 1/sqrt)"),
    "ststnet-regions+head-removed+asymmetry": ("ststnet_regions", {}, {"asymmetry": True},
                                               "ststnet-regions+head-removed also reading the motion less its "
                                               "mirror image (u negated; `--set asymmetry=true`): zero where the "
                                               "face moves symmetrically, so a smile of one mouth corner (SAMM's "
                                               "contempt, negative) stands apart from one of both (happiness)"),
    "ststnet-regions+head-removed+frames-5": ("ststnet_regions", {}, {},
                                              "ststnet-regions+head-removed on flow between the means of five "
                                              "frames centred on the onset and on the apex (`--frames 5`): the "
                                              "camera's noise, new in every frame, weighs less against a weak "
                                              "mover's motion"),
    "ststnet-regions+head-removed+finer-flow": ("ststnet_regions", {}, {},
                                                "ststnet-regions+head-removed on flow computed on crops twice as "
                                                "fine and averaged back to 112 pixels (`--oversample 2`): a weak "
                                                "mover's sub-pixel motion spans twice the pixels where it is "
                                                "measured"),
    "ststnet-regions+head-removed+magnify-2": ("ststnet_regions", {}, {},
                                               "ststnet-regions+head-removed on flow to the apex magnified twice "
                                               "(onset + 2 (apex - onset), linear Eulerian magnification; "
                                               "`magnify=2`)"),
    "ststnet-regions+head-removed+magnify-4": ("ststnet_regions", {}, {},
                                               "ststnet-regions+head-removed on flow to the apex magnified four "
                                               "times (onset + 4 (apex - onset))"),
    "ststnet-regions+head-removed+tvl1": ("ststnet_regions", {}, {},
                                          "ststnet-regions+head-removed on TV-L1 flow instead of DIS (what the "
                                          "CUDA flow stage computes on a Jetson; `--flow tvl1`)"),
    "ststnet-regions+head-removed+twin": ("ststnet_regions", {}, {"ensemble_with": "ststnet_regions"},
                                          "ststnet-regions+head-removed with a second one (other initial weights) "
                                          "trained beside it, predicting from their mean log-probability"),
    "ststnet-regions+head-removed+person-level": ("ststnet_regions", {}, {"person_rms": 0.075},
                                                  "ststnet-regions+head-removed reading each subject's motion "
                                                  "multiplied by one gain: RMS 0.075 units (this flow's median) "
                                                  "over the median of the subject's other samples' RMS, at most "
                                                  "x4 (`--set person_rms=0.075`): subjects who move half or twice "
                                                  "as strongly give the model one size of expression"),
    "htnet+head-removed+lr-5e-5": ("htnet", {"lr": 5e-5}, {},
                                   "the HTNet baseline (its authors' configuration, 139.6 M weights) on flow less the "
                                   "head's motion, under the recipe at its authors' learning rate (at the recipe's "
                                   "1e-3 its loss stays near chance's, 1.11-1.15, from the second epoch to the fifth)"),
    "texture-difference": ("mmt_small", {}, {}, "texture input: apex minus onset grey level instead of the apex "
                                                "frame, which carries the subject's identity"),
    "motion-rms": ("mmt_small", {}, {"motion_rms": 0.2}, "each sample's flow scaled to RMS 0.2 units (the "
                                                         "development draw's median is 0.18)"),
    "ststnet": ("ststnet", {}, {}, "the STSTNet baseline under the same recipe"),
    "ststnet-mirror": ("ststnet", {}, {"mirror_average": True}, "STSTNet asked about each sample and its mirror "
                                                                "image (trained exactly as STSTNet)"),
    "ststnet-motion-rms": ("ststnet", {}, {"motion_rms": 0.2}, "STSTNet with each sample's flow scaled to RMS 0.2"),
    "tvl1": ("mmt_small", {}, {}, "TV-L1 flow in the features instead of DIS (what the device computes)"),
    "ststnet-tvl1": ("ststnet", {}, {}, "STSTNet on TV-L1 features"),
    "ststnet-dis224": ("ststnet", {}, {}, "STSTNet on DIS flow of a 224-pixel crop (the motion of weak movers "
                                          "spans twice the pixels)"),
}


class Kind(NamedTuple):
    """The features a variant trains on: ``data prepare``'s flow, crop size, texture, oversampling and the
    apex policy for clips without an annotated apex (the SMIC-like third)."""

    flow: str = "dis"
    size: int = 112
    texture: str = "apex"
    oversample: int = 1
    apex: str = "middle"
    head: str = "kept"
    frames: int = 1
    magnify: float = 1.0


DIS_112 = Kind()
# the features a variant trains on where they differ from those of the variant it extends (DIS_112 at the root)
FEATURES = {"tvl1": Kind("tvl1"), "ststnet-tvl1": Kind("tvl1"), "ststnet-dis224": Kind(size=224),
            "texture-difference": Kind(texture="difference"), "motion-only+ststnet+finer-flow": Kind(oversample=2),
            "motion-only+ststnet+apex-by-motion": Kind(apex="motion"),
            "motion-only+ststnet+head-removed": Kind(head="removed"),
            "motion-only+head-removed": Kind(head="removed"),
            "ststnet-regions+head-removed": Kind(head="removed"),
            "htnet+head-removed+lr-5e-5": Kind(head="removed"),
            "ststnet-regions+head-removed+frames-5": Kind(head="removed", frames=5),
            "ststnet-regions+head-removed+tvl1": Kind("tvl1", head="removed"),
            "ststnet-regions+head-removed+finer-flow": Kind(head="removed", oversample=2),
            "ststnet-regions+head-removed+magnify-4": Kind(head="removed", magnify=4.0),
            "ststnet-regions+head-removed+magnify-2": Kind(head="removed", magnify=2.0)}


def extended(name: str, among: Iterable[str]) -> str | None:
    """The variant of ``among`` that ``name`` changes one thing of ("a+b+c" of "a+b"), or None."""
    return max((v for v in among if name.startswith(v + "+")), key=len, default=None)


def features_of(name: str) -> Kind:
    """The features variant ``name`` trains on: its own entry in FEATURES, else those of the variant it extends."""
    if name in FEATURES:
        return FEATURES[name]
    parent = extended(name, VARIANTS)
    return features_of(parent) if parent else DIS_112


def run_variant(name: str, seed: int, features: str, epochs: int, work: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one process per core: two small models side by side beat two threads on one
    model, train_changes, model_changes, _ = VARIANTS[name]
    train = replace(TrainConfig(epochs=epochs, seed=seed), **train_changes)
    cfg = RunConfig(features=features, protocol="kfold", model=model, train=train, final_model=False,
                    changes=tuple(sorted(model_changes.items())))
    r = run(cfg, Path(work) / "runs" / name / str(seed), progress=False)
    return {"variant": name, "seed": seed, "uf1": r["uf1"], "uar": r["uar"], "accuracy": r["accuracy"],
            "params": r["params"], "gflops": r["gflops"], "seconds": r["seconds"], "epochs": train.epochs,
            "seconds_unknown_folds": r.get("seconds_unknown_folds", 0),
            "per_dataset": {k: v["uf1"] for k, v in r["per_dataset"].items()},
            "breakdown": breakdown_of(Path(work) / "runs" / name / str(seed) / "predictions.csv", Path(work) / "data")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--epochs", type=int, default=60, help="the recipe's epochs (variants may change them)")
    ap.add_argument("--data-seed", type=int, default=1, help="the development draw (the benchmark's is 0)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="variants trained side by side")
    ap.add_argument("--work", default=WORK, help="data, features and runs (not committed)")
    args = ap.parse_args()
    if args.data_seed == 0:
        ap.error("data seed 0 is the benchmark's own draw: choosing a recipe on it would choose on its test "
                 "subjects")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    work = Path(args.work)
    feats = {kind: work / _features_folder(kind) for kind in _kinds(names)}
    for kind, path in feats.items():
        prepare_kind(work / "data", path, args.data_seed, kind)
    out_json = RESULTS / "recipe.json"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    if why := other_draw(doc, work / "data", out_json):
        ap.error(why)
    for r in doc["runs"].values():  # runs from before the breakdown existed, where their folder is kept
        r["breakdown"] = r.get("breakdown") or breakdown_of(work / "runs" / r["variant"] / str(r["seed"]) /
                                                            "predictions.csv", work / "data")
    doc |= draw_summary(work / "data", feats[DIS_112])
    todo = [(n, int(s)) for n in names for s in args.seeds.split(",") if f"{n}/{s}" not in doc["runs"]]
    print(f"{len(todo)} runs to do ({KFOLDS} folds each), {args.jobs} at a time", flush=True)
    save_runs(out_json, doc)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [pool.submit(run_variant, n, s, str(feats[features_of(n)]), args.epochs, str(work))
                for n, s in todo]
        for k, done in enumerate(as_completed(jobs), 1):
            r = done.result()
            doc["runs"][f"{r['variant']}/{r['seed']}"] = r
            doc |= {"date": dt.date.today().isoformat(), "epochs": args.epochs, "data_seed": args.data_seed,
                    "folds": KFOLDS, "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
            save_runs(out_json, doc)
            print(f"[{k}/{len(todo)}] {r['variant']} seed {r['seed']}: UF1 {r['uf1']:.4f} UAR {r['uar']:.4f} "
                  f"({r['seconds']:.0f} s)", flush=True)
            _table(doc, quiet=True)  # the table follows the JSON, so a run stopped halfway still has one
    if doc["runs"]:
        _table(doc)


def prepare_kind(data: Path, out: Path, data_seed: int, kind: Kind) -> None:
    """Render the diverse draw ``data_seed`` into ``data`` (unless it is there) and prepare its features of
    ``kind`` in ``out``."""
    prepare_synthetic_composite(data, out, 0, 0, data_seed, size=kind.size, flow=kind.flow, diverse=True,
                                texture=kind.texture, oversample=kind.oversample, apex=kind.apex, head=kind.head,
                                frames=kind.frames, magnify=kind.magnify)


def _kinds(names: Iterable[str]) -> list[Kind]:
    """The features the variants ``names`` train on, and the recipe's own (the draw's summary is made on them)."""
    return sorted({features_of(n) for n in names if n in VARIANTS} | {DIS_112})


def _features_folder(kind: Kind) -> str:
    if kind == DIS_112:
        return "features"
    return (f"features-{kind.flow}{'' if kind.size == 112 else kind.size}"
            f"{'' if kind.texture == 'apex' else '-' + kind.texture}"
            f"{'' if kind.oversample == 1 else f'-x{kind.oversample}'}"
            f"{'' if kind.apex == 'middle' else f'-apex-{kind.apex}'}"
            f"{'' if kind.head == 'kept' else f'-head-{kind.head}'}"
            f"{'' if kind.frames == 1 else f'-frames-{kind.frames}'}"
            f"{'' if kind.magnify == 1 else f'-magnify-{kind.magnify:g}'}")


def _features_name(kind: Kind) -> str:
    return _features_folder(kind).upper().replace("-", "_")


def _prepare_command(kind: Kind) -> str:
    return " ".join(["edge-mer data prepare --dataset megc2019 --root DATA --flow", kind.flow,
                     *([f"--size {kind.size}"] if kind.size != 112 else []),
                     *([f"--texture {kind.texture}"] if kind.texture != "apex" else []),
                     *([f"--oversample {kind.oversample}"] if kind.oversample != 1 else []),
                     *([f"--apex {kind.apex}"] if kind.apex != "middle" else []),
                     *([f"--head {kind.head}"] if kind.head != "kept" else []), "--out", _features_name(kind)])


def _command(name: str) -> str:
    """``edge-mer train`` with the options that make variant ``name``."""
    model, train_changes, model_changes, _ = VARIANTS[name]
    features = _features_name(features_of(name))
    options = []
    for key, value in {**train_changes, **model_changes}.items():
        if key in OWN_OPTIONS:
            options.append(f"{OWN_OPTIONS[key]} {value}")
        else:
            text = json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))
            options.append(f"--set {shlex.quote(f'{key}={text}')}")
    return " ".join(["edge-mer train --features", features, "--protocol kfold --model", model, *options,
                     "--seed SEED --no-final-model --out RUN"])


def _table(doc: dict[str, Any], quiet: bool = False) -> None:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in doc["runs"].values():
        by.setdefault(r["variant"], []).append(r)
    lines = [f"# Recipe search on a development draw of the diverse composite ({doc.get('date', '')})", "",
             f"`synth dataset --layout megc2019 --diverse` drawn with data seed {doc.get('data_seed')} (68 subjects "
             "that the recognition benchmark, data seed 0, does not contain; their faces from the photographs "
             f"{', '.join(doc.get('faces', FIRST_FACES))}), "
             f"{doc.get('folds')} subject-disjoint folds (`train --protocol kfold`), DIS flow at S = 112 (other "
             "features where a variant says so), the last epoch's model. Each variant changes one thing of the "
             "recipe, or of the variant whose name its own extends (`a+b` of `a`). UF1 and UAR: mean ± standard "
             "deviation over the training seeds; ΔUF1: the mean of the per-seed differences, on the same seeds, to "
             "the variant it extends, else to the recipe (for the variants of STSTNet: to STSTNet). "
             f"Machine: {doc.get('machine')}, one thread per run. Training s: the "
             "whole run's, the folds an interrupted run kept included (≥ where some were kept without their time).",
             "",
             "Command: `python benchmarks/recipe.py` (results in `benchmarks/results/recipe.json`)", "",
             "| variant | what changes | seeds | UF1 | ΔUF1 | UAR | parameters | training s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    order = [n for n in VARIANTS if n in by] + sorted(set(by) - set(VARIANTS))
    for name in order:
        runs = sorted(by[name], key=lambda r: r["seed"])
        own = VARIANTS[name][0] if name in VARIANTS else "mmt_small"
        family = "ststnet" if own.startswith("ststnet") else own  # ststnet_regions: a variant of STSTNet
        reference = extended(name, by) or ("recipe" if own == "mmt_small" or name == own else family)
        base = {r["seed"]: r["uf1"] for r in by.get(reference, [])}
        paired = [r["uf1"] - base[r["seed"]] for r in runs if r["seed"] in base]
        delta = "" if name == reference or not paired else f"{statistics.fmean(paired):+.4f}"
        what = VARIANTS[name][3] if name in VARIANTS else ""
        lines.append(f"| {name} | {what} | {len(runs)} | {mean_and_spread([r['uf1'] for r in runs])} | {delta} | "
                     f"{mean_and_spread([r['uar'] for r in runs])} | {runs[0]['params']:,} | "
                     f"{seconds_text(runs)} |")
    lines += ["", "Each variant as one training command (five folds dealt by the seed, as here):", ""]
    lines += [f"- {name}: `{_command(name)}`" for name in VARIANTS if name in by]
    lines += ["", "where the features were made from the draw's folder DATA by:", ""]
    lines += [f"- {_features_name(kind)}: `{_prepare_command(kind)}`" for kind in _kinds(by)]
    if doc.get("ceiling"):
        lines += ["", *errors_table({n: [r["breakdown"] for r in by[n] if r.get("breakdown")] for n in order},
                                    doc["ceiling"], doc["amplitude_bands"], doc.get("coded_reference"))]
    write_text(RESULTS / "recipe.md", "\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
