"""Protocols over a feature cache: LOSO, the MEGC2019 composite, subject-disjoint k folds, a subject split.

Every fold trains a fresh model for the fixed epoch budget and predicts its held
out subject(s); scores come from the predictions pooled over all folds. After
the LOSO and MEGC2019 folds, one more model is trained on every sample with the
same budget and saved as the checkpoint; under ``split`` the split's own model
(training subjects only) is the checkpoint, so its held-out subjects stay
unseen. A checkpoint carries its config, the features' config and the ids it
was trained on.

Under ``torchrun`` the folds are fanned out over the processes (fold i runs on
rank i mod world) and the predictions gathered; ``--ddp`` instead trains each
model with DistributedDataParallel across all processes (gloo on CPUs, nccl on
GPUs). Each fold's seed depends on the run's seed and the fold alone, so one
process and many give the same folds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer import __version__
from edge_mer.atomic import replacing, write_text
from edge_mer.errors import UserError
from edge_mer.eval.metrics import per_group, plot_confusion, scores
from edge_mer.eval.protocol import Fold, loso_folds, megc_log
from edge_mer.features.cache import FeatureSet
from edge_mer.model.checkpoint import CHECKPOINT_FORMAT
from edge_mer.model.config import MMTConfig, model_config
from edge_mer.outputs import staged_folder
from edge_mer.train.loop import TrainConfig, predict, train_model

PROTOCOLS = ("loso", "megc2019", "kfold", "split")
KFOLDS = 5  # folds of the kfold protocol: subjects dealt at random (by the seed) into five disjoint groups


@dataclass(frozen=True)
class RunConfig:
    features: str
    protocol: str = "loso"
    model: str = "mmt_small"
    ablation: str = "full"
    train: TrainConfig = TrainConfig()
    ddp: bool = False
    final_model: bool = True
    # changes to the named model's config, e.g. (("dropout", 0.2),): what a recipe search varies
    changes: tuple[tuple[str, Any], ...] = ()
    device: str = "auto"  # "auto" (a CUDA GPU when torch sees one), "cpu" or "cuda"


# the training settings that have options of their own in ``edge-mer train``
OWN_OPTIONS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed"}


def apply_settings(train: TrainConfig, settings: list[tuple[str, Any]]) -> tuple[TrainConfig,
                                                                                  tuple[tuple[str, Any], ...]]:
    """``train --set KEY=VALUE``: settings that name a TrainConfig field change ``train``; those that name a
    model config field become the run's ``changes`` (checked when the model is built). Lists become tuples."""
    train_fields = {f.name for f in fields(TrainConfig)}
    model_fields = {f.name for f in fields(MMTConfig)}
    given: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in settings}
    for key in given:
        if key in OWN_OPTIONS:
            raise UserError(f"--set {key}: use {OWN_OPTIONS[key]}")
        if key not in train_fields | model_fields:
            trainable = ", ".join(sorted(train_fields - set(OWN_OPTIONS)))
            raise UserError(f"--set {key}: no such setting; training: {trainable}; model: "
                            f"{', '.join(sorted(model_fields))}")
    for key, value in given.items():
        if key in train_fields and not _like(value, getattr(train, key)):
            raise UserError(f"--set {key}={json.dumps(value)}: expected a value like {json.dumps(getattr(train, key))}")
    train = replace(train, **{k: v for k, v in given.items() if k in train_fields})
    return train, tuple(sorted((k, v) for k, v in given.items() if k not in train_fields))


