"""On-device self-test: build the TensorRT engine of a model and hold it against ONNX Runtime.

Run on a Jetson (or any CUDA machine with TensorRT) by ``edge-mer doctor
--selftest``: it builds (or reuses) the engine, runs the same random inputs of
the model's input range through TensorRT and through ONNX Runtime, and reports
the largest difference of the probabilities, whether the top classes agree, and
the latency of both.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.backends.base import sample_inputs
from edge_mer.runtime.timing import call_times_ms

PACKAGED = Path(__file__).resolve().parent.parent / "assets" / "models" / "demo.int8.onnx"


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
    m, t = sample_inputs(samples, trt_be.size)
    p_trt, p_ort = trt_be.infer(m, t), ort_be.infer(m, t)
    one = (m[:1], t[:1])
    diff, agree = float(np.abs(p_trt - p_ort).max()), float((p_trt.argmax(1) == p_ort.argmax(1)).mean())
    latency = {name: round(float(np.median(call_times_ms(partial(be.infer, *one), 50))), 3)
               for name, be in (("tensorrt", trt_be), ("onnxruntime", ort_be))}
    report = {"model": str(path), "engine": str(trt_be.info.path), "tensorrt": trt_be.describe(),
              "engine_seconds": round(build_s, 1), "max_abs_prob_diff": diff, "top1_agreement": agree,
              "latency_ms": latency, "ok": agree >= 0.9 and diff < 0.1}
    trt_be.close()
    return report
