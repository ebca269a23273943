"""Build the packaged DEMO model: an MMT trained on synthetic data only, exported INT8 (Q/DQ) with its sidecar.

Reproducible (fixed seeds): renders the synthetic composite (MEGC2019 layout),
prepares DIS features at S = 112 (the flow a CPU device without OpenCV contrib
has), trains the model on every sample for a fixed budget, runs QAT
(modelopt), exports the Q/DQ ONNX file and its FP32 companion into
``edge_mer/assets/models/`` and marks both sidecars as a demo model trained on
synthetic data. It shows the loop working; it knows nothing of real faces.

    python scripts/make_demo_model.py [--subjects 24] [--epochs 60] [--work /tmp/edge-mer-demo-model]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_mer.errors import script_main
from edge_mer.features.cache import FeatureSet
from edge_mer.features.prepare import prepare_synthetic_composite
from edge_mer.model.config import model_config
from edge_mer.quant.export import export
from edge_mer.quant.qat import finetune
from edge_mer.runtime.artifact import load_artifact, write_sidecar
from edge_mer.train.loop import TrainConfig, train_model
from edge_mer.train.run import RunConfig, save_checkpoint

OUT = Path(__file__).resolve().parent.parent / "edge_mer" / "assets" / "models"
DESCRIPTION = ("DEMO MODEL trained on synthetic data only (edge-mer's generator: public-domain photographs, "
               "rendered action units); it demonstrates the pipeline and says nothing about real faces. Rebuild "
               "with scripts/make_demo_model.py.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mmt_small")
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--qat-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/edge-mer-demo-model")
    args = ap.parse_args()
    work = Path(args.work)
    data, feats = work / "data", work / "features"
    prepare_synthetic_composite(data, feats, args.subjects, args.clips, args.seed)
    fs = FeatureSet.load(feats)
    mcfg = model_config(args.model, size=112)
    tcfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    model = train_model(mcfg, tcfg, fs.motion, fs.texture, fs.labels, args.seed,
                        on_epoch=lambda e, loss: print(f"epoch {e + 1}/{args.epochs} loss {loss:.3f}", flush=True))
    ck = work / "fp32" / "checkpoint.pt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ck, model, mcfg, RunConfig(features=str(feats), model=args.model, train=tcfg), fs, fs.ids)
    qat = finetune(ck, feats, work / "qat", epochs=args.qat_epochs, seed=args.seed)
    print(f"QAT: {qat['quantizers']} ({qat['seconds']:.0f} s)")
    OUT.mkdir(parents=True, exist_ok=True)
    report = export(work / "qat" / "checkpoint.pt", OUT / "demo.int8.onnx", force=True)
    for path in (OUT / "demo.int8.onnx", OUT / "demo.int8.fp32.onnx"):
        art = load_artifact(path)
        meta = {k: v for k, v in art.meta.items() if k not in ("format", "file", "sha256", "bytes")}
        meta |= {"description": DESCRIPTION, "demo": True,
                 "training_data": {"generator": "edge-mer synth dataset --layout megc2019", "subjects": args.subjects,
                                   "clips_per_subject": args.clips, "seed": args.seed, "flow": "dis",
                                   "epochs": args.epochs, "qat_epochs": args.qat_epochs, "samples": len(fs)}}
        write_sidecar(path, meta)
    # the companion links carry the sha256 of the files, which did not change
    print(json.dumps({k: report[k] for k in ("onnx", "bytes", "max_abs_diff", "qdq")}, indent=2))


if __name__ == "__main__":
    script_main(main)
