"""Export a checkpoint to ONNX with its sidecar, and check the file in ONNX Runtime.

Opset 13 by default, the first with per-channel Q/DQ: every engine a device may
hold reads it, TensorRT 8.5 (JetPack 5.1) and ONNX Runtime 1.10 (the newest
wheel for JetPack 5's Python 3.8 that keeps its numpy 1.17; it reads opsets up
to 15) included. LayerNorm is written as primitive operators, which TensorRT
8.5 has (its native LayerNormalization came in 8.6) and which TensorRT and ONNX
Runtime fuse back. ``--opset 17`` writes LayerNormalization for TensorRT >= 8.6.

A QAT checkpoint exports as a Q/DQ graph (modelopt's quantizers become
QuantizeLinear/DequantizeLinear pairs); its weight quantizers are then folded
into INT8 initializers (DequantizeLinear of an INT8 constant, the layout
TensorRT and ONNX Runtime expect of explicit quantization), which makes the file
about four times smaller. Beside it goes the same model without its quantizers
as ``NAME.fp32.onnx``, the companion a CPU may find faster. The INT8 file then
passes the quality gate of :mod:`edge_mer.quant.ptq` against that companion, on
random inputs of the normalised range (the calibration samples are not kept in
a checkpoint): this catches a degenerate or badly broken file, not a small loss
of accuracy, which ``edge-mer eval`` measures.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer import __version__
from edge_mer.atomic import replacing, replacing_together
from edge_mer.errors import UserError
from edge_mer.flow.normalise import CONSTANTS
from edge_mer.outputs import check_file
from edge_mer.runtime.artifact import INPUTS, OUTPUT, input_spec, model_stem, sha256, sidecar_path, write_sidecar

DEFAULT_OPSET = 13


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError("export needs onnx: pip install 'edge-mer[train]'") from None
    return onnx


def write_onnx(model: Any, size: int, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """``model`` as an ONNX file (batch dimension dynamic), written atomically; no sidecar."""
    import torch

    s = size
    dummy = (torch.zeros(1, 3, s, s), torch.zeros(1, 1, s, s))
    axes = {INPUTS[0]: {0: "batch"}, INPUTS[1]: {0: "batch"}, OUTPUT: {0: "batch"}}
    with replacing(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic and modelopt's constant amax
        torch.onnx.export(model, dummy, str(tmp), input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def fold_weight_quantizers(path: Path) -> int:
    """Replace QuantizeLinear(FP32 weight) by its INT8 result; returns how many were folded."""
    onnx = _onnx()
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = _constants(g)
    inits = {i.name for i in g.initializer}
    folded, drop = 0, []
    for node in g.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        w = consts[node.input[0]].astype(np.float32)
        scale = consts[node.input[1]].astype(np.float32)
        zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        if zp.dtype != np.int8:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1:
            shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)) + zp.astype(np.float32).reshape(shape), -128, 127)
        name = node.output[0] + "_int8"
        g.initializer.append(numpy_helper.from_array(q.astype(np.int8), name))
        for other in g.node:
            for k, inp in enumerate(other.input):
                if inp == node.output[0]:
                    other.input[k] = name
        drop.append(node)
        folded += 1
    for node in drop:
        g.node.remove(node)
    _fold_weight_transposes(g)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.checker.check_model(model)
    with replacing(path) as tmp:
        onnx.save(model, str(tmp))
    return folded


def _fold_weight_transposes(g: Any) -> None:
    """Transpose(DequantizeLinear(INT8 weight)) -> DequantizeLinear(transposed INT8 weight).

    torch writes a linear layer as MatMul(x, Transpose(W)); with the transpose
    folded the weight's DequantizeLinear feeds the MatMul directly, the pattern
    ONNX Runtime fuses into an INT8 product (TensorRT accepts both).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    for t in [n for n in g.node if n.op_type == "Transpose"]:
        dq = producer.get(t.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or consumers[dq.output[0]] != 1:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), list(range(w.ndim))[::-1])
        axis = next((a for a in dq.attribute if a.name == "axis"), None)
        new = numpy_helper.from_array(np.ascontiguousarray(w.transpose(perm)), dq.input[0] + "_t")
        g.initializer.append(new)
        dq.input[0] = new.name
        if axis is not None:
            axis.i = perm.index(axis.i if axis.i >= 0 else axis.i + w.ndim)
        for n in g.node:
            for k, i in enumerate(n.input):
                if i == t.output[0]:
                    n.input[k] = dq.output[0]
        g.node.remove(t)


def count_qdq(path: Path) -> dict[str, Any]:
    """Q/DQ facts of an ONNX file: pairs, and which MatMul/Gemm/Conv nodes have DQ on both inputs."""
    onnx = _onnx()
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    dq_fed = {"int8": [], "fp32": []}  # type: dict[str, list[str]]
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm", "Conv"):
            both = all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                       for i in n.input[:2])
            dq_fed["int8" if both else "fp32"].append(n.name)
    return {"QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in g.node),
            "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in g.node),
            "int8_products": dq_fed["int8"], "fp32_products": dq_fed["fp32"]}


