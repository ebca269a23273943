"""Build the packaged DEMO model: an MMT and an STSTNet trained on synthetic data only, INT8 (Q/DQ), sidecars.

Reproducible (fixed seeds): renders the diverse synthetic composite (``synth dataset --layout megc2019
--diverse``, data seed 0: the recognition benchmark's draw, 68 subjects, 456 samples), prepares DIS features
at S = 112 (the flow a CPU device without OpenCV contrib has) less the head's own motion (``--head removed``,
the default; ``kept``: the plain flow), trains the model on every sample for a fixed
budget, runs QAT (modelopt) and exports the Q/DQ ONNX file and its FP32 companion. Both files are then scored
on the development draw (data seed 1: 68 other subjects the model never saw): the INT8 file may lose at most
``MAX_DROP`` UF1 against its FP32 companion, or nothing is installed. Otherwise both go into
``edge_mer/assets/models/`` with sidecars that mark them as a demo model trained on synthetic data and carry
the check's figures. It shows the loop working; it knows nothing of real faces.

    python scripts/make_demo_model.py [--model mmt_small_ens] [--ablation motion-only] [--set KEY=VALUE ...]
                                      [--head removed|kept] [--epochs 60] [--work /tmp/edge-mer-demo-model]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from edge_mer.cli.types import setting
from edge_mer.errors import UserError, script_main
from edge_mer.eval.score import evaluate
from edge_mer.features.cache import FeatureSet
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.model.config import ABLATIONS, model_config
from edge_mer.quant.export import export
from edge_mer.quant.qat import finetune
from edge_mer.runtime.artifact import load_artifact, write_sidecar
from edge_mer.train.loop import TrainConfig, train_model
from edge_mer.train.run import RunConfig, apply_settings, save_checkpoint

OUT = Path(__file__).resolve().parent.parent / "edge_mer" / "assets" / "models"
NAMES = ("demo.int8.onnx", "demo.int8.fp32.onnx")
MAX_DROP = 0.01  # UF1 the INT8 file may lose against its FP32 companion on subjects it never saw
DESCRIPTION = ("DEMO MODEL trained on synthetic data only (edge-mer's generator: public-domain photographs, "
               "rendered action units); it demonstrates the pipeline and says nothing about real faces. Rebuild "
               "with scripts/make_demo_model.py.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the packaged model: the MMT without texture and an STSTNet beside it (ahead of both alone under LOSO)
    ap.add_argument("--model", default="mmt_small_ens")
    ap.add_argument("--ablation", default="motion-only", choices=sorted(ABLATIONS))
    ap.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                    help="a training or model setting, the value as JSON, as edge-mer train --set takes it")
    ap.add_argument("--head", default="removed", choices=("kept", "removed"),
                    help="removed (the packaged model's): the flow less the head's own motion (data prepare --head; "
                         "the runtime reads it from the model's sidecar); kept: the plain flow")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--qat-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--data-seed", type=int, default=0, help="the draw trained on (default: the benchmark's)")
    ap.add_argument("--check-seed", type=int, default=1, help="the draw the INT8 check scores (default: the "
                                                              "development draw)")
    ap.add_argument("--work", default="/tmp/edge-mer-demo-model")
    args = ap.parse_args()
    if args.check_seed == args.data_seed:
        raise UserError("--check-seed must name another draw than --data-seed: the check scores unseen subjects")
    tcfg, changes = apply_settings(TrainConfig(epochs=args.epochs, seed=args.seed), args.set)
    # an unknown name or setting: one line, before any work
    mcfg = model_config(args.model, size=112, ablation=args.ablation, changes=dict(changes))
    work = Path(args.work)
    folder = "features" if args.head == "kept" else f"features-head-{args.head}"  # a reused --work keeps both
    feats, check = work / folder, work / "check" / folder
    prepare_synthetic_composite(work / "data", feats, 0, 0, args.data_seed, diverse=True, head=args.head)
    prepare_synthetic_composite(work / "check" / "data", check, 0, 0, args.check_seed, diverse=True,
                                head=args.head)
    fs = FeatureSet.load(feats)
    model = train_model(mcfg, tcfg, fs.motion_as_read(mcfg.person_rms, scored=False), fs.texture, fs.labels, args.seed,
                        on_epoch=lambda e, loss: print(f"epoch {e + 1}/{args.epochs} loss {loss:.3f}", flush=True))
    ck = work / "fp32" / "checkpoint.pt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ck, model, mcfg, RunConfig(features=str(feats), model=args.model, ablation=args.ablation,
                                               train=tcfg, changes=changes), fs, fs.ids)
    qat = finetune(ck, feats, work / "qat", epochs=args.qat_epochs, seed=args.seed)
    print(f"QAT: {qat['quantizers']} ({qat['seconds']:.0f} s)")
    staged = work / "export"
    report = export(work / "qat" / "checkpoint.pt", staged / NAMES[0], force=True)
    figures: dict[str, Any] = {"features": f"diverse composite, data seed {args.check_seed} (subjects the model "
                                           "never saw)"}
    for name, precision in zip(NAMES, ("int8", "fp32")):
        scored = evaluate(staged / name, check, backend="onnxruntime", precision="file")
        figures |= {"samples": scored["samples"], f"uf1_{precision}": round(scored["uf1"], 4),
                    f"uar_{precision}": round(scored["uar"], 4)}
    figures["uf1_drop"] = round(figures["uf1_fp32"] - figures["uf1_int8"], 4)
    print(f"unseen subjects: UF1 FP32 {figures['uf1_fp32']:.4f}, INT8 {figures['uf1_int8']:.4f} "
          f"(drop {figures['uf1_drop']:+.4f}; at most {MAX_DROP})", flush=True)
    if figures["uf1_drop"] > MAX_DROP:
        raise UserError(f"the INT8 file loses {figures['uf1_drop']:.4f} UF1 against its FP32 companion on unseen "
                        f"subjects (at most {MAX_DROP}); nothing installed, the files stay in {staged}")
    OUT.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        shutil.copyfile(staged / name, OUT / name)
        art = load_artifact(staged / name)
        meta = {k: v for k, v in art.meta.items() if k not in ("format", "file", "sha256", "bytes")}
        meta |= {"description": DESCRIPTION, "demo": True, "int8_check": figures,
                 "training_data": {"generator": "edge-mer synth dataset --layout megc2019 --diverse",
                                   "data_seed": args.data_seed, "flow": "dis", "head": args.head,
                                   "ablation": args.ablation,
                                   "settings": dict(args.set),
                                   "epochs": args.epochs, "qat_epochs": args.qat_epochs, "samples": len(fs),
                                   "subjects": len(set(fs.subjects))}}
        write_sidecar(OUT / name, meta)
    # the companion links carry the sha256 of the files, which did not change
    print(json.dumps({k: report[k] for k in ("onnx", "bytes", "max_abs_diff", "qdq")} | {"int8_check": figures},
                     indent=2))
    print(f"installed {', '.join(str(OUT / n) for n in NAMES)} with their sidecars")


if __name__ == "__main__":
    script_main(main)
