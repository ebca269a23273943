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
  additions and biases stay FP32: no Q/DQ sits in their way;
* so do the weighted products that read the motion itself (:func:`motion_readers`:
  the MMT's motion patch embeddings or convolution stems, STSTNet's streams,
  HTNet's patch embedding), as QAT leaves them (``quant.qat.motion_readers``
  finds the same layers in the torch model): one INT8 step of their input range is about a
  weak mover's whole motion.

Every INT8 file then passes a quality gate (:func:`quality_gate`, also run by
the export of a QAT checkpoint): run in ONNX Runtime beside its FP32 model, its
top-1 decisions, its logits and their variation across samples are compared; a
file that fails is still written, marked ``"usable": false`` in its sidecar, and
never named as the FP32 file's companion.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.atomic import replacing_together
from edge_mer.errors import UserError
from edge_mer.eval.metrics import scores
from edge_mer.flow.person import person_rms
from edge_mer.outputs import check_file
from edge_mer.quant.calibset import check_person_level, load_set
from edge_mer.runtime.artifact import OUTPUT, load_artifact, sha256, sidecar_path, write_sidecar

METHODS = ("max", "percentile")
QUANT_OPS = ("MatMul", "Gemm", "Conv")
SHAPE_OPS = ("Shape", "Size")  # their outputs describe a tensor, not its values

# The INT8 quality gate, the one place its thresholds live. An INT8 file passes when, on the same inputs as
# its FP32 model, in ONNX Runtime:
MAX_MEAN_DIFF = 0.5  # the mean |INT8 - FP32| logit is at most half the standard deviation of the FP32 logits
MIN_AGREEMENT = 0.90  # at least 90 % of FP32's clear top-1 decisions are INT8's too
# a clear decision: FP32's top-2 margin is at least the mean error the gate accepts (0.5 std). Near-ties may flip
# either way under acceptable quantization noise (a weakly trained model is mostly near-ties); a flipped clear
# decision is damage
DECIDED_MARGIN = 0.5
MIN_SPREAD_RATIO = 0.25  # its logits vary across samples at least a quarter as much as FP32's: not degenerate
MIN_SPREAD = 1e-6  # logits that vary less than this across samples are constant (FP32's too: samples all alike)
# and, where the samples carry labels (a calibration set does), INT8's UF1 against them is at most this far below
# FP32's: damage that keeps most clear decisions (a whole layer a little off) but costs accuracy
MAX_UF1_DROP = 0.01
MIN_LABELLED = 200  # judged from this many labelled samples; fewer are recorded, not judged (one answer moves a
# three-class UF1 by about 0.005 at 256 samples, by about 0.04 at 32: noise, not damage)
# The largest logit difference is recorded, not gated: one sample's outlier should not condemn a file.
PROBE_SAMPLES = 64  # random inputs of the normalised range (seed 0) where no real samples are at hand (export)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError("calibration needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    return onnx


def weighted_nodes(model: Any) -> tuple[list[Any], list[Any]]:
    """(MatMul/Gemm/Conv nodes whose second input is a constant weight, those without one)."""
    weighted = _weighted(model)
    nodes = list(model.graph.node)
    return ([n for k, n in enumerate(nodes) if weighted[k]],
            [n for k, n in enumerate(nodes) if n.op_type in QUANT_OPS and not weighted[k]])


def _weighted(model: Any) -> list[bool]:
    """For each node of the graph, in order: is it a MatMul/Gemm/Conv with a constant weight?"""
    inits = {i.name for i in model.graph.initializer}
    return [n.op_type in QUANT_OPS and len(n.input) > 1 and n.input[1] in inits for n in model.graph.node]


def _motion_reader_positions(model: Any) -> set[int]:
    """The positions in the graph of the weighted nodes that read the ``motion`` input itself: reached from it
    through unweighted nodes only (a resize, a crop of the regions, a mirror image, a concatenation), not
    through another weighted node, nor through the shape of a tensor."""
    weighted = _weighted(model)
    consumers: dict[str, list[int]] = {}
    for k, n in enumerate(model.graph.node):
        for i in n.input:
            consumers.setdefault(i, []).append(k)
    readers: set[int] = set()
    seen, todo = {"motion"}, ["motion"]
    while todo:
        for k in consumers.get(todo.pop(), []):
            if weighted[k]:
                readers.add(k)
                continue
            if model.graph.node[k].op_type in SHAPE_OPS:  # the batch size of a reshape: not the motion's values
                continue
            fresh = [o for o in model.graph.node[k].output if o not in seen]
            seen.update(fresh)
            todo += fresh
    return readers


def motion_readers(model: Any) -> list[Any]:
    """The weighted nodes that read the ``motion`` input itself (see ``_motion_reader_positions``)."""
    readers = _motion_reader_positions(model)
    return [n for k, n in enumerate(model.graph.node) if k in readers]


