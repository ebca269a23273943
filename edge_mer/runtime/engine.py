"""TensorRT engines from the Q/DQ ONNX file: build, cache key, checks.

Explicit quantization only (the Q/DQ nodes carry the INT8 scales; implicit
calibrators are gone in TensorRT 11). One build method per API generation:

* ``8`` (8.5 and 8.6; JetPack 5.1 and 6.0): an explicit-batch network (the ONNX
  parser refuses an implicit-batch one), weakly typed: the INT8 flag lets the
  Q/DQ layers run in INT8, the FP16 flag on request; strong typing came in 9.0;
* ``10`` (9.x and 10.x; JetPack 6.1/6.2 and 7): strongly typed (TensorRT follows
  the graph's types exactly, FP32 around the Q/DQ layers); weakly typed with the
  INT8 and FP16 flags for ``--fp16`` (explicit batch is the only kind there);
* ``11``: strongly typed only (the precision flags and EXPLICIT_BATCH are gone);
  ``--fp16`` needs an ONNX file already converted to FP16 outside the Q/DQ regions.

Which names each TensorRT version has is held against NVIDIA's binding sources
of that version by tests/test_tensorrt_api.py: it reads this file, so every
object from TensorRT is either made by a ``trt.`` constructor or annotated with
its ``trt.`` type, and a function whose name ends in ``_v8``, ``_v10`` or ``_v11``
serves that generation alone.

The engine file name carries the cache key: ONNX sha256 (12 hex), TensorRT
version, the GPU (name, compute capability, multiprocessors and memory, which
tell the Jetson modules apart: every Orin calls itself "Orin") and precision. A
JSON sidecar records the same facts, and the runtime refuses an engine whose
TensorRT version or GPU differs from this machine's, rebuilding it when the ONNX
file it came from is at hand.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edge_mer.atomic import write_bytes, write_text
from edge_mer.errors import UserError
from edge_mer.runtime.artifact import INPUTS, load_artifact, model_stem, sha256

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
    """'8' (8.5, 8.6), '10' (9.x, 10.x) or '11' (11 and newer) for a TensorRT version string."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise UserError(f"cannot read the TensorRT version {version!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) < (8, 5):
        raise UserError(f"TensorRT {version} is too old: edge-mer needs 8.5 (JetPack 5.1) or newer")
    if major == 8:
        return "8"
    return "10" if major <= 10 else "11"


