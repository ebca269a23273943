"""Post-training quantization of an FP32 ONNX model with a calibration set (no torch).

The Q/DQ graph written here has the same shape as a QAT export, which both
TensorRT (explicit quantization) and ONNX Runtime (which fuses it into INT8
matrix products) run:

* every MatMul / Gemm / Conv with a constant weight gets its weight as an INT8
  constant, symmetric per output channel, behind a DequantizeLinear;
* its activation input gets one QuantizeLinear/DequantizeLinear pair, symmetric
  per tensor (zero point 0, which TensorRT requires), whose scale comes from the
  calibration samples: the largest magnitude seen (``max``, as modelopt's
  calibration) or its 99.99th percentile (``percentile``);
* the attention products (two activations), LayerNorm, softmax, residual
  additions and biases stay FP32: no Q/DQ sits in their way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.atomic import replacing
from edge_mer.errors import UserError
from edge_mer.quant.calibset import load_set
from edge_mer.runtime.artifact import load_artifact, sha256, write_sidecar

METHODS = ("max", "percentile")
QUANT_OPS = ("MatMul", "Gemm", "Conv")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError("calibration needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    return onnx


def weighted_nodes(model: Any) -> tuple[list[Any], list[Any]]:
    """(MatMul/Gemm/Conv nodes whose second input is a constant weight, those without one)."""
    inits = {i.name for i in model.graph.initializer}
    with_w: list[Any] = []
    without: list[Any] = []
    for n in model.graph.node:
        if n.op_type in QUANT_OPS:
            (with_w if len(n.input) > 1 and n.input[1] in inits else without).append(n)
    return with_w, without


def _weight_axis(node: Any) -> int:
    """The output-channel axis of a node's weight."""
    if node.op_type == "MatMul":
        return 1  # (in, out)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0  # Conv: (out, in, kh, kw)


def activation_ranges(model: Any, cs: Any, tensors: list[str], method: str, batch: int = 16) -> dict[str, float]:
    """Per-tensor range of the named activations over the calibration samples."""
    import onnxruntime as ort

    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(tensors, 0.0)
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    rng = np.random.default_rng(0)
    for s in range(0, len(cs), batch):
        outs = sess.run(tensors, {"motion": cs.motion[s:s + batch], "texture": cs.texture[s:s + batch]})
        for t, v in zip(tensors, outs):
            a = np.abs(np.asarray(v, np.float32)).ravel()
            amax[t] = max(amax[t], float(a.max()) if a.size else 0.0)
            if method == "percentile":
                samples[t].append(a if a.size <= 20000 else rng.choice(a, 20000, replace=False))
    if method == "percentile":
        return {t: float(np.percentile(np.concatenate(samples[t]), 99.99)) for t in tensors}
    return amax


def quantize_graph(model: Any, ranges: dict[str, float]) -> int:
    """Insert the Q/DQ pairs and INT8 weights in place; returns the number of quantized nodes."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    targets, _ = weighted_nodes(model)
    new_nodes: dict[int, list[Any]] = {}
    qdq_of: dict[str, str] = {}
    position = {id(n): k for k, n in enumerate(g.node)}
    for node in targets:
        x, w_name = node.input[0], node.input[1]
        before = new_nodes.setdefault(position[id(node)], [])
        if x not in qdq_of:  # one pair per activation tensor, shared by its consumers
            scale = max(ranges[x], 1e-8) / 127.0
            s_name, z_name = f"{x}__scale", f"{x}__zero_point"
            g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name),
                                  numpy_helper.from_array(np.array(0, np.int8), z_name)])
            q_out, dq_out = f"{x}__q", f"{x}__dq"
            before += [helper.make_node("QuantizeLinear", [x, s_name, z_name], [q_out], name=f"{x}__Q"),
                       helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"{x}__DQ")]
            qdq_of[x] = dq_out
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        axis = _weight_axis(node)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        wscale = np.maximum(np.abs(w).max(axis=reduce), 1e-8) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        wq = np.clip(np.rint(w / wscale.reshape(shape)), -127, 127).astype(np.int8)
        names = (f"{w_name}__int8", f"{w_name}__wscale", f"{w_name}__wzero")
        g.initializer.extend([numpy_helper.from_array(wq, names[0]),
                              numpy_helper.from_array(wscale.astype(np.float32), names[1]),
                              numpy_helper.from_array(np.zeros(w.shape[axis], np.int8), names[2])])
        before.append(helper.make_node("DequantizeLinear", list(names), [f"{w_name}__dqw"], name=f"{w_name}__DQ",
                                       axis=axis))
        node.input[0] = qdq_of[x]
        node.input[1] = f"{w_name}__dqw"
    nodes = list(g.node)
    del g.node[:]
    for k, n in enumerate(nodes):
        g.node.extend(new_nodes.get(k, []))
        g.node.append(n)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.checker.check_model(model)
    return len(targets)


def calibrate(onnx_path: Path, set_path: Path, out: Path, method: str = "max") -> dict[str, Any]:
    """Write ``out`` (Q/DQ INT8) and its sidecar; returns the sidecar."""
    onnx = _onnx()
    if method not in METHODS:
        raise UserError(f"calibration method must be one of {', '.join(METHODS)}")
    art = load_artifact(onnx_path)
    if art.precision != "fp32":
        raise UserError(f"{onnx_path} is already {art.precision}; calibrate the FP32 export")
    cs = load_set(set_path, size=art.size)
    model = onnx.load(str(onnx_path))
    include, attention = weighted_nodes(model)
    ranges = activation_ranges(model, cs, sorted({n.input[0] for n in include}), method)
    quantize_graph(model, ranges)
    with replacing(out) as tmp:
        onnx.save(model, str(tmp))
    meta = {k: v for k, v in art.meta.items() if k not in ("format", "file", "sha256", "bytes", "companion")}
    meta.update({
        "precision": "int8",
        "quantization": {"method": "ptq", "tool": "edge-mer (symmetric INT8, per-channel weights, "
                                                  "per-tensor activations)", "calibration": set_path.name,
                         "calibration_sha256": sha256(set_path), "samples": len(cs), "range": method,
                         "quantized_nodes": len(include), "fp32_attention_matmuls": len(attention)},
        "companion": {"file": os.path.relpath(onnx_path, out.parent), "sha256": art.meta["sha256"],
                      "precision": "fp32"}})
    doc = write_sidecar(out, meta)
    link_companion(onnx_path, out)
    return doc


def link_companion(fp32_path: Path, int8_path: Path) -> None:
    """Name the INT8 file in the FP32 file's sidecar (the ONNX file itself is unchanged)."""
    art = load_artifact(fp32_path)
    meta = {k: v for k, v in art.meta.items() if k not in ("format", "file", "sha256", "bytes")}
    meta["companion"] = {"file": os.path.relpath(int8_path, fp32_path.parent), "sha256": sha256(int8_path),
                         "precision": "int8"}
    write_sidecar(fp32_path, meta)