def _like(value: Any, default: Any) -> bool:
    """Whether ``value`` has the type of ``default`` (numbers stand for floats; a tuple of the same length)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    if isinstance(default, tuple):
        return isinstance(value, tuple) and len(value) == len(default) and all(
            _like(v, d) for v, d in zip(value, default))
    return isinstance(value, type(default))


def training_device(choice: str, local_rank: int = 0) -> str:
    """The torch device a run trains on: ``cuda:<local rank mod GPUs>`` or ``cpu``."""
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {choice!r}; choose from auto, cpu, cuda")
    gpu = torch.cuda.is_available()
    if choice == "cuda" and not gpu:
        raise UserError("--device cuda: this torch sees no CUDA GPU (a CPU build, or no driver); use --device cpu")
    if choice == "cpu" or not gpu:
        return "cpu"
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def _dist(device: str) -> tuple[int, int, Any]:
    """(rank, world, torch.distributed or None); initialises the group under torchrun (nccl between GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, dist


def make_folds(fs: FeatureSet, protocol: str, seed: int) -> list[Fold]:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if protocol == "megc2019" and fs.config.get("dataset") != "megc2019":
        raise UserError(f"the megc2019 protocol needs features of the composite (edge-mer data prepare --dataset "
                        f"megc2019); these are {fs.config.get('dataset')!r} features")
    subjects = sorted(set(fs.subjects))
    if len(subjects) < 2:
        raise UserError(f"{len(subjects)} subject in the features: leave-one-subject-out needs at least 2")
    keys = np.asarray(fs.subjects)
    if protocol == "split":
        rng = np.random.default_rng(seed)
        test = set(rng.permutation(subjects)[: max(1, len(subjects) // 5)].tolist())
        mask = np.isin(keys, sorted(test))
        return [Fold("+".join(sorted(test)), np.flatnonzero(~mask), np.flatnonzero(mask))]
    if protocol == "kfold":
        order = np.random.default_rng(seed).permutation(subjects)
        groups = [sorted(order[i::KFOLDS].tolist()) for i in range(min(KFOLDS, len(subjects)))]
        return [Fold("+".join(g), np.flatnonzero(~np.isin(keys, g)), np.flatnonzero(np.isin(keys, g)))
                for g in groups]
    return loso_folds(fs.subjects)


def check_features(fs: FeatureSet, mcfg: MMTConfig) -> None:
    size = fs.motion.shape[-1]
    if size != mcfg.size:
        raise UserError(f"features are {size}x{size} but the model expects {mcfg.size}x{mcfg.size}")
    if fs.labels.max() >= mcfg.num_classes:
        raise UserError(f"features carry {int(fs.labels.max()) + 1} classes, the model {mcfg.num_classes}")


def run(cfg: RunConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    start = time.perf_counter()
    device = training_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    rank, world, dist = _dist(device)
    try:
        return _run(cfg, out, progress, start, rank, world, dist, device)
    finally:
        if dist is not None:  # before the interpreter exits: a gloo group torn down at exit can abort a rank
            dist.destroy_process_group()


def _run(cfg: RunConfig, out: Path, progress: bool, start: float, rank: int, world: int,
         dist: Any, device: str) -> dict[str, Any]:
    fs = FeatureSet.load(Path(cfg.features))
    mcfg = model_config(cfg.model, size=int(fs.motion.shape[-1]), ablation=cfg.ablation, changes=dict(cfg.changes))
    check_features(fs, mcfg)
    folds = make_folds(fs, cfg.protocol, cfg.train.seed)
    trained_motion, scored_motion = (fs.motion_as_read(mcfg.person_rms, scored) for scored in (False, True))
    probs = np.zeros((len(fs), mcfg.num_classes), np.float32)
    tested = np.zeros(len(fs), bool)
    wrap, shard = _ddp_wrap(dist, rank, world, device) if cfg.ddp else (None, (0, 1))
    mine = [i for i in range(len(folds)) if cfg.ddp or i % world == rank]
    # every finished fold's predictions are kept beside the run folder until the run is written, so that the
    # same command after a kill or a crash trains only the folds that were not finished (the split protocol's
    # one fold is its checkpoint as well: it is not kept)
    store = None if cfg.protocol == "split" else _fold_store(out, cfg, fs, mcfg)
    kept = {i: t for i in mine if store is not None and (t := _load_fold(store, i, folds[i], probs)) is not None}
    if kept and rank == 0:  # said even under --quiet
        print(f"resuming: {len(kept)} of {len(mine)} folds were finished by an earlier run of this command "
              f"({store})", file=sys.stderr, flush=True)
    split_model: Any = None
    for k, i in enumerate(mine):
        fold = folds[i]
        if len(fold.train) == 0:
            raise UserError(f"fold {fold.subject} has no training samples")
        tested[fold.test] = True
        if i in kept:
            continue
        seed = cfg.train.seed * 100003 + i
        fold_start = time.perf_counter()

        def log(epoch: int, loss: float, fold: Fold = fold, k: int = k) -> None:
            if progress and rank == 0:
                print(f"fold {k + 1}/{len(mine)} {fold.subject}: epoch {epoch + 1}/{cfg.train.epochs} "
                      f"loss {loss:.3f}", file=sys.stderr, flush=True)
        model = train_model(mcfg, cfg.train, trained_motion[fold.train], fs.texture[fold.train],
                            fs.labels[fold.train], seed, wrap, shard, log, device=device)
        probs[fold.test] = predict(model, scored_motion[fold.test], fs.texture[fold.test])
        if store is not None and (rank == 0 or not cfg.ddp):
            with replacing(store / f"fold-{i:04d}.npz", ".npz") as tmp:
                np.savez(tmp, test=fold.test, probs=probs[fold.test], seconds=time.perf_counter() - fold_start)
        split_model = model
    if dist is not None and not cfg.ddp:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (probs, tested))
        for p, t in gathered:
            probs[t] = p[t]
            tested |= t
    result = _report(cfg, fs, folds, probs, tested, mcfg)
    final, trained_on = None, fs.ids
    if cfg.protocol == "split" and cfg.final_model:
        # the split's own model is the checkpoint: trained on the training subjects only, so the held-out
        # subjects stay unseen for eval --unseen, calibration and QAT
        final, trained_on = split_model, [fs.ids[i] for i in folds[0].train]
    elif cfg.final_model:
        final = train_model(mcfg, cfg.train, trained_motion, fs.texture, fs.labels, cfg.train.seed * 100003 + 99991,
                            wrap, shard, device=device)
    if rank == 0:
        # a resumed run's time is this command's and its kept folds' (folds kept before their time was: unknown)
        unknown = [i for i, t in kept.items() if math.isnan(t)]
        result["seconds"] = round(time.perf_counter() - start + sum(t for t in kept.values() if not math.isnan(t)), 1)
        if unknown:
            result["seconds_unknown_folds"] = len(unknown)
        result["device"] = device.split(":")[0]
        _write(out, cfg, fs, folds, probs, tested, result, mcfg, final, trained_on)
    if dist is not None:
        dist.barrier()
    if rank == 0:  # written whole: the kept folds of this and of earlier settings of this run folder go
        for old in out.parent.glob(f".{out.name}.folds-*"):
            shutil.rmtree(old, ignore_errors=True)
    return result


def _fold_store(out: Path, cfg: RunConfig, fs: FeatureSet, mcfg: MMTConfig) -> Path:
    """The folder beside ``out`` that keeps finished folds, named by what decides their predictions: the run's
    settings (not the device; its model changes as the model's config has them), the model's whole config (a
    registry name whose meaning changed keeps nothing), the features' config and sample ids, and the edge-mer
    version. Settings at their defaults are left out, so a setting added later, whose default keeps what was
    trained before, keeps the folds of the runs before it."""
    what = {k: v for k, v in _set_fields(cfg).items() if k not in ("device", "changes")}
    key = json.dumps({"run": what, "model": _set_fields(mcfg), "features": fs.config, "ids": list(fs.ids),
                      "edge_mer": __version__}, sort_keys=True, default=str)
    return out.parent / f".{out.name}.folds-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _set_fields(obj: Any) -> dict[str, Any]:
    """The fields of the dataclass ``obj`` that differ from their defaults (a field that is a dataclass: its own
    such fields, or left out when none differ)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            if inner := _set_fields(value):
                out[f.name] = inner
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if default is MISSING or value != default:
            out[f.name] = value
    return out


def seconds_text(results: list[dict[str, Any]]) -> str:
    """The mean training time of these runs' results for a table; "≥ N" where some run was resumed from folds
    whose time was not kept (``seconds_unknown_folds``): their time is missing from it."""
    mean = sum(r["seconds"] for r in results) / len(results)
    return f"≥ {mean:.0f}" if any(r.get("seconds_unknown_folds") for r in results) else f"{mean:.0f}"


def _load_fold(store: Path, i: int, fold: Fold, probs: np.ndarray) -> float | None:
    """Put fold ``i``'s kept predictions into ``probs`` and give the seconds its training took (NaN for a fold
    kept without them); None when there are none (or they do not fit)."""
    path = store / f"fold-{i:04d}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as kept:
            test, p = kept["test"], kept["probs"]
            seconds = float(kept["seconds"]) if "seconds" in kept.files else math.nan
    except (OSError, ValueError, KeyError):
        return None
    if not np.array_equal(test, fold.test) or p.shape != probs[fold.test].shape:
        return None
    probs[fold.test] = p
    return seconds


def _ddp_wrap(dist: Any, rank: int, world: int, device: str) -> tuple[Any, tuple[int, int]]:
    if dist is None:
        return None, (0, 1)
    from torch.nn.parallel import DistributedDataParallel

    ids = [int(device.split(":")[1])] if device.startswith("cuda") else None
    return (lambda m: DistributedDataParallel(m, device_ids=ids)), (rank, world)


def _report(cfg: RunConfig, fs: FeatureSet, folds: list[Fold], probs: np.ndarray, tested: np.ndarray,
            mcfg: MMTConfig) -> dict[str, Any]:
    from edge_mer.model.build import build_model, flops_per_sample
    from edge_mer.model.mmt import count_parameters

    names = list(mcfg.class_names)
    pred = probs.argmax(1)
    t, p = fs.labels[tested], pred[tested]
    s = scores(t, p, names)
    groups = [d for d, k in zip(fs.datasets, tested) if k]
    per_ds = {k: {"uf1": v.uf1, "uar": v.uar, "accuracy": v.accuracy, "samples": v.samples,
                  "absent_classes": v.absent} for k, v in per_group(t, p, groups, names).items()}
    return {"uf1": s.uf1, "uar": s.uar, "accuracy": s.accuracy, "samples": s.samples, "f1": s.f1,
            "recall": s.recall, "support": s.support, "confusion": s.confusion, "absent_classes": s.absent,
            "classes": names, "per_dataset": per_ds, "protocol": cfg.protocol, "folds": len(folds),
            "model": cfg.model, "ablation": cfg.ablation, "params": count_parameters(build_model(mcfg)),
            "gflops": round(flops_per_sample(mcfg) / 1e9, 4), "epochs": cfg.train.epochs,
            "seed": cfg.train.seed, "features": cfg.features}


def _write(out: Path, cfg: RunConfig, fs: FeatureSet, folds: list[Fold], probs: np.ndarray, tested: np.ndarray,
           result: dict[str, Any], mcfg: MMTConfig, final: Any, trained_on: list[str]) -> None:
    """The run folder, built beside ``out`` and swapped in whole: a kill or a full disk while writing leaves the
    earlier run (or nothing), never a folder that mixes two runs or holds a truncated checkpoint."""
    with staged_folder(out) as folder:
        write_text(folder / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
        pred = probs.argmax(1)
        write_text(folder / "megc_log.txt", megc_log(folds, fs.ids, pred, fs.labels))
        lines = ["id,subject,truth,prediction," + ",".join(f"p_{n}" for n in mcfg.class_names)]
        for i in np.flatnonzero(tested):
            lines.append(f"{fs.ids[i]},{fs.subjects[i]},{fs.labels[i]},{pred[i]},"
                         + ",".join(f"{v:.5f}" for v in probs[i]))
        write_text(folder / "predictions.csv", "\n".join(lines) + "\n")
        name = cfg.model + ("" if cfg.ablation == "full" else f"+{cfg.ablation}")
        title = f"{name} {cfg.protocol}\nUF1 {result['uf1']:.3f}, UAR {result['uar']:.3f}"
        plot_confusion(result["confusion"], mcfg.class_names, str(folder / "confusion.png"), title)
        write_text(folder / "run.json", json.dumps({"run": asdict(cfg), "model": mcfg.to_dict(),
                                                     "features": fs.config, "edge_mer": __version__},
                                                    indent=2, sort_keys=True) + "\n")
        if final is not None:
            save_checkpoint(folder / "checkpoint.pt", final, mcfg, cfg, fs, trained_on)


def save_checkpoint(path: Path, model: Any, mcfg: MMTConfig, cfg: RunConfig, fs: FeatureSet,
                    trained_on: list[str]) -> None:
    import torch

    with replacing(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "model": cfg.model, "config": mcfg.to_dict(),
                    "state_dict": model.state_dict(), "train": asdict(cfg.train), "features": fs.config,
                    "trained_on": trained_on, "edge_mer": __version__}, tmp)
