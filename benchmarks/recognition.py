"""Recognition benchmark: the MMT and the baselines side by side on the diverse synthetic composite.

Generates the diverse composite (``synth dataset --layout megc2019 --diverse``: 68 subjects, sized like the real
MEGC2019 composite), prepares its features (DIS flow, S = 112), and trains every model under the MEGC2019 protocol
(leave-one-subject-out over the 68 subjects, predictions pooled, the last epoch's model: no epoch or setting is
chosen on a test subject) with the same recipe, for each seed. Each model's final checkpoint is exported to ONNX
and timed at batch 1 with ONNX Runtime on this CPU. Writes ``benchmarks/results/recognition.md`` and ``.json`` (UF1
and UAR as mean and spread over the seeds, UF1 per dataset, parameters, GFLOPs, CPU latency, training time, where
the errors are, each row's seeds with their class probabilities averaged, and what the best-scoring model
misreads: the patterns of coded action units and the subjects, with the gain and asymmetry they were drawn with)
and ``recognition_<model>.png``, the confusion matrix of the first seed. Runs already in the JSON are kept, so an
interrupted benchmark resumes.

    python benchmarks/recognition.py [--models ststnet,mmt_small,mmt_small+motion-only] [--seeds 0,1,2] [--jobs 2]
                                     [--fan-out 2]
    python benchmarks/recognition.py --retime    # the latency column again, all models timed together
    python benchmarks/recognition.py --models mmt_small_ens+motion-only --head removed   # flow less the head

A model is a name of ``edge_mer.model.config.MODELS``, or ``NAME+ABLATION`` with an ablation of the MMT
(``ABLATIONS``, as ``train --ablation`` takes it): ``mmt_small+motion-only`` is the MMT without its texture branch.
``--head removed`` trains on features whose flow has the head's own motion taken out (``data prepare --head removed``,
prepared into a folder of their own); their runs are rows of their own, "(head motion removed)", beside the same
models on the plain flow. ``--person-rms R`` trains models that read each subject's motion brought to one strength
(``MMTConfig.person_rms``; a held-out subject's gain from its other samples), rows of their own as well, and so
does ``--partner-lr LR``: an ensemble's partner trained at a peak learning rate of its own (``TrainConfig.partner_lr``).

On a GPU (``--device cuda``, the default when torch sees one) several runs side by side (``--jobs``) keep it
busier than one: these models are small. On a CPU, ``--fan-out N`` trains one run at a time under ``torchrun``
with N processes of one thread each, process i taking every N-th fold (``train``'s fan-out): the same predictions
as ``--jobs N`` (one thread a run, folds seeded by their number), and a single model or seed finishes N times
sooner. A run that is stopped keeps its finished folds (``train``'s resume), whichever way it was started.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_mer.atomic import write_text
from edge_mer.errors import UserError, script_main
from edge_mer.eval.metrics import averaged, mean_and_spread
from edge_mer.eval.truth import (
    FIRST_FACES,
    breakdown_of,
    draw_summary,
    errors_table,
    misread_of,
    misread_tables,
    other_draw,
    save_runs,
)
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.model.build import build_model
from edge_mer.model.config import MMTConfig, model_config
from edge_mer.quant.export import export, write_onnx
from edge_mer.runtime.backends.base import sample_inputs
from edge_mer.runtime.backends.onnxruntime import make_session
from edge_mer.runtime.bench import bench_models
from edge_mer.runtime.timing import interleaved_times_ms, percentiles
from edge_mer.train.loop import TrainConfig
from edge_mer.train.run import OWN_OPTIONS, RunConfig, run, seconds_text

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("casme2", "samm", "smic")


def _name_and_ablation(model: str) -> tuple[str, str]:
    """``NAME+ABLATION`` (or ``NAME``, the full model) as the model's name and its ablation."""
    name, _, ablation = model.partition("+")
    return name, ablation or "full"


