"""INT8 benchmark: accuracy of QAT and PTQ INT8 against FP32, and ONNX Runtime latency and file sizes.

The demo model's architecture and features (``--model mmt_small_ens --ablation motion-only --head removed``, as
``scripts/make_demo_model.py`` builds it) trained in FP32 on one development draw of the diverse synthetic
composite (``synth dataset --layout megc2019 --diverse``, data seed 1: 68 subjects, 444 samples); from the same
training samples come a calibration set (256 samples, stratified), PTQ of the FP32 ONNX export and QAT
(modelopt, 10 epochs) exported as Q/DQ. Every artefact is scored by the same code as ``edge-mer eval`` on the
other development draw (data seed 2: 456 samples of other subjects), so a difference of one prediction moves
UF1 by about 0.002. Neither draw is the recognition benchmark's (data seed 0); their data and features are shared with
``recipe.py`` and ``crossdraw.py``. ONNX Runtime latency is the median of one sample (batch 1, 2 threads, all
graph optimisations), the files measured in turn, five rounds, best round kept (the machine may be busy).
Writes ``benchmarks/results/int8.md`` and ``.json`` (``--name``: another stem, for another model).

    python benchmarks/int8.py [--model mmt_small_ens] [--ablation motion-only] [--head removed] [--epochs 60]
                              [--qat-epochs 10] [--name int8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from crossdraw import OTHER_DRAWS, draw_features
from recipe import Kind

from edge_mer.atomic import write_text
from edge_mer.errors import UserError, script_main
from edge_mer.eval.score import evaluate, predict
from edge_mer.features.cache import FeatureSet
from edge_mer.model.config import ABLATIONS, model_config
from edge_mer.quant.calibset import build_set, save_set
from edge_mer.quant.export import count_qdq, export
from edge_mer.quant.ptq import calibrate
from edge_mer.quant.qat import finetune
from edge_mer.runtime.backends import open_backend
from edge_mer.runtime.backends.onnxruntime import cpu_name, make_session, time_session
from edge_mer.train.loop import TrainConfig, train_model
from edge_mer.train.run import RunConfig, save_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
DEMO_MODEL = "mmt_small_ens"  # scripts/make_demo_model.py's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEMO_MODEL, help="the demo model's (scripts/make_demo_model.py)")
    ap.add_argument("--ablation", default="motion-only", choices=sorted(ABLATIONS))
    ap.add_argument("--head", default="removed", choices=("kept", "removed"), help="the features' head motion")
    ap.add_argument("--data-seed", type=int, default=1, help="the draw trained and calibrated on")
    ap.add_argument("--check-seed", type=int, default=2, help="the draw every artefact is scored on")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--qat-epochs", type=int, default=10)
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--work", default="benchmarks/.work/int8", help="models (not committed); the draws' data and "
                                                                    "features live where crossdraw.py keeps them")
    ap.add_argument("--name", default="int8", help="results file stem (default int8; another model: another name)")
    args = ap.parse_args()
    command = " ".join(["python benchmarks/int8.py", *(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                        if v != ap.get_default(k))])
    if args.check_seed == args.data_seed:
        raise UserError("--check-seed must name another draw than --data-seed: the figures are on unseen subjects")
    mcfg = model_config(args.model, size=112, ablation=args.ablation)
    work = Path(args.work)
    feats, test_feats = (draw_features(Path(OTHER_DRAWS), d, Kind(head=args.head))
                         for d in (args.data_seed, args.check_seed))
    fs = FeatureSet.load(feats)
    run = f"{args.model}-{args.ablation}-head-{args.head}-draw-{args.data_seed}-seed-{args.seed}"
    ck, qat_ck, models = (work / run / "fp32" / "checkpoint.pt", work / run / "qat" / "checkpoint.pt",
                          work / run / "models")
    train_s = None
    if not ck.exists():
        t = time.perf_counter()
        tcfg = TrainConfig(epochs=args.epochs, seed=args.seed)
        model = train_model(mcfg, tcfg, fs.motion, fs.texture, fs.labels, args.seed,
                            on_epoch=lambda e, loss: print(f"epoch {e + 1}/{args.epochs} loss {loss:.3f}",
                                                           flush=True))
        ck.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ck, model, mcfg, RunConfig(features=str(feats), model=args.model, ablation=args.ablation,
                                                   train=tcfg), fs, fs.ids)
        train_s = round(time.perf_counter() - t, 1)
    models.mkdir(parents=True, exist_ok=True)
    cs = build_set(fs, args.calibration, args.seed)
    save_set(cs, models / "calibration.npz")
    fp32 = models / "model.onnx"
    exp_fp32 = export(ck, fp32, force=True)
    t = time.perf_counter()
    calibrate(fp32, models / "calibration.npz", models / "model.int8.onnx", force=True)
    ptq_s = time.perf_counter() - t
    qat = finetune(ck, feats, qat_ck.parent, calibration=models / "calibration.npz", epochs=args.qat_epochs,
                   seed=args.seed, progress=False)
    exp_qat = export(qat_ck, models / "model.qat.onnx", force=True)

    artefacts = {"torch FP32 (checkpoint)": ck, "ONNX Runtime FP32": fp32,
                 "ONNX Runtime INT8, PTQ (calibrated Q/DQ)": models / "model.int8.onnx",
                 "torch QAT (fake quantization)": qat_ck,
                 "ONNX Runtime INT8, QAT (Q/DQ)": models / "model.qat.onnx",
                 "ONNX Runtime FP32, QAT weights without quantizers": models / "model.qat.fp32.onnx"}
    test = FeatureSet.load(test_feats)
    ref = predict(open_backend("torch", ck), test.motion, test.texture).argmax(1)
    rows: dict[str, Any] = {}
    for name, path in artefacts.items():
        r = evaluate(path, test_feats, backend="auto", threads=args.threads, precision="file")
        pred = predict(open_backend("auto", path, threads=args.threads, precision="file"), test.motion,
                       test.texture).argmax(1)
        row = {"uf1": r["uf1"], "uar": r["uar"], "accuracy": r["accuracy"], "samples": r["samples"],
               "same_prediction_as_fp32": float((pred == ref).mean()), "file": path.name,
               "bytes": path.stat().st_size}
        if path.suffix == ".onnx":
            q = count_qdq(path)
            row["int8_products"], row["fp32_products"] = len(q["int8_products"]), len(q["fp32_products"])
        rows[name] = row
        print(f"{name}: UF1 {row['uf1']:.4f} agreement {row['same_prediction_as_fp32']:.3f}", flush=True)
    sessions = {name: make_session(path, args.threads) for name, path in artefacts.items() if path.suffix == ".onnx"}
    rounds: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(5):
        for name, sess in sessions.items():
            rounds[name].append(time_session(sess, 112, runs=100))
    for name, ms in rounds.items():
        rows[name]["ort_ms"] = min(ms)
        rows[name]["ort_ms_rounds"] = [round(x, 3) for x in ms]
    doc = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {cpu_name()}, "
           f"{os.cpu_count()} cores", "model": args.model, "ablation": args.ablation, "head": args.head,
           "data_seed": args.data_seed, "check_seed": args.check_seed, "seed": args.seed,
           "train_subjects": len(set(fs.subjects)), "held_out_subjects": len(set(test.subjects)),
           "epochs": args.epochs, "qat_epochs": args.qat_epochs, "calibration_samples": len(cs),
           "threads": args.threads, "held_out_samples": len(test), "train_samples": len(fs), "results": rows,
           "train_seconds": train_s,
           "qat_seconds": qat["seconds"], "ptq_seconds": round(ptq_s, 1),
           "export_max_abs_diff": {"fp32": exp_fp32["max_abs_diff"], "qat": exp_qat["max_abs_diff"]},
           "command": command}
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / f"{args.name}.json", json.dumps(doc, indent=2) + "\n")
    _table(doc, args.name)


def _table(doc: dict[str, Any], stem: str) -> None:
    import onnxruntime

    fp32 = doc["results"]["torch FP32 (checkpoint)"]
    lines = [f"# INT8 against FP32 ({doc['date']})", "",
             f"{doc['model']} ({doc['ablation']})"
             + (", the demo model's architecture," if doc["model"] == DEMO_MODEL else "")
             + " on DIS flow at S = 112 with the "
             f"head's own motion {doc['head']}; trained {doc['epochs']} epochs (seed {doc['seed']}) on "
             f"{doc['train_samples']} samples of {doc['train_subjects']} subjects of the diverse synthetic composite "
             f"(`synth dataset --layout megc2019 --diverse`, data seed {doc['data_seed']}); scored on "
             f"{doc['held_out_samples']} samples of {doc['held_out_subjects']} other subjects (data seed "
             f"{doc['check_seed']}). Calibration: {doc['calibration_samples']} training samples; "
             f"QAT: {doc['qat_epochs']} epochs (modelopt, {doc['qat_seconds']:.0f} s); PTQ: `edge-mer calibrate` "
             f"(max ranges, {doc['ptq_seconds']:.0f} s).", "",
             f"Latency: ONNX Runtime {onnxruntime.__version__}, batch 1, {doc['threads']} threads, all graph "
             f"optimisations; median of 100 runs, best of 5 rounds taken in turn. Machine: {doc['machine']}.", "",
             f"Command: `{doc.get('command', 'python benchmarks/int8.py')}`", "",
             "| model | UF1 | UAR | accuracy | ΔUF1 vs FP32 | same prediction as FP32 | INT8 / FP32 products | "
             "file | size (MB) | ORT latency (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in doc["results"].items():
        prods = f"{r['int8_products']} / {r['fp32_products']}" if "int8_products" in r else ""
        ms = f"{r['ort_ms']:.2f}" if "ort_ms" in r else ""
        lines.append(f"| {name} | {r['uf1']:.4f} | {r['uar']:.4f} | {r['accuracy']:.4f} | "
                     f"{r['uf1'] - fp32['uf1']:+.4f} | {r['same_prediction_as_fp32']:.1%} | {prods} | {r['file']} | "
                     f"{r['bytes'] / 1e6:.2f} | {ms} |")
    write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
