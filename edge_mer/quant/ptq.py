"""Post-training quantization of an FP32 ONNX model with a calibration set (no torch).

ONNX Runtime's static quantizer writes a QDQ graph that both ONNX Runtime and
TensorRT run: INT8 weights per output channel, INT8 activations per tensor,
symmetric (zero point 0, which TensorRT requires), biases left in FP32.
Only the matrix products with a weight (the linear layers and the patch
embeddings) get Q/DQ pairs; the attention products (two activations),
LayerNorm, softmax and the residual additions stay FP32, so no Q/DQ sits in
their way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.quant.calibset import CalibrationSet, load_set
from edge_mer.runtime.artifact import load_artifact, sha256, write_sidecar

METHODS = ("minmax", "percentile", "entropy")
QUANT_OPS = ("MatMul", "Gemm", "Conv")


def _import() -> tuple[Any, Any]:
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError:
        raise UserError("calibration needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    return onnx, quantization


def weighted_nodes(model: Any) -> tuple[list[str], list[str]]:
    """(names of the MatMul/Gemm/Conv nodes with a constant weight, names of those without)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    with_w: list[str] = []
    without: list[str] = []
    for n in model.graph.node:
        if n.op_type in QUANT_OPS:
            (with_w if any(i in consts for i in n.input[1:2]) else without).append(n.name)
    return with_w, without


class _Reader:
    """Feeds the calibration samples in batches (ONNX Runtime's CalibrationDataReader protocol)."""

    def __init__(self, cs: CalibrationSet, batch: int = 16) -> None:
        self.cs, self.batch, self.pos = cs, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.cs):
            return None
        s = slice(self.pos, self.pos + self.batch)
        self.pos += self.batch
        return {"motion": self.cs.motion[s], "texture": self.cs.texture[s]}

    def rewind(self) -> None:
        self.pos = 0


def calibrate(onnx_path: Path, set_path: Path, out: Path, method: str = "minmax") -> dict[str, Any]:
    """Write ``out`` (Q/DQ INT8) and its sidecar; returns the sidecar."""
    onnx, q = _import()
    if method not in METHODS:
        raise UserError(f"calibration method must be one of {', '.join(METHODS)}")
    art = load_artifact(onnx_path)
    if art.precision != "fp32":
        raise UserError(f"{onnx_path} is already {art.precision}; calibrate the FP32 export")
    cs = load_set(set_path, size=art.size)
    model = onnx.load(str(onnx_path))
    include, attention = weighted_nodes(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    calib_method = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                    "entropy": q.CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.shape_inference.quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        q.quantize_static(str(pre), str(staged), _Reader(cs), quant_format=q.QuantFormat.QDQ,
                          op_types_to_quantize=list(QUANT_OPS), nodes_to_exclude=attention, per_channel=True,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=calib_method,
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                         "QuantizeBias": False, "CalibPercentile": 99.99,
                                         "CalibTensorRangeSymmetric": True})
        os.replace(staged, out)
    meta = {k: v for k, v in art.meta.items() if k not in ("format", "file", "sha256", "bytes", "companion")}
    meta |= {"precision": "int8",
             "quantization": {"method": "ptq", "tool": "onnxruntime.quantization (QDQ, symmetric, per-channel "
                                                       "weights)", "calibration": set_path.name,
                              "calibration_sha256": sha256(set_path), "samples": len(cs), "range": method,
                              "quantized_nodes": len(include), "fp32_attention_matmuls": len(attention)},
             "companion": {"file": os.path.relpath(onnx_path, out.parent), "sha256": art.meta["sha256"],
                           "precision": "fp32"}}
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