def int8_nodes(model: Any) -> list[Any]:
    """The weighted nodes PTQ quantizes: all but the motion readers."""
    readers, weighted = _motion_reader_positions(model), _weighted(model)
    return [n for k, n in enumerate(model.graph.node) if weighted[k] and k not in readers]


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
    """Insert the Q/DQ pairs and INT8 weights of :func:`int8_nodes` in place; returns their number."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    targets = int8_nodes(model)
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


def _logits(path: Path, motion: np.ndarray, texture: np.ndarray, batch: int = 32) -> np.ndarray:
    from edge_mer.runtime.backends.onnxruntime import make_session

    sess = make_session(path)  # every optimisation on: the INT8 kernels a CPU runs
    out = [sess.run([OUTPUT], {"motion": motion[s:s + batch], "texture": texture[s:s + batch]})[0]
           for s in range(0, len(motion), batch)]
    return np.concatenate(out).astype(np.float64)


def judge(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """The gate's figures and verdict for the logits of the same samples (samples x classes), and their UF1
    against ``labels`` where given."""
    diff = np.abs(int8 - fp32)
    scale = float(fp32.std())
    same = fp32.argmax(1) == int8.argmax(1)
    top2 = np.sort(fp32, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] >= DECIDED_MARGIN * scale
    agreement = float(np.mean(same[decided])) if decided.any() else None
    spread = {"fp32": float(fp32.std(axis=0).mean()), "int8": float(int8.std(axis=0).mean())}
    ratio = spread["int8"] / spread["fp32"] if spread["fp32"] > MIN_SPREAD else 0.0
    failed = []
    if spread["fp32"] <= MIN_SPREAD:
        failed.append("the FP32 logits are the same for every sample (are the samples all alike?), so they "
                      "cannot show that INT8 works")
    if spread["int8"] <= MIN_SPREAD:
        failed.append("the INT8 logits are the same for every sample: a degenerate model")
    elif spread["fp32"] > MIN_SPREAD and ratio < MIN_SPREAD_RATIO:
        failed.append(f"the INT8 logits barely vary across samples ({ratio:.2f}x FP32's spread, "
                      f"{MIN_SPREAD_RATIO:g} needed): a degenerate model")
    if agreement is not None and agreement < MIN_AGREEMENT:
        failed.append(f"top-1 agreement with FP32's clear decisions {agreement:.3f} < {MIN_AGREEMENT:.2f}")
    if float(diff.mean()) > MAX_MEAN_DIFF * scale:
        failed.append(f"mean logit difference {diff.mean():.3g} > {MAX_MEAN_DIFF:g}x the FP32 logits' "
                      f"standard deviation ({scale:.3g})")
    labelled = None
    if labels is not None:
        names = [str(k) for k in range(fp32.shape[1])]
        uf1 = {k: scores(labels, x.argmax(1), names).uf1 for k, x in (("fp32", fp32), ("int8", int8))}
        drop = uf1["fp32"] - uf1["int8"]
        labelled = {"samples": len(labels), "uf1_fp32": round(uf1["fp32"], 4), "uf1_int8": round(uf1["int8"], 4),
                    "uf1_drop": round(drop, 4), "judged": len(labels) >= MIN_LABELLED}
        if labelled["judged"] and drop > MAX_UF1_DROP:
            failed.append(f"UF1 against the samples' labels {uf1['int8']:.3f}, {drop:.3f} below FP32's "
                          f"{uf1['fp32']:.3f} ({MAX_UF1_DROP:g} allowed)")
    return {"usable": not failed, "failed": failed, "samples": len(fp32), "labelled": labelled,
            "top1_agreement": None if agreement is None else round(agreement, 4),
            "decided_samples": int(decided.sum()), "top1_agreement_all": round(float(np.mean(same)), 4),
            "logit_diff_mean": round(float(diff.mean()), 6), "logit_diff_max": round(float(diff.max()), 6),
            "fp32_logit_std": round(scale, 6), "logit_spread": {k: round(v, 6) for k, v in spread.items()},
            "spread_ratio": round(ratio, 4),
            "thresholds": {"min_top1_agreement": MIN_AGREEMENT, "decided_margin_x_fp32_std": DECIDED_MARGIN,
                           "max_mean_diff_x_fp32_std": MAX_MEAN_DIFF, "min_spread_ratio": MIN_SPREAD_RATIO,
                           "min_spread": MIN_SPREAD, "max_uf1_drop": MAX_UF1_DROP,
                           "min_labelled_samples": MIN_LABELLED}}


def quality_gate(fp32_path: Path, int8_path: Path, motion: np.ndarray, texture: np.ndarray,
                 inputs: str, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Run both files in ONNX Runtime on the samples and judge the INT8 one; ``inputs`` says what they are,
    ``labels`` (where the samples have them) their classes."""
    import onnxruntime as ort

    doc = judge(_logits(fp32_path, motion, texture), _logits(int8_path, motion, texture), labels)
    return {**doc, "inputs": inputs, "compared_with": f"{fp32_path.name} (fp32)",
            "runtime": f"onnxruntime {ort.__version__} CPU"}


