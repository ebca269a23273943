"""Inference backends behind one interface, and the ``auto`` choice.

``auto`` picks TensorRT (a real TensorRT, pycuda and a CUDA device), then ONNX
Runtime, then torch; a torch checkpoint (``.pt``) only runs on torch (or
torch-tensorrt), an engine only on TensorRT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edge_mer.errors import UserError
from edge_mer.runtime.backends.base import Backend, TensorSpec
from edge_mer.runtime.gpu import cuda_unavailable

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch", "torch-tensorrt")

__all__ = ["BACKENDS", "Backend", "TensorSpec", "available", "open_backend"]


def _tensorrt_usable() -> bool:
    if importlib.util.find_spec("tensorrt") is None or cuda_unavailable() is not None:
        return False
    try:
        from edge_mer.runtime.engine import gpu_identity, import_tensorrt

        import_tensorrt()
        gpu_identity()
    except Exception:  # no driver, no device, stubs only: not usable here
        return False
    return True


def available() -> dict[str, bool]:
    """Which backends can run on this machine (cheap checks; torch-tensorrt by import spec only)."""
    return {"tensorrt": _tensorrt_usable(),
            "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
            "torch": importlib.util.find_spec("torch") is not None,
            "torch-tensorrt": importlib.util.find_spec("torch_tensorrt") is not None}


def open_backend(name: str, model: Path, threads: int | None = None, precision: str = "auto",
                 fp16: bool = False) -> Backend:
    """Load ``model`` (.onnx, .engine or a torch checkpoint) on the named backend."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if not model.is_file():
        raise UserError(f"model not found: {model}")
    kind = "onnx" if model.suffix == ".onnx" else "engine" if model.suffix in (".engine", ".plan") else "checkpoint"
    if name == "auto":
        if kind == "checkpoint":
            name = "torch"
        elif kind == "engine" or _tensorrt_usable():
            name = "tensorrt"
        elif importlib.util.find_spec("onnxruntime") is not None:
            name = "onnxruntime"
        else:
            raise UserError("no backend can run an ONNX file here: pip install onnxruntime")
    if name == "tensorrt":
        if kind == "checkpoint":
            raise UserError(f"{model} is a torch checkpoint: export it (edge-mer export) for TensorRT")
        from edge_mer.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model, fp16=fp16)
    if name == "onnxruntime":
        if kind != "onnx":
            raise UserError(f"ONNX Runtime runs .onnx files; {model} is a {kind}")
        from edge_mer.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, threads=threads, precision=precision)
    if kind != "checkpoint":
        raise UserError(f"the {name} backend runs torch checkpoints; {model} is an {kind} file")
    if name == "torch":
        from edge_mer.runtime.backends.torch_backend import TorchBackend

        return TorchBackend(model, threads=threads)
    from edge_mer.runtime.backends.torch_tensorrt import TorchTensorRTBackend

    return TorchTensorRTBackend(model)
