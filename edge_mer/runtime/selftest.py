"""On-device self-test: the TensorRT engine of a model against ONNX Runtime, and the CUDA
flow stage against its numpy reference.

Run on a Jetson (or any CUDA machine) by ``edge-mer doctor --selftest``. With TensorRT it
builds (or reuses) the engine, runs the same random inputs of the model's input range
through TensorRT and through ONNX Runtime, and reports the largest difference of the
probabilities, whether the top classes agree, and the latency of both. With pycuda it
starts the CUDA flow stage as the camera loop does (which times the solve's layouts on
this GPU and keeps the fastest), reports those times, and holds the stage's flow on a
face pair against the reference. Either part may be missing; not both.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.backends.base import sample_inputs
from edge_mer.runtime.timing import call_times_ms

PACKAGED = Path(__file__).resolve().parent.parent / "assets" / "models" / "demo.int8.onnx"


def flow_selftest(size: int = 112, runtime: ModuleType | None = None) -> dict[str, Any]:
    """The CUDA flow stage on this GPU (``runtime``: pycuda, or the CPU emulator in tests)."""
    from edge_mer.flow.cuda import CudaStage
    from edge_mer.flow.stage import cuda_unavailable

    reason = cuda_unavailable() if runtime is None else None
    if reason:
        return {"available": False, "reason": reason}
    try:
        stage = CudaStage(size, runtime=runtime)
    except UserError as exc:
        return {"available": True, "ok": False, "problem": str(exc)}
    problem = stage.self_check()
    return {"available": True, "ok": problem is None, "problem": problem, "size": size,
            "layout": f"{stage.solver}/{stage.solve_threads}", "layout_ms": stage.layout_ms,
            "left_out": stage.layout_notes, "graphs": stage.graph_note or "on"}


def selftest(model: Path | None = None, samples: int = 16, flow_runtime: ModuleType | None = None,
             flow_size: int = 112) -> dict[str, Any]:
    flow = flow_selftest(flow_size, flow_runtime)
    try:
        report = _tensorrt_selftest(model, samples)
    except UserError as exc:
        if not flow["available"]:
            raise UserError(f"nothing to self-test here: {exc}; and the CUDA flow stage is not available: "
                            f"{flow['reason']}") from None
        report = {"tensorrt_unavailable": str(exc), "ok": True}
    report["flow"] = flow
    report["ok"] = bool(report["ok"] and flow.get("ok", True))
    return report


def _tensorrt_selftest(model: Path | None, samples: int) -> dict[str, Any]:
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


def selftest_lines(result: dict[str, Any]) -> list[str]:
    """The report in words, one line per part."""
    if "tensorrt_unavailable" in result:
        lines = [f"TensorRT: not tested ({result['tensorrt_unavailable']})"]
    else:
        lat = result["latency_ms"]
        lines = [f"TensorRT: {result['tensorrt']} vs ONNX Runtime on {result['model']}: top-1 agreement "
                 f"{result['top1_agreement']:.0%}, largest probability difference {result['max_abs_prob_diff']:.4f}; "
                 f"latency {lat['tensorrt']} ms (TensorRT) vs {lat['onnxruntime']} ms (ONNX Runtime)"]
    flow = result["flow"]
    if not flow["available"]:
        lines.append(f"CUDA flow stage: not tested ({flow['reason']})")
    elif "layout" not in flow:
        lines.append(f"CUDA flow stage: FAILED to start: {flow['problem']}")
    else:
        times = ", ".join(f"{k} {v:.3f}" for k, v in flow["layout_ms"].items())
        verdict = "agrees with the numpy reference" if flow["ok"] else f"FAILED: {flow['problem']}"
        lines.append(f"CUDA flow stage at S = {flow['size']}: {verdict}; kept layout {flow['layout']} of {times} "
                     f"(ms per pair on this GPU); CUDA graphs {flow['graphs']}")
    return lines