HEAD_REMOVED = "head motion removed"
RECIPE_LR = TrainConfig.lr  # the recipe's learning rate, every model's unless --lr says otherwise
CLASSES = MMTConfig().class_names
# each setting of Settings off its default, in a row's label ({} its value; --head takes kept or removed only)
NOTES = {"head": HEAD_REMOVED, "lr": "learning rate {:g}", "person_rms": "each person's motion to RMS {:g}",
         "partner_lr": "the partner at learning rate {:g}"}


@dataclass(frozen=True)
class Settings:
    """What a run changes of the recipe, each change a row of its own in the table and a folder of its own under
    ``runs/``: the head's own motion in the flow (``--head``), the peak learning rate (``--lr``), each person's
    motion brought to one strength (``--person-rms``, ``MMTConfig.person_rms``) and an ensemble partner's peak
    learning rate (``--partner-lr``, ``TrainConfig.partner_lr``). A new option is a field here and an entry of
    ``NOTES``; the key, the row's label, the record and the training settings take it from here."""

    head: str = "kept"
    lr: float = RECIPE_LR
    person_rms: float = 0.0
    partner_lr: float = 0.0

    @classmethod
    def of(cls, run: dict[str, Any]) -> Settings:
        """A run record's settings (records from before a setting existed have no such field: its default)."""
        return cls(**{f.name: run[f.name] for f in fields(cls) if f.name in run})

    def changed(self) -> list[tuple[str, Any]]:
        """The settings off the recipe's default, in field order: (name, value)."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) != f.default]

    def key(self) -> str:
        """The part of a run's key between its model and its seed ("" for the recipe on the plain flow)."""
        return "".join(f"/{name.replace('_', '-')}-{value:g}" if isinstance(value, float) else f"/{name}-{value}"
                       for name, value in self.changed())

    def notes(self) -> list[str]:
        """How a row differs from the recipe on the plain flow, in words."""
        return [NOTES[name].format(value) for name, value in self.changed()]

    def record(self) -> dict[str, Any]:
        """The fields a run's record keeps: head and learning rate always, the others where set."""
        return {"head": self.head, "lr": self.lr, **({"person_rms": self.person_rms} if self.person_rms else {}),
                **({"partner_lr": self.partner_lr} if self.partner_lr else {})}

    def run_config(self, name: str, ablation: str, seed: int, features: str, epochs: int, device: str) -> RunConfig:
        """One benchmark run: the recipe's defaults with these settings, the MEGC2019 protocol."""
        return RunConfig(features=features, protocol="megc2019", model=name, ablation=ablation, device=device,
                         train=TrainConfig(epochs=epochs, seed=seed, lr=self.lr, partner_lr=self.partner_lr),
                         changes=(("person_rms", self.person_rms),) if self.person_rms else ())


def model_key(model: str, settings: Settings = Settings()) -> str:
    """The model and how its settings differ from the recipe's: the part of a run's key before its seed."""
    return model + settings.key()


def run_key(model: str, seed: int, settings: Settings = Settings()) -> str:
    """A run's key in the results and its folder under ``runs/``."""
    return f"{model_key(model, settings)}/{seed}"


def key_of(run: dict[str, Any]) -> str:
    """``run_key`` of a run's record."""
    return run_key(run["model"], run["seed"], Settings.of(run))


def row_label(run: dict[str, Any]) -> str:
    """A run's row in the table: its model and how its settings differ from the recipe's."""
    notes = Settings.of(run).notes()
    return f"{run['model']} ({', '.join(notes)})" if notes else run["model"]


def train_one(model: str, seed: int, features: str, epochs: int, work: str, device: str,
              threads: int, fan_out: int = 1, settings: Settings = Settings()) -> dict[str, Any]:
    """One model and seed under the MEGC2019 protocol (in a process of its own under --jobs; in ``fan_out``
    processes under torchrun when it is above 1)."""
    folder = Path(work) / "runs" / run_key(model, seed, settings)
    name, ablation = _name_and_ablation(model)
    cfg = settings.run_config(name, ablation, seed, features, epochs, device)
    if fan_out > 1:
        r = fanned_out(cfg, folder, threads or 1, fan_out)
    else:
        if threads:
            torch.set_num_threads(threads)
        r = run(cfg, folder, progress=True)
    return {"model": model, "seed": seed, **settings.record(),
            "uf1": r["uf1"], "uar": r["uar"],
            "accuracy": r["accuracy"], "samples": r["samples"], "folds": r["folds"], "params": r["params"],
            "gflops": r["gflops"], "seconds": r["seconds"], "seconds_unknown_folds": r.get("seconds_unknown_folds", 0),
            "device": r["device"], "per_dataset": r["per_dataset"],
            "breakdown": breakdown_of(folder / "predictions.csv", Path(work) / "data"),
            "misread": misread_of(folder / "predictions.csv", Path(work) / "data", CLASSES)}


