"""Quantization-aware training with NVIDIA's TensorRT Model Optimizer (modelopt).

INT8 weights per output channel and INT8 activations per tensor on the inputs
of every linear layer and patch embedding (the layers TensorRT runs in INT8);
LayerNorm, softmax, the attention products and the residuals stay FP32, and
the contrastive projections (unused at inference) are not quantized. The layers
that read the motion itself (an MMT's motion patch embeddings or convolution
stems, an STSTNet's streams, HTNet's patch embedding: :func:`motion_readers`,
found in the model as PTQ finds them in the graph) stay FP, weights and inputs: calibrated by max,
their input ranges reach the flow's clip (8 units; 4.7 after the STSTNet's
pooling), so one INT8 step per tensor is 0.04-0.06 units, near a weak mover's
whole motion (the median sample's RMS is 0.074 units on flow less the head's
motion). Quantized there, the packaged model lost 0.019 UF1 on unseen subjects
with that flow; with those layers FP, nothing. The amax
of every quantizer is first calibrated (max) on calibration samples, then the
model is fine-tuned with the fake quantizers in the graph, on the samples the
FP32 checkpoint was trained on, for a fixed number of epochs.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer import __version__
from edge_mer.atomic import replacing, write_text
from edge_mer.errors import UserError
from edge_mer.features.cache import FeatureSet
from edge_mer.model.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, modelopt, quiet
from edge_mer.outputs import staged_folder
from edge_mer.quant.calibset import MIN_CALIBRATION_SAMPLES, build_set, check_person_level, load_set, too_few
from edge_mer.runtime.artifact import sha256


def quant_config(readers: list[str]) -> dict[str, Any]:
    """modelopt's configuration: INT8 weights per output channel, activations per tensor, LayerNorms and the
    contrastive projections left out, and the layers named in ``readers`` left FP (no Q/DQ at all)."""
    return {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
            {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}},
            {"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False},
            {"quantizer_name": "*project*", "enable": False},
            *({"quantizer_name": f"{name}.*_quantizer", "enable": False} for name in readers),
        ],
        "algorithm": "max",
    }


def motion_readers(model: Any) -> list[str]:
    """The names of the weighted layers (convolutions, linear layers) that read the ``motion`` input itself:
    reached from it through unweighted operations only (a resize, a crop of the regions, a mirror image, a
    concatenation), not through another weighted layer. Found by running the model once on random inputs and
    following each such layer's input back through autograd's graph, stopping at the outputs of weighted layers:
    the layers ``quant.ptq.motion_readers`` finds in the exported graph, whatever the architecture."""
    import torch
    from torch import nn

    weighted: dict[nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    order = list(weighted.values())
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    motion = torch.randn(2, cfg.channels["motion"], cfg.size, cfg.size, generator=gen).requires_grad_()
    texture = torch.randn(2, cfg.channels["texture"], cfg.size, cfg.size, generator=gen)
    barriers: set[Any] = set()  # autograd nodes that made a weighted layer's output
    found: set[str] = set()

    def reads_motion(x: torch.Tensor) -> bool:
        if x is motion:
            return True
        todo, seen = [x.grad_fn], set()
        while todo:
            node = todo.pop()
            if node is None or node in seen or node in barriers:
                continue
            seen.add(node)
            if getattr(node, "variable", None) is motion:
                return True
            todo += [n for n, _ in node.next_functions]
        return False

    def before(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if reads_motion(args[0]):
            found.add(weighted[mod])

    def after(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        barriers.add(out.grad_fn)

    hooks = [h for m in weighted for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    training = model.training
    try:
        with torch.enable_grad():
            model.eval()(motion, texture)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return sorted(found, key=order.index)


def quantize(model: Any, motion: np.ndarray, texture: np.ndarray, batch: int = 32) -> Any:
    """Insert the fake quantizers and calibrate their ranges on the given samples (in place)."""
    import torch

    mtq, _ = modelopt()
    model.eval()

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for s in range(0, len(motion), batch):
                m(torch.from_numpy(motion[s:s + batch]), torch.from_numpy(texture[s:s + batch]))

    with quiet():
        return mtq.quantize(model, quant_config(motion_readers(model)), forward_loop)


def quant_state(model: Any, calibration: dict[str, Any]) -> dict[str, Any]:
    _, mto = modelopt()
    return {"method": "modelopt-int8", "modelopt": md.version("nvidia-modelopt"),
            "modelopt_state": mto.modelopt_state(model), "calibration": calibration}


def count_quantizers(model: Any) -> dict[str, int]:
    """Enabled weight and input quantizers (for reports and tests)."""
    counts = {"weight": 0, "input": 0}
    for name, mod in model.named_modules():
        if type(mod).__name__ == "TensorQuantizer" and getattr(mod, "is_enabled", False):
            kind = name.rsplit(".", 1)[-1].split("_")[0]
            if kind in counts:
                counts[kind] += 1
    return counts


def disable_quantizers(model: Any) -> None:
    mtq, _ = modelopt()
    mtq.disable_quantizer(model, "*")


def finetune(checkpoint: Any, features: Any, out: Any, calibration: Any = None, n_calib: int = 256,
             epochs: int = 10, lr: float = 1e-5, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """QAT of an FP32 checkpoint: calibrate, fine-tune on its own training samples, save ``out``/checkpoint.pt."""
    import torch  # torch and the training loop (which imports it): only the command that trains needs them

    from edge_mer.train.loop import TrainConfig, train_model
    from edge_mer.train.run import check_features

    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    model, ck = load_checkpoint(checkpoint)
    if ck.get("quant"):
        raise UserError(f"{checkpoint} is already a QAT checkpoint; start from the FP32 one")
    fs = FeatureSet.load(Path(features))
    check_features(fs, model.cfg)
    trained = set(ck.get("trained_on", []))
    idx = np.array([i for i, s in enumerate(fs.ids) if s in trained], np.int64)
    if len(idx) == 0:
        raise UserError(f"none of the samples in {features} were used to train {checkpoint.name}; QAT fine-tunes "
                        "on the checkpoint's own training samples")
    if calibration:
        cs = load_set(Path(calibration), size=model.cfg.size)
        check_person_level(cs.meta, model.cfg.person_rms, Path(calibration), checkpoint)
        calib = {"file": Path(calibration).name, "sha256": sha256(Path(calibration)), "samples": len(cs)}
    else:
        cs = build_set(fs, n_calib, seed, only_ids=trained, person_rms=model.cfg.person_rms)
        if len(cs) < MIN_CALIBRATION_SAMPLES:
            raise too_few(f"only {len(cs)} of the samples {checkpoint.name} was trained on are in {features} to "
                          "calibrate on (or pass --calibration SET)")
        calib = {"file": None, "drawn_from": str(features), "samples": len(cs), "counts": cs.meta["counts"]}
    model = quantize(model, cs.motion, cs.texture)
    known = {f.name for f in fields(TrainConfig)}
    saved: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                             for k, v in ck.get("train", {}).items() if k in known}
    base = TrainConfig(**saved)
    # a partner that trained at a learning rate of its own fine-tunes at the same ratio to the lead's
    tcfg = replace(base, epochs=epochs, lr=lr, warmup_epochs=0, seed=seed,
                   partner_lr=lr * base.partner_lr / base.lr if base.partner_lr else 0.0)

    def log(epoch: int, loss: float) -> None:
        if progress:
            print(f"qat: epoch {epoch + 1}/{epochs} loss {loss:.3f}", file=sys.stderr, flush=True)

    motion = fs.motion_as_read(model.cfg.person_rms, scored=False)[idx]
    model = train_model(model.cfg, tcfg, motion, fs.texture[idx], fs.labels[idx], seed, on_epoch=log,
                        init=model)
    quantizers = count_quantizers(model)
    qat = {"from": checkpoint.name, "from_sha256": sha256(checkpoint), "epochs": epochs, "lr": lr, "seed": seed,
           "samples": len(idx), "quantizers": quantizers}
    report = {**qat, "calibration": calib, "checkpoint": str(out / "checkpoint.pt")}
    # the run folder is built beside ``out`` and swapped in whole, like a training run's
    with staged_folder(out) as folder:
        with replacing(folder / "checkpoint.pt") as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "model": ck.get("model"), "config": model.cfg.to_dict(),
                        "state_dict": model.state_dict(), "train": asdict(tcfg), "features": ck.get("features"),
                        "trained_on": ck.get("trained_on", []), "quant": quant_state(model, calib), "qat": qat,
                        "edge_mer": __version__}, tmp)
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_text(folder / "qat.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
