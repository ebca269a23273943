"""On-device self-test: the TensorRT engine of a model against ONNX Runtime, and the CUDA
flow stage against its numpy reference.

Run on a Jetson (or any CUDA machine) by ``edge-mer doctor --selftest``. With TensorRT it
builds (or reuses) the engine, runs the same random inputs of the model's input range
through TensorRT and through ONNX Runtime, and reports the largest difference of the
probabilities, whether the top classes agree, and the latency of both. With pycuda it
starts the CUDA flow stage as the camera loop does (which times the solve's layouts on
this GPU and keeps the fastest), reports those times, and holds the stage's flow on a
face pair against the reference.

It passes only when every part ran and agreed. A part that could not run (no TensorRT,
no pycuda) or could not be compared (TensorRT without ONNX Runtime to hold it against)
is named with its reason and leaves the self-test incomplete, which is not a pass.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.artifact import DEMO_MODEL
from edge_mer.runtime.backends.base import sample_inputs
from edge_mer.runtime.gpu import cuda_unavailable
from edge_mer.runtime.timing import call_times_ms

# TensorRT passes when its top class agrees with ONNX Runtime's on this share of the random samples and no
# probability differs by this much or more (INT8 kernels differ between the two, not the model)
TOP1_AGREEMENT = 0.9
MAX_PROB_DIFF = 0.1


def flow_selftest(size: int = 112, runtime: ModuleType | None = None) -> dict[str, Any]:
    """The CUDA flow stage on this GPU (``runtime``: pycuda, or the CPU emulator in tests)."""
    from edge_mer.flow.cuda import CudaStage

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
    """Both parts; ``status`` is ``passed``, ``failed`` (a part ran and disagreed) or ``incomplete`` (a part did
    not run or was not compared, nothing disagreed); ``ok`` only when passed."""
    flow = flow_selftest(flow_size, flow_runtime)
    try:
        report = _tensorrt_selftest(model, samples)
    except UserError as exc:
        if not flow["available"]:
            raise UserError(f"nothing to self-test here: {exc}; and the CUDA flow stage is not available: "
                            f"{flow['reason']}") from None
        report = {"tensorrt_unavailable": str(exc), "ok": False}
    report["flow"] = flow
    ran = [report.get("compared", False), flow["available"]]
    failed = (report.get("compared") and not report["ok"]) or (flow["available"] and not flow.get("ok"))
    report["status"] = "failed" if failed else "passed" if all(ran) else "incomplete"
    report["ok"] = report["status"] == "passed"
    return report


def _tensorrt_selftest(model: Path | None, samples: int) -> dict[str, Any]:
    from edge_mer.runtime.backends.tensorrt import TensorRTBackend

    path = model or DEMO_MODEL
    if not path.is_file():
        raise UserError(f"no model to test: {path} does not exist (pass --model MODEL.onnx)")
    start = time.perf_counter()
    trt_be = TensorRTBackend(path)
    build_s = time.perf_counter() - start
    m, t = sample_inputs(samples, trt_be.size)
    one = (m[:1], t[:1])
    p_trt = trt_be.infer(m, t)
    latency = {"tensorrt": round(float(np.median(call_times_ms(partial(trt_be.infer, *one), 50))), 3)}
    report: dict[str, Any] = {"model": str(path), "engine": str(trt_be.info.path), "tensorrt": trt_be.describe(),
                              "engine_seconds": round(build_s, 1), "latency_ms": latency, "compared": False,
                              "ok": False}
    trt_be.close()
    try:
        from edge_mer.runtime.backends.onnxruntime import OnnxRuntimeBackend

        ort_be = OnnxRuntimeBackend(path, precision="file")
    except (ImportError, UserError) as exc:
        report["not_compared"] = (f"TensorRT ran but was not compared: ONNX Runtime cannot run {path.name} here "
                                  f"({str(exc).splitlines()[0]}); scripts/jetson/setup.sh --with-onnxruntime "
                                  "installs it")
        return report
    p_ort = ort_be.infer(m, t)
    diff, agree = float(np.abs(p_trt - p_ort).max()), float((p_trt.argmax(1) == p_ort.argmax(1)).mean())
    latency["onnxruntime"] = round(float(np.median(call_times_ms(partial(ort_be.infer, *one), 50))), 3)
    report.update(compared=True, max_abs_prob_diff=diff, top1_agreement=agree,
                  ok=agree >= TOP1_AGREEMENT and diff < MAX_PROB_DIFF)
    return report


def selftest_lines(result: dict[str, Any]) -> list[str]:
    """The report in words, one line per part."""
    if "tensorrt_unavailable" in result:
        lines = [f"TensorRT: not tested ({result['tensorrt_unavailable']})"]
    elif not result["compared"]:
        lines = [f"TensorRT: {result['tensorrt']} ran (latency {result['latency_ms']['tensorrt']} ms) but NOT "
                 f"COMPARED: {result['not_compared']}"]
    else:
        lat = result["latency_ms"]
        verdict = "agrees" if result["ok"] else "DISAGREES"
        lines = [f"TensorRT: {result['tensorrt']} {verdict} with ONNX Runtime on {result['model']}: top-1 "
                 f"agreement {result['top1_agreement']:.0%}, largest probability difference "
                 f"{result['max_abs_prob_diff']:.4f}; latency {lat['tensorrt']} ms (TensorRT) vs "
                 f"{lat['onnxruntime']} ms (ONNX Runtime)"]
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