@dataclass(frozen=True)
class GpuIdentity:
    """What makes a TensorRT plan specific to a GPU: its name alone does not tell Jetson modules apart."""

    name: str
    compute: str  # compute capability, "8.7"
    multiprocessors: int
    memory_gib: int  # total memory rounded to whole GiB (a Jetson's is the module's shared RAM)

    @property
    def key(self) -> str:
        """The engine cache key's GPU part, e.g. ``orin.sm87.8mp.7gib``."""
        return f"{slug(self.name)}.sm{self.compute.replace('.', '')}.{self.multiprocessors}mp.{self.memory_gib}gib"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """This machine's CUDA device as the engine cache key sees it (pycuda)."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise UserError("pycuda is not installed: on a Jetson run scripts/jetson/setup.sh, elsewhere "
                        "pip install pycuda") from None
    cuda.init()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return GpuIdentity(name=str(dev.name()), compute=f"{major}.{minor}",
                       multiprocessors=int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
                       memory_gib=int(round(dev.total_memory() / 2**30)))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def engine_name(onnx_sha: str, trt_version: str, gpu_key: str, precision: str, stem: str = "model") -> str:
    return f"{stem}.{onnx_sha[:12]}.trt{trt_version}.{gpu_key}.{precision}.engine"


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


def mismatch(info: EngineInfo, trt_version: str, gpu_key: str) -> str | None:
    """Why this engine cannot run here, or None (``gpu_key``: this machine's ``GpuIdentity.key``)."""
    if info.meta["tensorrt"] != trt_version:
        return (f"engine {info.path.name} was built with TensorRT {info.meta['tensorrt']}; this machine has "
                f"TensorRT {trt_version}")
    if info.meta["gpu"] != gpu_key:
        return f"engine {info.path.name} was built for {info.meta['gpu']}; this machine has {gpu_key}"
    return None


def build_engine(onnx_path: Path, out_dir: Path, fp16: bool = False, max_batch: int = MAX_BATCH,
                 workspace_mb: int = 1024, gpu: GpuIdentity | None = None) -> Path:
    """Build (or reuse) the engine of ``onnx_path`` for this machine (``gpu``: its identity when already known);
    returns its path."""
    art = load_artifact(onnx_path)
    if not art.usable:
        why = "; ".join((art.meta.get("quality") or {}).get("failed") or []) or "see its sidecar"
        raise UserError(f"{onnx_path} failed its INT8 quality gate ({why}): an engine of it would not be trusted; "
                        "calibrate again on a larger, representative set, or build its FP32 export")
    trt_module = import_tensorrt()
    version = str(trt_module.__version__)
    gpu = gpu or gpu_identity()
    precision = ("int8" if art.precision == "int8" else "fp32") + ("+fp16" if fp16 else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / engine_name(art.meta["sha256"], version, gpu.key, precision, model_stem(onnx_path))
    if path.is_file() and path.with_name(path.name + ".json").is_file():
        return path
    gen = api_generation(version)
    start = time.perf_counter()
    blob = BUILDERS[gen](onnx_path, fp16, art.size, max_batch, workspace_mb << 20)
    write_bytes(path, blob)
    # the ONNX file's path, to rebuild from when the engine moves; its features, so the loop picks the flow
    # the model was trained with from the engine alone
    meta = {"format": ENGINE_FORMAT, "onnx": onnx_path.name, "onnx_path": str(onnx_path.resolve()),
            "onnx_sha256": art.meta["sha256"], "features": art.meta.get("features"), "config": art.meta.get("config"),
            "tensorrt": version, "api": gen, "gpu": gpu.key, "gpu_identity": asdict(gpu), "precision": precision,
            "max_batch": max_batch, "size": art.size, "class_names": art.class_names,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "build_seconds": round(time.perf_counter() - start, 1),
            "engine_sha256": sha256(path)}
    write_text(path.with_name(path.name + ".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def _parse(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path) -> None:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")


def _config(builder: trt.Builder, workspace: int, flags: tuple[trt.BuilderFlag, ...]) -> trt.IBuilderConfig:
    """A builder configuration with the workspace limit (the memory pool API, 8.4 and newer) and ``flags``."""
    import tensorrt as trt

    config: trt.IBuilderConfig = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for flag in flags:
        config.set_flag(flag)
    return config


def _profile(builder: trt.Builder, config: trt.IBuilderConfig, size: int, max_batch: int) -> None:
    import tensorrt as trt

    profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    for name, ch in zip(INPUTS, (3, 1)):
        profile.set_shape(name, trt.Dims([1, ch, size, size]), trt.Dims([1, ch, size, size]),
                          trt.Dims([max_batch, ch, size, size]))
    config.add_optimization_profile(profile)


def _serialise(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> bytes:
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise UserError("TensorRT could not build the engine (see its log above)")
    return bytes(memoryview(blob))


def _build(onnx_path: Path, network_flags: int, precision_flags: tuple[trt.BuilderFlag, ...], size: int,
           max_batch: int, workspace: int) -> bytes:
    """Parse, configure and serialise; the flags are chosen by each generation's method."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network: trt.INetworkDefinition = builder.create_network(network_flags)
    _parse(network, logger, onnx_path)
    config = _config(builder, workspace, precision_flags)
    _profile(builder, config, size, max_batch)
    return _serialise(builder, network, config)


def _build_v8(onnx_path: Path, fp16: bool, size: int, max_batch: int, workspace: int) -> bytes:
    """TensorRT 8.5 and 8.6: explicit batch, weak typing, the INT8 flag for the Q/DQ layers (FP16 on request)."""
    import tensorrt as trt

    explicit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    flags = (trt.BuilderFlag.INT8, trt.BuilderFlag.FP16) if fp16 else (trt.BuilderFlag.INT8,)
    return _build(onnx_path, explicit, flags, size, max_batch, workspace)


def _build_v10(onnx_path: Path, fp16: bool, size: int, max_batch: int, workspace: int) -> bytes:
    """TensorRT 9.x and 10.x: strongly typed unless FP16 is asked for (then weak typing with the flags; every
    network is explicit-batch there)."""
    import tensorrt as trt

    if fp16:
        return _build(onnx_path, 0, (trt.BuilderFlag.INT8, trt.BuilderFlag.FP16), size, max_batch, workspace)
    strong = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return _build(onnx_path, strong, (), size, max_batch, workspace)


def _build_v11(onnx_path: Path, fp16: bool, size: int, max_batch: int, workspace: int) -> bytes:
    """TensorRT 11: every network is strongly typed; no precision flags exist."""
    if fp16:
        raise UserError("TensorRT 11 has no FP16 flag: convert the ONNX file to mixed precision first "
                        "(python -m modelopt.onnx.autocast --onnx_path model.int8.onnx) and build that")
    return _build(onnx_path, 0, (), size, max_batch, workspace)


BUILDERS: dict[str, Callable[[Path, bool, int, int, int], bytes]] = {
    "8": _build_v8, "10": _build_v10, "11": _build_v11}


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
    gpu = gpu_identity()
    why = mismatch(info, str(trt.__version__), gpu.key)
    if why is None:
        return model
    for source in (model.parent / info.meta["onnx"], Path(info.meta.get("onnx_path") or info.meta["onnx"])):
        if source.is_file() and sha256(source) == info.meta["onnx_sha256"]:
            return build_engine(source, cache or model.parent, fp16="fp16" in info.meta["precision"], gpu=gpu)
    raise UserError(f"{why}; rebuild it with: edge-mer build-engine --onnx {info.meta['onnx']} --out "
                    f"{model.parent}")