def train_arguments(cfg: RunConfig) -> list[str]:
    """``edge-mer train``'s arguments for ``cfg`` (MEGC2019 protocol): its own options, then ``--set`` for each
    training field off its default and each model change, so that a run started either way keeps and resumes the
    same folds."""
    train = cfg.train
    unset = TrainConfig()
    return ["--features", cfg.features, "--protocol", cfg.protocol, "--model", cfg.model, "--ablation", cfg.ablation,
            "--epochs", str(train.epochs), "--batch-size", str(train.batch_size), "--lr", repr(train.lr),
            "--seed", str(train.seed), "--device", cfg.device] \
        + [a for f in fields(TrainConfig) if f.name not in OWN_OPTIONS
           and getattr(train, f.name) != getattr(unset, f.name)
           for a in ("--set", f"{f.name}={json.dumps(getattr(train, f.name))}")] \
        + [a for key, value in cfg.changes for a in ("--set", f"{key}={json.dumps(value)}")]


def fanned_out(cfg: RunConfig, folder: Path, threads: int, processes: int) -> dict[str, Any]:
    """``edge-mer train`` of ``cfg`` under torchrun in ``processes`` processes of ``threads`` threads; its
    metrics."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "edge_mer", "train", *train_arguments(cfg), "--threads", str(threads), "--force", "--out", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise UserError(f"{cfg.model}+{cfg.ablation} seed {cfg.train.seed}: torchrun exited {done.returncode} (its "
                        f"errors are above; the finished folds are kept and the same command resumes)")
    return json.loads((folder / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ststnet,mmt_small")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (the data's seed is --data-seed)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=RECIPE_LR,
                    help=f"peak learning rate (default the recipe's {RECIPE_LR:g}); runs at another are rows of their "
                         "own")
    ap.add_argument("--person-rms", type=float, default=0.0, metavar="RMS",
                    help="train models that read each person's motion brought to this RMS flow (MMTConfig."
                         "person_rms; a held-out subject's gain from its other samples); runs with it are rows of "
                         "their own")
    ap.add_argument("--partner-lr", type=float, default=0.0, metavar="LR",
                    help="train an ensemble's partner at this peak learning rate (TrainConfig.partner_lr); runs with "
                         "it are rows of their own")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--name", default="recognition", help="results file stem (default recognition)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained side by side, each in its own process")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (default: 1 with --jobs > 1, "
                                                           "else torch's own)")
    ap.add_argument("--fan-out", type=int, default=1, metavar="N",
                    help="train each run under torchrun in N processes of one thread, its folds spread over them")
    ap.add_argument("--head", default="kept", choices=("kept", "removed"),
                    help="the head's own motion in the flow: kept (default) or removed (data prepare --head)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the models train")
    ap.add_argument("--work", default="benchmarks/.work/recognition", help="data, features and runs (not committed)")
    ap.add_argument("--retime", action="store_true",
                    help="time every model of the table again, all at one moment and in turns (on an idle machine), "
                         "and rewrite the table; trains nothing")
    ap.add_argument("--time-only", action="store_true",
                    help="time the --models' architectures as --retime does and print the figures; trains nothing "
                         "and leaves the table alone (models without a row, or HTNet, whose LOSO is a GPU job)")
    args = ap.parse_args()
    if args.fan_out < 1:
        ap.error("--fan-out must be at least 1")
    threads = args.threads or (1 if args.jobs > 1 else 0)
    models = args.models.split(",")
    for m in models:
        name, ablation = _name_and_ablation(m)
        model_config(name, ablation=ablation)  # an unknown name or ablation: one line before any work
    work = Path(args.work)
    if args.time_only:
        print(json.dumps(retime(models, work / "onnx"), indent=1))
        return
    out_json = RESULTS / f"{args.name}.json"
    if args.retime:
        if not out_json.is_file():
            ap.error(f"--retime: {out_json} does not exist yet (train the models first)")
        doc = json.loads(out_json.read_text())
        doc["latency"] = retime(sorted({r["model"] for r in doc["runs"].values()}), work / "onnx")
        save_runs(out_json, doc)
        _table(doc, args.name)
        return
    feats = work / ("features" if args.head == "kept" else f"features-head-{args.head}")
    prepare_synthetic_composite(work / "data", feats, 0, 0, args.data_seed, diverse=True, head=args.head)
    doc = json.loads(out_json.read_text()) if out_json.exists() else {"runs": {}}
    if why := other_draw(doc, work / "data", out_json):
        ap.error(why)
    settings = Settings(args.head, args.lr, args.person_rms, args.partner_lr)
    todo = [(m, int(s)) for m in models for s in args.seeds.split(",")
            if run_key(m, int(s), settings) not in doc["runs"]]
    for r in doc["runs"].values():  # runs from before the breakdown or misread existed, where their folder is kept
        kept = work / "runs" / key_of(r) / "predictions.csv"
        r["breakdown"] = r.get("breakdown") or breakdown_of(kept, work / "data")
        r["misread"] = r.get("misread") or misread_of(kept, work / "data", CLASSES)
    doc |= draw_summary(work / "data", feats)
    seeds_averaged(doc, work)

    def save() -> None:
        doc.update({"date": dt.date.today().isoformat(), "epochs": args.epochs, "data_seed": args.data_seed,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores"})
        save_runs(out_json, doc)

    save()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [pool.submit(train_one, m, s, str(feats), args.epochs, str(work), args.device, threads, args.fan_out,
                            settings) for m, s in todo]
        for done in as_completed(jobs):
            r = done.result()
            doc["runs"][key_of(r)] = r
            seeds_averaged(doc, work)
            save()
            print(f"{row_label(r)}/{r['seed']}: UF1 {r['uf1']:.4f} UAR {r['uar']:.4f} ({r['seconds']:.0f} s)",
                  flush=True)
    # latency once nothing else trains: every exported model at batch 1, ONNX Runtime, 2 threads
    for r in doc["runs"].values():
        folder = work / "runs" / key_of(r)
        if "cpu_ms_p50" in r or not (folder / "checkpoint.pt").is_file():
            continue
        onnx = work / "onnx" / f"{key_of(r).replace('/', '-')}.onnx"
        export(folder / "checkpoint.pt", onnx, force=True)
        r["cpu_ms_p50"] = bench_models(onnx, ["onnxruntime"], runs=200, threads=2)[0]["p50"]
        key = model_key(r["model"], Settings.of(r))
        png = RESULTS / f"{args.name}_{key.replace('/', '_')}.png"
        if not png.exists():
            shutil.copyfile(folder / "confusion.png", png)
        save()
    _table(doc, args.name)


def retime(models: list[str], folder: Path, runs: int = 300, threads: int = 2) -> dict[str, Any]:
    """Batch-1 latency of each model's architecture (an ONNX export of it, its weights as built: the time does
    not depend on their values), ONNX Runtime with ``threads`` threads, the models timed in turns of 50 calls
    (the first calls after another model's run slower for a while: its threads still spin, its weights fill the
    caches) so that load which comes and goes falls on all alike. Medians and 95th percentiles."""
    load = os.getloadavg()[0]
    block = min(50, runs)
    folder.mkdir(parents=True, exist_ok=True)
    calls: dict[str, Callable[[], object]] = {}
    for m in models:
        name, ablation = _name_and_ablation(m)
        cfg = model_config(name, ablation=ablation)
        torch.manual_seed(0)
        path = folder / f"{m}-architecture.onnx"
        write_onnx(build_model(cfg).eval(), cfg.size, path)
        sess = make_session(path, threads=threads)
        motion, texture = sample_inputs(1, cfg.size)
        calls[m] = partial(sess.run, None, {"motion": motion, "texture": texture})
    times = interleaved_times_ms(calls, runs, warmup=20, block=block)
    return {"date": dt.date.today().isoformat(), "runs": runs, "block": block, "threads": threads,
            "load_average_before": round(load, 2),
            "ms": {m: percentiles(t, (50, 95)) for m, t in times.items()}}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _latency_text(doc: dict) -> str:
    t = doc.get("latency")
    if not t:
        return "CPU latency: the exported ONNX file at batch 1, ONNX Runtime, 2 threads, timed after its training."
    return (f"CPU latency: each model's ONNX export at batch 1, ONNX Runtime, {t['threads']} threads, all models "
            f"timed together in turns of {t.get('block', 1)} calls ({t['runs']} calls each, {t['date']}, load average "
            f"{t['load_average_before']} before; `--retime`).")


def _probabilities(predictions: Path) -> tuple[list[str], list[int], np.ndarray]:
    """A run's predictions.csv (``train``'s): the samples' ids, annotated classes and class probabilities."""
    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["id"] for r in rows], [int(r["truth"]) for r in rows], \
        np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows], np.float64)


