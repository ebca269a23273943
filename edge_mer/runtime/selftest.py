"""On-device self-test: build the TensorRT engine of a model and hold it against ONNX Runtime.

Run on a Jetson (or any CUDA machine with TensorRT) by ``edge-mer doctor
--selftest``: it builds (or reuses) the engine, runs the same random inputs of
the model's input range through TensorRT and through ONNX Runtime, and reports
the largest difference of the probabilities, whether the top classes agree, and
the latency of both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError

PACKAGED = Path(__file__).resolve().parent.parent / "assets" / "models" / "demo.int8.onnx"


def _latency_ms(fn: Any, runs: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def selftest(model: Path | None = None, samples: int = 16) -> dict[str, Any]:
    from edge_mer.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edge_mer.runtime.backends.tensorrt import TensorRTBackend

    path = model or PACKAGED
    if not path.is_file():
        raise UserError(f"no model to test: {path} does not exist (pass --model MODEL.onnx)")
    start = time.perf_counter()
    trt_be = TensorRTBackend(path)
    build_s = time.perf_counter() - start
    ort_be = OnnxRuntimeBackend(path, precision="file")
    rng = np.random.default_rng(0)
    s = trt_be.size
    m = (rng.standard_normal((samples, 3, s, s)) * 1.5).astype(np.float32)
    m[:, 2] = np.abs(m[:, 2])
    t = rng.standard_normal((samples, 1, s, s)).astype(np.float32)
    p_trt, p_ort = trt_be.infer(m, t), ort_be.infer(m, t)
    one = (m[:1], t[:1])
    report = {"model": str(path), "engine": str(trt_be.info.path), "tensorrt": trt_be.describe(),
              "engine_seconds": round(build_s, 1), "max_abs_prob_diff": float(np.abs(p_trt - p_ort).max()),
              "top1_agreement": float((p_trt.argmax(1) == p_ort.argmax(1)).mean()),
              "latency_ms": {"tensorrt": round(_latency_ms(lambda: trt_be.infer(*one)), 3),
                             "onnxruntime": round(_latency_ms(lambda: ort_be.infer(*one)), 3)}}
    diff, agree = float(np.abs(p_trt - p_ort).max()), float((p_trt.argmax(1) == p_ort.argmax(1)).mean())
    report["ok"] = agree >= 0.9 and diff < 0.1
    trt_be.close()
    return report