def summary(q: dict[str, Any]) -> str:
    """The gate in one line, for the commands' output."""
    verdict = "usable" if q["usable"] else "NOT usable: " + "; ".join(q["failed"])
    spread = (f"spread {q['spread_ratio']:.2f}x FP32's (>= {MIN_SPREAD_RATIO:g})"
              if q["logit_spread"]["fp32"] > MIN_SPREAD else "FP32 logits constant")
    agreement = ("n/a (no clear FP32 decision)" if q["top1_agreement"] is None else
                 f"{q['top1_agreement']:.3f} of {q['decided_samples']} clear decisions (>= {MIN_AGREEMENT:.2f})")
    lab = q.get("labelled")
    labelled = "" if not lab else (
        f", UF1 against their labels {lab['uf1_int8']:.3f} vs FP32's {lab['uf1_fp32']:.3f} ("
        + (f"at most {MAX_UF1_DROP:g} lower" if lab["judged"] else f"not judged: fewer than {MIN_LABELLED} samples")
        + ")")
    return (f"INT8 vs FP32 on {q['samples']} {q['inputs']}: top-1 agreement {agreement}, "
            f"{q['top1_agreement_all']:.3f} of all, logit difference mean {q['logit_diff_mean']:.3g} (<= "
            f"{MAX_MEAN_DIFF * q['fp32_logit_std']:.3g}, {MAX_MEAN_DIFF:g}x the FP32 logits' std) max "
            f"{q['logit_diff_max']:.3g}, {spread}{labelled}: {verdict}")


def calibrate(onnx_path: Path, set_path: Path, out: Path, method: str = "max",
              force: bool = False) -> dict[str, Any]:
    """Write ``out`` (Q/DQ INT8) and its sidecar, with the quality gate's verdict on the calibration samples in
    its ``quality``; returns the sidecar. Only a file that passes becomes the FP32 file's companion. ``force``
    replaces an existing ``out``; an ``out`` that is one of the inputs is refused regardless."""
    onnx = _onnx()
    if method not in METHODS:
        raise UserError(f"calibration method must be one of {', '.join(METHODS)}")
    inputs = [onnx_path, sidecar_path(onnx_path), set_path]
    check_file(out, inputs=inputs, force=force)
    check_file(sidecar_path(out), inputs=inputs, force=force, flag="--out's sidecar")
    art = load_artifact(onnx_path)
    if art.precision != "fp32":
        raise UserError(f"{onnx_path} is already {art.precision}; calibrate the FP32 export")
    cs = load_set(set_path, size=art.size)
    check_person_level(cs.meta, person_rms(art.meta), set_path, onnx_path)
    model = onnx.load(str(onnx_path))
    include, attention = int8_nodes(model), weighted_nodes(model)[1]
    readers = len(motion_readers(model))
    ranges = activation_ranges(model, cs, sorted({n.input[0] for n in include}), method)
    quantize_graph(model, ranges)
    # the file is judged and described before it lands, and lands together with its sidecar
    with replacing_together(out, sidecar_path(out)) as (tmp, tmp_side):
        onnx.save(model, str(tmp))
        quality = quality_gate(onnx_path, tmp, cs.motion, cs.texture, f"calibration samples ({set_path.name})",
                               cs.labels)
        meta = {k: v for k, v in art.meta.items()
                if k not in ("format", "file", "sha256", "bytes", "companion", "quality")}
        meta.update({
            "precision": "int8",
            "quantization": {"method": "ptq", "tool": "edge-mer (symmetric INT8, per-channel weights, "
                                                      "per-tensor activations)", "calibration": set_path.name,
                             "calibration_sha256": sha256(set_path), "samples": len(cs), "range": method,
                             "quantized_nodes": len(include), "fp32_attention_matmuls": len(attention),
                             "fp32_motion_readers": readers},
            "quality": quality,
            # the INT8 file names its FP32 source either way: --precision auto on it then falls back to FP32
            "companion": {"file": os.path.relpath(onnx_path, out.parent), "sha256": art.meta["sha256"],
                          "precision": "fp32"}})
        doc = write_sidecar(out, meta, staged=(tmp, tmp_side))
    if quality["usable"]:
        link_companion(onnx_path, out)
    else:
        unlink_companion(onnx_path, out)
    return doc


def link_companion(fp32_path: Path, int8_path: Path) -> None:
    """Name the INT8 file in the FP32 file's sidecar (the ONNX file itself is unchanged)."""
    art = load_artifact(fp32_path)
    meta = {k: v for k, v in art.meta.items() if k not in ("format", "file", "sha256", "bytes")}
    meta["companion"] = {"file": os.path.relpath(int8_path, fp32_path.parent), "sha256": sha256(int8_path),
                         "precision": "int8"}
    write_sidecar(fp32_path, meta)


def unlink_companion(fp32_path: Path, int8_path: Path) -> None:
    """Drop the FP32 sidecar's companion entry when it names ``int8_path`` (an earlier file there, now
    replaced by one that failed the gate); any other entry stays."""
    art = load_artifact(fp32_path)
    c = art.meta.get("companion")
    if not c or (fp32_path.parent / c["file"]).resolve() != int8_path.resolve():
        return
    write_sidecar(fp32_path, {k: v for k, v in art.meta.items()
                              if k not in ("format", "file", "sha256", "bytes", "companion")})
