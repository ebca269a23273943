"""TensorRT engines from the Q/DQ ONNX file: build, cache key, checks.

Explicit quantization only (the Q/DQ nodes carry the INT8 scales; implicit
calibrators are gone in TensorRT 11). One build method per API generation:

* ``8.5`` (JetPack 5.1): weakly typed network, INT8 flag so the Q/DQ layers run
  in INT8 (FP16 flag on request); ``max_workspace_size`` is gone, the memory pool
  limit is used;
* ``10`` (8.6 to 10.x, JetPack 6 and 7): strongly typed network when FP32 around
  the Q/DQ layers is wanted (TensorRT follows the graph's types exactly);
  weakly typed with INT8 + FP16 flags for ``--fp16``;
* ``11``: strongly typed only (the weak-typing flags are removed); ``--fp16``
  needs an ONNX file already converted to FP16 outside the Q/DQ regions.

The engine file name carries the cache key: ONNX sha256 (12 hex), TensorRT
version, GPU name and precision. A JSON sidecar records the same facts, and the
runtime refuses an engine whose TensorRT version or GPU differs from this
machine's, rebuilding it when the ONNX file it came from is at hand.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_mer.errors import UserError
from edge_mer.runtime.artifact import INPUTS, load_artifact, sha256

if TYPE_CHECKING:
    import tensorrt as trt

ENGINE_FORMAT = "edge-mer-engine/1"
MAX_BATCH = 32


def import_tensorrt() -> Any:
    """The TensorRT module, or one clear error (type stubs alone do not count)."""
    try:
        import tensorrt
    except ImportError:
        raise UserError("TensorRT is not installed: on a Jetson it comes with JetPack (python3-libnvinfer); "
                        "elsewhere use --backend onnxruntime") from None
    if not hasattr(tensorrt, "Builder"):
        raise UserError("only TensorRT's type stubs are installed, not TensorRT itself; use --backend onnxruntime")
    return tensorrt


def api_generation(version: str) -> str:
    """'8.5', '10' (8.6 to 10.x) or '11' for a TensorRT version string."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise UserError(f"cannot read the TensorRT version {version!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) < (8, 5):
        raise UserError(f"TensorRT {version} is too old: edge-mer needs 8.5 (JetPack 5.1) or newer")
    if (major, minor) == (8, 5):
        return "8.5"
    return "10" if major <= 10 else "11"