def _max_diff(model: Any, path: Path, size: int, n: int = 8) -> float:
    """Largest |ONNX Runtime - torch| over the logits of a few inputs of the input range."""
    import torch

    from edge_mer.runtime.backends.base import sample_inputs
    from edge_mer.runtime.backends.onnxruntime import make_session

    m, t = sample_inputs(n, size)
    sess = make_session(path)
    got = sess.run([OUTPUT], {"motion": m, "texture": t})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(m), torch.from_numpy(t)).numpy()
    return float(np.abs(got - ref).max())


def export(checkpoint: Path, out: Path, opset: int = DEFAULT_OPSET, force: bool = False) -> dict[str, Any]:
    """Write ``out`` (+ sidecar; for QAT also the FP32 companion and the quality gate's verdict) and return a
    report. ``force`` replaces existing outputs; an output that is the checkpoint is refused regardless."""
    from edge_mer.model.checkpoint import load_checkpoint
    from edge_mer.runtime.backends.base import sample_inputs

    _onnx()
    if not 13 <= opset <= 17:
        raise UserError(f"opset {opset} is outside 13..17 (Q/DQ per channel needs 13; TensorRT 8.5 reads up to 17)")
    check_file(out, inputs=[checkpoint], force=force)
    check_file(sidecar_path(out), inputs=[checkpoint], force=force, flag="--out's sidecar")
    model, ck = load_checkpoint(checkpoint)
    cfg = model.cfg
    quant = ck.get("quant")
    companion = out.with_name(model_stem(out) + ".fp32.onnx")
    if quant:  # known only once the checkpoint is read, still before anything is written
        check_file(companion, inputs=[checkpoint], force=force, flag="the FP32 companion")
        check_file(sidecar_path(companion), inputs=[checkpoint], force=force, flag="the FP32 companion's sidecar")
    out.parent.mkdir(parents=True, exist_ok=True)
    base = {"config": cfg.to_dict(), "class_names": list(cfg.class_names), "normalisation": CONSTANTS,
            "inputs": input_spec(cfg.size), "outputs": {OUTPUT: {"shape": ["batch", cfg.num_classes],
                                                                 "dtype": "float32"}},
            "opset": opset, "model": ck.get("model"), "features": ck.get("features"),
            "trained_on": ck.get("trained_on", []), "checkpoint": checkpoint.name,
            "checkpoint_sha256": sha256(checkpoint), "edge_mer": __version__}
    report: dict[str, Any] = {"onnx": str(out)}
    meta = {**base, "precision": "int8" if quant else "fp32"}
    # every file is made, checked and described under a temporary name; the models and their sidecars land
    # together at the end, so a kill leaves the earlier files (or none), never a model without its sidecar
    files = [out, sidecar_path(out)] + ([companion, sidecar_path(companion)] if quant else [])
    with replacing_together(*files) as staged:
        tmp, tmp_side = staged[0], staged[1]
        write_onnx(model, cfg.size, tmp, opset)
        if quant:
            report["folded_weights"] = fold_weight_quantizers(tmp)
            report["qdq"] = {k: v if isinstance(v, int) else len(v) for k, v in count_qdq(tmp).items()}
        report["max_abs_diff"] = _max_diff(model, tmp, cfg.size)
        if quant:
            from edge_mer.quant.ptq import PROBE_SAMPLES, quality_gate
            from edge_mer.quant.qat import disable_quantizers

            tmp_fp32, tmp_fp32_side = staged[2], staged[3]
            meta["quantization"] = {"method": "qat", "tool": f"nvidia-modelopt {quant.get('modelopt')}",
                                    "calibration": quant.get("calibration")}
            disable_quantizers(model)
            write_onnx(model, cfg.size, tmp_fp32, opset)
            report["companion"] = str(companion)
            report["companion_max_abs_diff"] = _max_diff(model, tmp_fp32, cfg.size)
            motion, texture = sample_inputs(PROBE_SAMPLES, cfg.size, seed=0)
            meta["quality"] = report["quality"] = quality_gate(
                tmp_fp32, tmp, motion, texture, "random inputs of the normalised range (seed 0; a checkpoint "
                                                "keeps no calibration samples)")
            meta["quality"]["compared_with"] = f"{companion.name} (fp32)"
            meta["companion"] = {"file": companion.name, "sha256": sha256(tmp_fp32), "precision": "fp32"}
            side = {**base, "precision": "fp32", "quantization": {"method": "qat weights, no quantizers"}}
            if meta["quality"]["usable"]:  # a file that failed its gate is never an FP32 file's companion
                side["companion"] = {"file": out.name, "sha256": sha256(tmp), "precision": "int8"}
            write_sidecar(companion, side, staged=(tmp_fp32, tmp_fp32_side))
        write_sidecar(out, meta, staged=(tmp, tmp_side))
    report["bytes"] = out.stat().st_size
    report["precision"] = meta["precision"]
    return report