def seeds_averaged(doc: dict[str, Any], work: Path) -> None:
    """``doc["averaged"]``: for each row of two or more seeds whose run folders all kept their predictions, the
    scores of the seeds' class probabilities averaged (an ensemble of the seeds, as many models on the device) and
    the share of answers the seeds give alike. A row whose folders are gone keeps what was computed before."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in doc["runs"].values():
        rows.setdefault(row_label(r), []).append(r)
    averaged_rows = doc.setdefault("averaged", {})
    for label, runs in rows.items():
        files = [work / "runs" / key_of(r) / "predictions.csv" for r in sorted(runs, key=lambda r: r["seed"])]
        if len(files) < 2 or not all(f.is_file() for f in files):
            continue
        kept = [_probabilities(f) for f in files]
        order = [np.argsort(ids) for ids, _, _ in kept]
        ids, truth, _ = kept[0]
        if any(sorted(k[0]) != sorted(ids) for k in kept[1:]):
            raise UserError(f"{label}: its seeds' runs scored different samples; train them again on one draw")
        together = averaged(np.asarray(truth)[order[0]], [k[2][o] for k, o in zip(kept, order)], CLASSES)
        averaged_rows[label] = {"seeds": sorted(r["seed"] for r in runs), "uf1": together.scores.uf1,
                                "uar": together.scores.uar, "shared": together.shared}


def _averaged_table(doc: dict[str, Any]) -> list[str]:
    """Markdown lines: the rows whose seeds were averaged (``seeds_averaged``)."""
    rows = doc.get("averaged") or {}
    if not rows:
        return []
    return ["", "### The seeds averaged", "",
            "Each sample's class probabilities averaged over the row's seeds before its class is read (an ensemble "
            "of the seeds' models: as many models to run on the device, and their parameters and GFLOPs as many "
            "times over); answers shared: how many of the samples each later seed answers as the first does.", "",
            "| model | seeds | UF1 | UAR | answers shared |", "|---|---|---:|---:|---:|",
            *(f"| {label} | {', '.join(map(str, a['seeds']))} | {a['uf1']:.4f} | {a['uar']:.4f} | "
              f"{a['shared']:.3f} |" for label, a in rows.items())]


def _table(doc: dict, name: str) -> None:
    models: dict[str, list[dict]] = {}
    for r in doc["runs"].values():
        models.setdefault(row_label(r), []).append(r)
    lines = [f"# Recognition on the diverse synthetic composite ({doc.get('date', '')})", "",
             "68 synthetic subjects sized like the real MEGC2019 composite (`synth dataset --layout megc2019 "
             f"--diverse`, data seed {doc.get('data_seed')}; faces from the photographs "
             f"{', '.join(doc.get('faces', FIRST_FACES))}), DIS flow at S = 112, MEGC2019 protocol (LOSO over "
             f"the 68 subjects, predictions pooled), {doc.get('epochs')} epochs with the same recipe for every "
             "model (the learning rate where a row names another: `--lr`), the last epoch's model"
             + ("; *(head motion removed)*: the same flow less the head's own affine motion, fitted robustly inside "
                "the face (`--head removed`)" * any(r.get("head") == "removed" for r in doc["runs"].values()))
             + ("; *each person's motion to RMS R*: each sample multiplied by R over the median RMS flow of its "
                "subject's other samples, at most x4, the training subjects' by all of theirs (`--person-rms R`, "
                "`train --set person_rms=R`)" * any(r.get("person_rms") for r in doc["runs"].values()))
             + ("; *the partner at learning rate L*: an ensemble's partner trained at a peak learning rate of its "
                "own (`--partner-lr L`, `train --set partner_lr=L`)"
                * any(r.get("partner_lr") for r in doc["runs"].values()))
             + ". UF1 and UAR: mean ± standard deviation over the training seeds. "
             f"{_latency_text(doc)} Machine: {doc.get('machine')}. "
             "Training s: the whole run's, the folds an interrupted run kept included (≥ where some were kept without "
             "their time).",
             "", f"Command: `python benchmarks/recognition.py` (results in `benchmarks/results/{name}.json`)", "",
             "| model | seeds | UF1 | UAR | UF1 CASME II | UF1 SAMM | UF1 SMIC | parameters | GFLOPs | CPU ms p50 "
             "| training s | trained on |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model, runs in models.items():
        per_ds = [f"{statistics.fmean(r['per_dataset'][d]['uf1'] for r in runs):.4f}" for d in DATASETS]
        first = runs[0]
        if first["model"] in (doc.get("latency") or {}).get("ms", {}):  # all models timed together (--retime)
            timed = [doc["latency"]["ms"][first["model"]]["p50"]]
        else:  # the first run that was timed after its training (one whose checkpoint was removed has none)
            timed = [r["cpu_ms_p50"] for r in runs if r.get("cpu_ms_p50") is not None]
        lines.append(f"| {model} | {len(runs)} | {mean_and_spread([r['uf1'] for r in runs])} | "
                     f"{mean_and_spread([r['uar'] for r in runs])} | {' | '.join(per_ds)} | {first['params']:,} | "
                     f"{first['gflops']:.4f} | {_ms(timed[0] if timed else None)} | "
                     f"{seconds_text(runs)} | "
                     f"{', '.join(sorted({r.get('device', 'cpu') for r in runs}))} |")
    if doc.get("ceiling"):
        lines += ["", *errors_table({m: [r["breakdown"] for r in runs if r.get("breakdown")]
                                     for m, runs in models.items()}, doc["ceiling"], doc["amplitude_bands"],
                                    doc.get("coded_reference"))]
    lines += _averaged_table(doc)
    lines += _misread(models)
    write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _misread(models: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: what the best-scoring row misreads most, among the rows whose runs all kept it (runs from
    before it was recorded, whose folders are gone, have none)."""
    kept = {m: runs for m, runs in models.items() if all(r.get("misread") for r in runs)}
    if not kept:
        return []
    best = max(kept, key=lambda m: statistics.fmean(r["uf1"] for r in kept[m]))
    runs = kept[best]
    return ["", f"### What {best} misreads most", "",
            "The best-scoring row whose runs kept their answers"
            + (f"; its {len(runs)} seeds pooled, so each sample counts once a seed. " if len(runs) > 1 else ". ")
            + "First the patterns: samples of one dataset with the same coded action units, "
            "annotated class and note. Then the subjects, with the gain and asymmetry the generator drew for each "
            "(gain: how strongly the subject moves, x0.5 to x2; asymmetry a: the weaker side moves by 1 - a of the "
            "other).", "", *misread_tables([r["misread"] for r in runs], CLASSES)]


if __name__ == "__main__":
    script_main(main)