def gpu_name() -> str:
    """The CUDA device's name (pycuda), for the cache key."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise UserError("pycuda is not installed: on a Jetson run scripts/jetson/setup.sh, elsewhere "
                        "pip install pycuda") from None
    cuda.init()
    return str(cuda.Device(0).name())


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def engine_name(onnx_sha: str, trt_version: str, gpu: str, precision: str, stem: str = "model") -> str:
    return f"{stem}.{onnx_sha[:12]}.trt{trt_version}.{slug(gpu)}.{precision}.engine"


@dataclass(frozen=True)
class EngineInfo:
    path: Path
    meta: dict[str, Any]


def read_engine_info(engine: Path) -> EngineInfo:
    side = engine.with_name(engine.name + ".json")
    if not engine.is_file():
        raise UserError(f"engine not found: {engine}")
    if not side.is_file():
        raise UserError(f"{engine} has no sidecar {side.name}: build it with edge-mer build-engine")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {side}: {exc}") from None
    if meta.get("format") != ENGINE_FORMAT:
        raise UserError(f"{side} is not an edge-mer engine sidecar")
    return EngineInfo(engine, meta)


def mismatch(info: EngineInfo, trt_version: str, gpu: str) -> str | None:
    """Why this engine cannot run here, or None."""
    if info.meta["tensorrt"] != trt_version:
        return (f"engine {info.path.name} was built with TensorRT {info.meta['tensorrt']}; this machine has "
                f"TensorRT {trt_version}")
    if info.meta["gpu"] != gpu:
        return f"engine {info.path.name} was built for {info.meta['gpu']}; this machine has {gpu}"
    return None


def build_engine(onnx_path: Path, out_dir: Path, fp16: bool = False, max_batch: int = MAX_BATCH,
                 workspace_mb: int = 1024, gpu: str | None = None) -> Path:
    """Build (or reuse) the engine of ``onnx_path`` for this machine (``gpu``: its name when already known);
    returns its path."""
    trt = import_tensorrt()
    art = load_artifact(onnx_path)
    gpu = gpu or gpu_name()
    precision = ("int8" if art.precision == "int8" else "fp32") + ("+fp16" if fp16 else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = onnx_path.name.removesuffix(".onnx")
    path = out_dir / engine_name(art.meta["sha256"], trt.__version__, gpu, precision, stem)
    if path.is_file() and path.with_name(path.name + ".json").is_file():
        return path
    gen = api_generation(trt.__version__)
    builder_fn = {"8.5": _build_v85, "10": _build_v10, "11": _build_v11}[gen]
    size = art.size
    start = time.perf_counter()
    blob = builder_fn(onnx_path, fp16, size, max_batch, workspace_mb << 20)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    meta = {"format": ENGINE_FORMAT, "onnx": onnx_path.name, "onnx_sha256": art.meta["sha256"],
            "tensorrt": trt.__version__, "api": gen, "gpu": gpu, "precision": precision, "max_batch": max_batch,
            "size": size, "class_names": art.class_names, "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "build_seconds": round(time.perf_counter() - start, 1), "engine_sha256": sha256(path)}
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def _parse(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path) -> None:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")


def _profile(builder: trt.Builder, config: trt.IBuilderConfig, size: int, max_batch: int) -> None:
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    for name, ch in zip(INPUTS, (3, 1), strict=True):
        profile.set_shape(name, trt.Dims([1, ch, size, size]), trt.Dims([1, ch, size, size]),
                          trt.Dims([max_batch, ch, size, size]))
    config.add_optimization_profile(profile)


def _serialise(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> bytes:
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise UserError("TensorRT could not build the engine (see its log above)")
    return bytes(memoryview(blob))


def _build_v85(onnx_path: Path, fp16: bool, size: int, max_batch: int, workspace: int) -> bytes:
    """TensorRT 8.5: explicit batch, weak typing, INT8 flag for the Q/DQ layers."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    _parse(network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.set_flag(trt.BuilderFlag.INT8)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    _profile(builder, config, size, max_batch)
    return _serialise(builder, network, config)


def _build_v10(onnx_path: Path, fp16: bool, size: int, max_batch: int, workspace: int) -> bytes:
    """TensorRT 8.6 to 10.x: strongly typed unless FP16 is asked for (then weak typing with flags)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if fp16 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    _parse(network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    _profile(builder, config, size, max_batch)
    return _serialise(builder, network, config)


def _build_v11(onnx_path: Path, fp16: bool, size: int, max_batch: int, workspace: int) -> bytes:
    """TensorRT 11: every network is strongly typed; no precision flags exist."""
    if fp16:
        raise UserError("TensorRT 11 has no FP16 flag: convert the ONNX file to mixed precision first "
                        "(python -m modelopt.onnx.autocast --onnx_path model.int8.onnx) and build that")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    _parse(network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    _profile(builder, config, size, max_batch)
    return _serialise(builder, network, config)


def find_or_build(model: Path, cache: Path | None = None, fp16: bool = False) -> Path:
    """The engine to run for ``model`` (an .onnx or an .engine) on this machine.

    An ONNX file gets its engine from ``cache`` (default: beside it), built when
    missing. An engine from another TensorRT version or GPU is rebuilt when its
    ONNX file is beside it with the recorded sha256, and refused otherwise.
    """
    trt = import_tensorrt()
    if model.suffix == ".onnx":
        return build_engine(model, cache or model.parent, fp16=fp16)
    info = read_engine_info(model)
    gpu = gpu_name()
    why = mismatch(info, trt.__version__, gpu)
    if why is None:
        return model
    source = model.parent / info.meta["onnx"]
    if source.is_file() and sha256(source) == info.meta["onnx_sha256"]:
        return build_engine(source, cache or model.parent, fp16="fp16" in info.meta["precision"], gpu=gpu)
    raise UserError(f"{why}; rebuild it with: edge-mer build-engine --onnx {info.meta['onnx']} --out "
                    f"{model.parent}")
