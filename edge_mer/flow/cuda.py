"""The CUDA flow stage: the host driver of ``kernels/tvl1.cu`` (pycuda, imported lazily).

Per onset/apex pair it launches, on one stream and without a trip through host memory
between them (the kernel file lists the same sequence):

* ``tvl1_pre`` once: grey conversion and the affine face crop of both camera frames;
* ``tvl1_downsample`` once per coarser level (both images in one launch);
* per level, coarsest first: ``tvl1_upsample_flow`` unless it is the coarsest level,
  ``tvl1_centered_gradient``, then ``warps`` times ``tvl1_warp`` and ``tvl1_solve`` or
  ``tvl1_solve_bands`` (all outer x inner iterations of a warp in one launch, in one of three
  layouts); or, in the cluster layouts (thread block clusters of 8 or 16 blocks), the
  pyramid and all of that for every level whose state fits in the cluster's shared memory in
  one launch of ``tvl1_levels_cluster16`` (or ``tvl1_levels_cluster``, 8 blocks, where 16 are not allowed);
* ``tvl1_epilogue``: strain and the feature-cache normalisation, written
  NCHW into the model's input buffers: a host buffer for ONNX Runtime, or the TensorRT
  backend's device buffers (``write``), so that path never copies to the host.

So the launches grow with levels x warps (5 x 5 at the defaults), not with iterations,
and all of them, from the crop to the epilogue, are captured once as a CUDA graph and
replayed with one launch per pair: the crop's parameters (the face transform, where the
frames' windows lie) travel to the device in the same copy as the windows, so that the
launches are the same for every pair. Device memory is allocated once per image shape
and reused. The kernels run in the
device's primary context, the one the TensorRT backend uses, so their buffers are
valid in both.

The numpy reference (``edge_mer.flow.reference``) is the specification;
``tests/test_flow_cuda.py`` holds this stage against it on a GPU (marked ``gpu``) and on
the tests' CPU emulator (``tests/cuda_emulator``, passed as ``runtime``), and
``benchmarks/flow.py`` times it with CUDA events.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.flow.base import FlowStage, MotionOptions, to_gray
from edge_mer.flow.graphs import Graph, GraphError, capture
from edge_mer.flow.normalise import CLIP, FLOW_UNIT, STRAIN_UNIT, TEXTURE_MEAN, TEXTURE_STD
from edge_mer.flow.reference import TVL1Params, crop_gray, level_shapes, to_float, tvl1
from edge_mer.runtime.choices import keep, recall
from edge_mer.runtime.gpu import cuda_unavailable

KERNELS = Path(__file__).with_name("kernels")  # tvl1.cu and tvl1_gpu.h, installed as package data
TILE = 16  # block side of the per-pixel kernels
SOLVE_THREADS = 1024  # block of tvl1_solve: a multiple of 32, at most 32 warps (less when the compiled
# kernel's registers do not allow as many threads)
# The fused solve's layouts, each kept for the GPUs it serves and wins on (benchmarks/results/flow_gpu.md):
#   block    one thread block per pair, no barrier between blocks: any GPU, also one shared with other work
#            (the fallback when a multi-block barrier gives up);
#   bands    up to one block per multiprocessor, each a band of rows, one grid barrier per iteration: the
#            GPUs without thread block clusters, Xavier (sm_72) and Orin (sm_87);
#   cluster  the pyramid and the levels in one launch of a thread block cluster, the state in shared memory:
#            compute capability 9.0 and newer (Hopper, Jetson Thor); 16 blocks where the GPU allows that
#            non-portable size (an H200 runs 16 faster than 8 at every size), else the portable 8.
# (A layout spreading a level over a grid with two barriers per iteration never beat bands on an H200, at any
# size; it is gone.)
SOLVERS = ("block", "bands", "cluster")
# the smaller blocks the auto pick also times, per layout (a cluster's work stays on its blocks)
SMALLER_BLOCKS = {"block": (), "bands": (256, 128), "cluster": (512, 256)}
LAYOUT_CACHE = "flow_layouts.json"  # in the cache folder: the layout picked per GPU, kernel build and size


def kernel_source() -> str:
    """The text of ``tvl1.cu`` as packaged."""
    return (KERNELS / "tvl1.cu").read_text()


def kernel_constant(name: str) -> int:
    """An integer ``#define`` of ``tvl1.cu``, so that the driver and the kernels size things alike."""
    found = re.search(rf"^#define\s+{name}\s+(\d+)\b", kernel_source(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"tvl1.cu defines no {name}")
    return int(found.group(1))


# where CUDA toolkits go when nvcc is not on PATH: JetPack installs /usr/local/cuda-X.Y and the
# /usr/local/cuda link, and puts neither on PATH (nor do a venv or a systemd unit)
CUDA_PREFIXES = (Path("/usr/local"),)
CUDA_HOME_VARIABLES = ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT")


def _toolkit_version(folder: Path) -> tuple[int, ...]:
    """(12, 6) for cuda-12.6; () for a folder without a version (the cuda link)."""
    return tuple(int(part) for part in re.findall(r"\d+", folder.name.split("-", 1)[-1])) if "-" in folder.name else ()


def find_nvcc(environ: Mapping[str, str] = os.environ, prefixes: Sequence[Path] = CUDA_PREFIXES) -> str | None:
    """The CUDA compiler pycuda builds the kernels with: nvcc on PATH, else under $CUDA_HOME (or CUDA_PATH,
    CUDA_ROOT), else JetPack's /usr/local/cuda, else the newest /usr/local/cuda-X.Y; None when there is none."""
    on_path = shutil.which("nvcc", path=environ.get("PATH", os.defpath))
    if on_path:
        return on_path
    candidates = [Path(environ[v]) / "bin" / "nvcc" for v in CUDA_HOME_VARIABLES if environ.get(v)]
    for prefix in prefixes:
        candidates.append(prefix / "cuda" / "bin" / "nvcc")
        toolkits = sorted(prefix.glob("cuda-*"), key=_toolkit_version, reverse=True)
        candidates += [folder / "bin" / "nvcc" for folder in toolkits]
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def kernel_defines() -> list[str]:
    """nvcc ``-D`` options from ``EDGE_MER_CUDA_DEFINES`` (names, space-separated): the kernels' diagnostic
    switches, ``TVL1_EXACT_DUAL`` (correctly rounded square roots and reciprocals in the dual step) and
    ``TVL1_FULL_BARRIERS`` (the cluster layouts' barriers order global memory too), to tell their effect."""
    names = os.environ.get("EDGE_MER_CUDA_DEFINES", "").split()
    unknown = sorted(set(names) - {"TVL1_EXACT_DUAL", "TVL1_FULL_BARRIERS"})
    if unknown:
        raise UserError(f"EDGE_MER_CUDA_DEFINES: unknown switch {', '.join(unknown)}; "
                        "use TVL1_EXACT_DUAL and/or TVL1_FULL_BARRIERS")
    return [f"-D{name}" for name in names]


# the cluster layout's kernels by their blocks per cluster: the portable size, and the most a Hopper GPU allows
CLUSTER_KERNELS = {kernel_constant("TVL1_CLUSTER"): "tvl1_levels_cluster",
                   kernel_constant("TVL1_CLUSTER_LARGE"): "tvl1_levels_cluster16"}
NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14  # CUfunction_attribute's value, for a pycuda whose enum lacks the name
CLUSTER_PLANES = kernel_constant("TVL1_CLUSTER_PLANES")  # its floats per pixel in each block's shared memory
CLUSTER_ROWS = kernel_constant("TVL1_CLUSTER_ROWS")  # and per column, for the rows next to the band
MAX_WARPS = kernel_constant("TVL1_MAX_WARPS")  # and twice this many per-warp sums
PRE_HEADER = kernel_constant("TVL1_PRE_HEADER")  # bytes of tvl1_pre's parameters before the frames' windows
STAGE_GRAPHS = 16  # whole-stage graphs kept: per layout tried and set of output buffers (the device loop: one)


def _cluster_bytes(rows: int, w: int) -> int:
    """Dynamic shared memory of a tvl1_levels_cluster block owning ``rows`` rows of width ``w``."""
    return (CLUSTER_PLANES * rows * w + CLUSTER_ROWS * w + 2 * MAX_WARPS) * 4


def _crop_window(inv: np.ndarray, size: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive: the part of a width x height frame that tvl1_pre reads for a
    size x size crop whose pixel (x, y) comes from frame position inv @ (x, y, 1) (bilinear, coordinates
    clamped to the frame): the corners' bounding box, a pixel wider on each side for float32 rounding."""
    corners = inv @ np.array([[0, size - 1, 0, size - 1], [0, 0, size - 1, size - 1], [1, 1, 1, 1]], np.float64)
    lo = np.floor(corners.min(axis=1)) - 1
    hi = np.floor(corners.max(axis=1)) + 3  # the bilinear tap at floor + 1, end exclusive, one more for rounding
    x0, x1 = (int(np.clip(v, 0, width - 1)) for v in (lo[0], hi[0] - 1))
    y0, y1 = (int(np.clip(v, 0, height - 1)) for v in (lo[1], hi[1] - 1))
    return x0, y0, x1 + 1, y1 + 1


def _nvcc() -> str:
    found = find_nvcc()
    if found is None:
        raise UserError("the cuda flow stage needs the CUDA compiler nvcc to build its kernels and found none on "
                        f"PATH, under ${', $'.join(CUDA_HOME_VARIABLES)} or in /usr/local/cuda*/bin: on a Jetson "
                        "sudo apt install nvidia-jetpack (or its cuda-toolkit package)")
    return found


def _nvcc_version(nvcc: str) -> str:
    """nvcc's release line, which decides the cluster barriers the kernels get (part of the layout's cache key)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return nvcc
    return next((line for line in out.splitlines() if "release" in line), out.strip()[-80:] or nvcc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _grid(w: int, h: int, z: int = 1) -> tuple[int, int, int]:
    return ((w + TILE - 1) // TILE, (h + TILE - 1) // TILE, z)


@dataclass
class _Buffers:
    """Device memory of one image shape: the pyramids of both images and the solver state."""

    shapes: list[tuple[int, int]]  # (h, w) per level, finest first
    levels: list[Any]  # per level (2, h, w) float32: first image, then second
    planes: dict[str, Any]  # finest-size float32 planes, reused at every level
    halo: Any  # (multiprocessors, 2, finest width) float32: tvl1_solve_bands' private rows
    table: Any  # the cluster layouts' per-level table (tvl1_levels_cluster): the levels' addresses, sizes, stops


class CudaStage(FlowStage):
    """TV-L1 on the GPU with the reference's parameters; ``__call__`` returns host arrays like every stage."""

    name = "cuda"
    PLANES = ("gx", "gy", "i1wx", "i1wy", "igrad", "rho_c", "u1", "u2", "v1", "v2",
              "p11", "p12", "p21", "p22", "tmp1", "tmp2", "q11", "q12", "q21", "q22")

    def __init__(self, size: int = 112, params: TVL1Params | None = None, device: int = 0,
                 runtime: ModuleType | None = None, solver: str = "auto", graphs: bool = True,
                 solve_threads: int = SOLVE_THREADS, cluster_blocks: int | None = None,
                 options: MotionOptions | None = None) -> None:
        """``runtime``: pycuda when None; the tests' ``cuda_emulator`` runs the same kernels on the CPU.

        ``solver``: one of ``SOLVERS`` (see there for the GPUs each serves), or ``auto`` (the default):
        the layout this GPU runs fastest, timed on a face pair the first time a stage of this size starts
        on this GPU with this kernel build (well under a second; the grid layouts also with smaller
        blocks) and kept in the cache folder's ``flow_layouts.json``, like TensorRT's timing cache; later
        starts read it (``layout_ms`` holds the times, keyed ``layout`` or ``layout/threads``;
        ``layout_notes`` why a layout was left out; ``layout_from`` says ``timed`` or ``cache``).
        A level whose rows do not fit in the cluster's shared memory runs ``bands``.
        ``benchmarks/flow.py`` times every layout on the benchmark pairs.

        ``solve_threads``: the solve's block size, at most what the compiled kernel allows (a multiple
        of 32); in the bands layout smaller blocks mean more of them. ``cluster_blocks``: 8 or 16 blocks
        per cluster (default: 16 where the GPU allows that non-portable size, else 8).

        ``graphs``: capture the launches as a CUDA graph once and replay it
        (``edge_mer.flow.graphs``): the whole stage, crop to epilogue, per set of output
        buffers, and ``flow``'s pyramid and solve per image shape; where the driver cannot
        (for a layout), the stage says why in ``graph_note`` and launches that layout kernel
        by kernel.

        ``options`` other than the plain flow (``data prepare --oversample``, ``--head removed``): ``__call__``
        crops on the host, computes the flow on the GPU (``flow``) and finishes the model inputs on the host
        as the other stages do; ``write``, the path into TensorRT's input buffers, computes the plain flow only.
        """
        super().__init__(size, options)
        if solver != "auto" and solver not in SOLVERS:
            raise ValueError(f"solver must be auto or one of {SOLVERS}, not {solver!r}")
        if cluster_blocks is not None and cluster_blocks not in CLUSTER_KERNELS:
            raise ValueError(f"cluster_blocks must be one of {sorted(CLUSTER_KERNELS)}, not {cluster_blocks}")
        self.solver = "block" if solver == "auto" else solver
        self.layout_ms: dict[str, float] = {}
        self.layout_notes: dict[str, str] = {}
        self.layout_from = "asked"
        self.use_graphs = graphs
        # per (layout, every layout's threads, shape): the graph and where it leaves the flow, or None
        # when it could not be captured (that layout then launches kernel by kernel; why: _graph_notes)
        self._graphs: dict[tuple[Any, ...], tuple[Graph, tuple[Any, Any]] | None] = {}
        self._graph_notes: dict[str, str] = {}
        self.params = params or TVL1Params()
        self.drv, source_module = self._driver(runtime)
        capability, shared_optin = self._open_device(device)
        self.ctx.push()
        try:
            self._build(source_module, runtime)
            kernels = {"block": "tvl1_solve", "bands": "tvl1_solve_bands", "cluster": CLUSTER_KERNELS[8]}
            self._threads = {layout: max(32, min(solve_threads, int(self.k[kernel].max_threads_per_block)) // 32 * 32)
                             for layout, kernel in kernels.items()}
            self._set_up_clusters(capability, shared_optin, cluster_blocks)
            if solver == "cluster" and self.cluster_note:
                raise UserError(f"the cluster layout of the CUDA flow solve is not available here: "
                                f"{self.cluster_note}; use auto, block or bands")
            self._allocate()
        finally:
            self.ctx.pop()
        self.last_ms = float("nan")  # GPU time of the last call (pre + flow + epilogue), CUDA events
        self._pending = False  # a write(sync=False) not yet checked
        if solver == "auto":
            self._pick_layout()

    # -- set-up ------------------------------------------------------------------------------------

    @staticmethod
    def _driver(runtime: ModuleType | None) -> tuple[Any, Any]:
        """(the driver module, its SourceModule): pycuda, or the runtime given."""
        if runtime is not None:
            return runtime, runtime.SourceModule
        reason = cuda_unavailable()
        if reason:
            raise UserError(f"the cuda flow stage is not available: {reason}; use reference or opencv")
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule

        return drv, SourceModule

    def _open_device(self, device: int) -> tuple[tuple[int, int], int]:
        """Retain the device's primary context (the one TensorRT uses); (compute capability, shared memory per
        block with opt-in)."""
        drv = self.drv
        try:
            gpu = drv.Device(device)
            self.multiprocessors = int(gpu.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT))
            major, minor = (int(gpu.get_attribute(getattr(drv.device_attribute, f"COMPUTE_CAPABILITY_{part}")))
                            for part in ("MAJOR", "MINOR"))
            shared_optin = int(gpu.get_attribute(drv.device_attribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN))
            self.gpu_name = str(gpu.name())
            self.ctx = gpu.retain_primary_context()
        except drv.Error as exc:  # e.g. a GPU in exclusive-process mode held by another process
            raise UserError(f"the cuda flow stage cannot use GPU {device}: {_first_line(exc)}") from None
        self.capability = (major, minor)
        return self.capability, shared_optin

    def _build(self, source_module: Any, runtime: ModuleType | None) -> None:
        """Compile tvl1.cu (nvcc through pycuda; the emulator compiles with g++ and its own tvl1_gpu.h)."""
        drv = self.drv
        nvcc = None if runtime is not None else _nvcc()
        compiler = {} if nvcc is None else {"nvcc": nvcc, "include_dirs": [str(KERNELS)]}
        self._nvcc = nvcc  # None: the emulator's g++
        try:
            module = source_module(kernel_source(), no_extern_c=True, options=["-O3", *kernel_defines()], **compiler)
        except drv.CompileError as exc:
            raise UserError(f"the CUDA flow kernels do not compile here: {_first_line(exc)}") from None
        except OSError as exc:  # the compiler found could not be started
            raise UserError(f"the cuda flow stage cannot run nvcc to build its kernels: {_first_line(exc)}") from None
        except drv.Error as exc:  # the module does not load: a toolkit newer than the driver
            raise UserError(f"the CUDA flow kernels do not load on this GPU: {_first_line(exc)}") from None
        self.k = {name: module.get_function(name) for name in (
            "tvl1_pre", "tvl1_downsample", "tvl1_centered_gradient", "tvl1_warp", "tvl1_solve",
            "tvl1_upsample_flow", "tvl1_epilogue", "tvl1_solve_bands", *CLUSTER_KERNELS.values())}

    def _set_up_clusters(self, capability: tuple[int, int], shared_optin: int, wanted: int | None) -> None:
        """How the cluster layout runs here: ``cluster_blocks`` (16 where allowed, else 8; 0: not at all, why in
        ``cluster_note``), ``cluster_shared`` (its blocks' dynamic shared memory), ``large_cluster_note``
        (why 16-block clusters cannot run here, "" when they can)."""
        self.cluster_shared, self.cluster_note = self._enable_clusters(capability, shared_optin)
        self.large_cluster_note = self.cluster_note or (self._allow_large_clusters() if wanted != 8 else "")
        if self.cluster_note:
            self.cluster_blocks = 0
        elif wanted == 16 and self.large_cluster_note:
            raise UserError(f"16-block clusters are not available here: {self.large_cluster_note}")
        else:
            self.cluster_blocks = wanted or (8 if self.large_cluster_note else 16)

    def _enable_clusters(self, capability: tuple[int, ...], shared_optin: int) -> tuple[int, str]:
        """(dynamic shared bytes a cluster block may use, why the layout cannot run here or "")."""
        if capability < (9, 0):
            return 0, (f"needs compute capability 9.0 or newer (thread block clusters); this GPU has "
                       f"{capability[0]}.{capability[1]}")
        limit = shared_optin - max(int(self.k[k].shared_size_bytes) for k in CLUSTER_KERNELS.values())
        try:  # less the kernels' static shared memory
            for kernel in CLUSTER_KERNELS.values():
                self.k[kernel].set_attribute(self.drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, limit)
        except self.drv.Error as exc:
            return 0, f"its shared memory cannot be raised to {limit} bytes: {_first_line(exc)}"
        return limit, ""

    def _allow_large_clusters(self) -> str:
        """Let tvl1_levels_cluster16 launch its 16-block clusters (a non-portable size); "" or why not."""
        attributes = self.drv.function_attribute
        try:
            attribute = getattr(attributes, "NON_PORTABLE_CLUSTER_SIZE_ALLOWED", None)
            if attribute is None:  # pycuda's enum lacks the name; its type takes the driver's number
                attribute = attributes(NON_PORTABLE_CLUSTER_SIZE_ALLOWED)
            self.k[CLUSTER_KERNELS[16]].set_attribute(attribute, 1)
        except (self.drv.Error, TypeError, ValueError) as exc:
            return f"16-block clusters cannot be allowed here: {_first_line(exc)}"
        return ""

    def _allocate(self) -> None:
        """What every pair reuses: the stream and events, the model inputs' buffers, the barrier words, the
        buffers of the stage's own size."""
        drv, size = self.drv, self.size
        self.stream = drv.Stream(1)  # CU_STREAM_NON_BLOCKING: no implicit order with the legacy default stream
        self.start, self.end = drv.Event(), drv.Event()
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        # tvl1_pre's parameters and the frames' windows: (device buffer, bytes, page-locked host copy)
        self._staging: tuple[Any, int, Any] | None = None
        # host copies of the model inputs for __call__
        self._motion = drv.pagelocked_empty((3, size, size), np.float32)
        self._texture = drv.pagelocked_empty((1, size, size), np.float32)
        self._dmotion = drv.mem_alloc(self._motion.nbytes)
        self._dtexture = drv.mem_alloc(self._texture.nbytes)
        # the multi-block solves' barrier (arrivals, generation, gave-up flag) and per-block stopping sums
        self._barrier = drv.mem_alloc(3 * 4)
        drv.memset_d32(self._barrier, 0, 3)
        self._gave_up = drv.pagelocked_empty(1, np.uint32)
        self._gave_up[0] = 0
        self._partials = drv.mem_alloc(4 * 2 * max(1, self.multiprocessors))
        self._buffers_for((size, size))

    def _cluster_rows(self, h: int, w: int, blocks: int) -> int:
        """Rows per block of a cluster of ``blocks`` at a level of h x w (at least two, which the median's copy
        of the neighbours' rows needs; the last blocks may then own none), or 0 when its state does not fit."""
        rows = max(2, -(-h // blocks))
        return rows if _cluster_bytes(rows, w) <= self.cluster_shared else 0

    @property
    def graph_note(self) -> str:
        """Why the current layout launches kernel by kernel instead of replaying a graph; "" when it replays."""
        return self._graph_notes.get(self.solver, "") if self.use_graphs else "graphs turned off"

    @property
    def solve_threads(self) -> int:
        """The block size of the current layout's solve."""
        return self._threads[self.solver]

    def layout_key(self) -> str:
        """What the layout choice depends on: the GPU and its driver, the kernels and what built them (nvcc's
        version picks the cluster barriers), the stage's size, parameters, block sizes and graphs."""
        try:
            driver = str(self.drv.get_driver_version())
        except (AttributeError, self.drv.Error):
            driver = "?"
        compiler = "g++ (the emulator)" if self._nvcc is None else _nvcc_version(self._nvcc)
        parts = [kernel_source(), (KERNELS / "tvl1_gpu.h").read_text(), *kernel_defines(), compiler,
                 driver, str(sorted(self._threads.items())), str(self.cluster_blocks), repr(self.params),
                 str(self.use_graphs)]
        build = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
        major, minor = self.capability
        return f"{self.gpu_name}|sm_{major}{minor}|{self.multiprocessors}mp|S={self.size}|{build}"

    def _pick_layout(self, runs: int = 4) -> None:
        """The layout kept for this GPU, build and size (``LAYOUT_CACHE``), else: time every layout on a face
        pair, also with the smaller blocks of SMALLER_BLOCKS (in bands: more of them; the first run captures the
        graph and is not counted), keep the fastest and remember it."""
        most = dict(self._threads)
        if self.cluster_note:
            self.layout_notes["cluster"] = self.cluster_note
        key = self.layout_key()
        kept = recall(LAYOUT_CACHE, key) or {}
        layout, threads = kept.get("layout"), kept.get("threads")
        if layout in SOLVERS and isinstance(threads, int) and 32 <= threads <= most[layout] and \
                not (layout == "cluster" and self.cluster_note):  # anything else: measured again
            self.solver, self.layout_from = layout, "cache"
            self.layout_ms = {k: v for k, v in (kept.get("ms") or {}).items() if isinstance(v, (int, float))}
            self._threads[layout] = threads
            return
        from edge_mer.flow.pairs import in_frames, micro_pairs  # face photos: loaded only here

        onset, apex, matrix = in_frames(micro_pairs(self.size, peaks=(1.0,))[0])
        candidates = [(layout, t) for layout in SOLVERS if not (layout == "cluster" and self.cluster_note)
                      for t in sorted({most[layout]} | set(SMALLER_BLOCKS[layout]), reverse=True) if t <= most[layout]]
        for layout, threads in candidates:
            self._threads = dict(most)  # a level that cluster leaves to bands runs bands' own block
            self.solver, self._threads[layout] = layout, threads
            name = layout if threads == most[layout] else f"{layout}/{threads}"
            try:
                times = [self.write(onset, apex, matrix, int(self._dmotion), int(self._dtexture)) for _ in range(runs)]
            except (UserError, GraphError, self.drv.Error) as exc:  # e.g. a cluster this GPU cannot schedule
                self.layout_notes[name] = _first_line(exc)
                continue
            self.layout_ms[name] = round(float(np.median(times[1:])), 4)
        if not self.layout_ms:
            raise UserError("no layout of the CUDA flow solve runs here: " +
                            "; ".join(f"{k}: {v}" for k, v in self.layout_notes.items()))
        best = min(self.layout_ms, key=self.layout_ms.__getitem__)
        self.solver, _, count = best.partition("/")
        self._threads = dict(most)
        self._threads[self.solver] = int(count) if count else most[self.solver]
        self.layout_from = "timed"
        keep(LAYOUT_CACHE, key, {"layout": self.solver, "threads": self._threads[self.solver], "ms": self.layout_ms,
                                 "gpu": self.gpu_name, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})

    # -- memory ------------------------------------------------------------------------------------

    def _buffers_for(self, shape: tuple[int, int]) -> _Buffers:
        found = self._buffers.get(shape)
        if found is None:
            shapes = level_shapes(shape, self.params)
            h, w = shape
            planes = {n: self.drv.mem_alloc(h * w * 4) for n in self.PLANES}
            planes["sampled"] = self.drv.mem_alloc(4 * h * w * 4)  # the cluster layouts' (I1, gx, gy, 0) per pixel
            levels = [self.drv.mem_alloc(2 * lh * lw * 4) for lh, lw in shapes]
            stops = np.array([self._stop(lh * lw) for lh, lw in shapes], np.float32).view(np.int32)
            table = (np.array([int(lv) for lv in levels], np.int64).tobytes() +
                     np.array([(lw, lh, stop, 0) for (lh, lw), stop in zip(shapes, stops)],
                              np.int32).tobytes())
            held = self.drv.mem_alloc(len(table))
            self.drv.memcpy_htod(held, np.frombuffer(table, np.uint8))
            found = _Buffers(shapes, levels, planes, self.drv.mem_alloc(max(1, self.multiprocessors) * 2 * w * 4),
                             held)
            self._buffers[shape] = found
        return found

    def _stage_pair(self, onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray) -> tuple[Any, np.ndarray]:
        """tvl1_pre's parameters and the windows of both camera frames that the crop reads, in page-locked
        memory: (the device buffer they go to, the host bytes to copy there); the caller queues the copy."""
        m = np.asarray(matrix, np.float64)
        if m.shape != (2, 3):
            raise ValueError(f"the face transform must be a 2x3 matrix, got shape {m.shape}")
        frames = [np.asarray(f) for f in (onset, apex)]
        if frames[0].shape != frames[1].shape:
            raise ValueError("the onset and apex frames differ in size or channels")
        f = frames[0]
        if f.dtype != np.uint8 or frames[1].dtype != np.uint8 or f.ndim not in (2, 3) or (
                f.ndim == 3 and f.shape[2] not in (1, 3, 4)):
            raise ValueError(f"expected grey, BGR or BGRA uint8 frames, got {f.dtype} {f.shape}")
        inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]  # crop -> frame
        height, width = f.shape[:2]
        channels = 1 if f.ndim == 2 else f.shape[2]
        x0, y0, x1, y1 = _crop_window(inv, self.size, width, height)
        span = -(-(y1 - y0) * (x1 - x0) * channels // 16) * 16  # a window's bytes, rounded up to 16
        nbytes = PRE_HEADER + 2 * span
        if self._staging is None or self._staging[1] < nbytes:  # room for whole frames: rarely grows again
            full = PRE_HEADER + 2 * -(-f.size // 16) * 16
            self._staging = (self.drv.mem_alloc(full), full, self.drv.pagelocked_empty(full, np.uint8))
            for key in [k for k in self._graphs if k[0] == "stage"]:  # they read the buffer given back
                del self._graphs[key]
        host = self._staging[2]  # the last copy from it has ended: callers settle first
        host[:32].view(np.int32)[:] = (width, height, x0, y0, (x1 - x0) * channels, channels, PRE_HEADER,
                                       PRE_HEADER + span)
        host[32:56].view(np.float32)[:] = inv.astype(np.float32).ravel()
        for start, frame in zip((PRE_HEADER, PRE_HEADER + span), frames):
            part = frame[y0:y1, x0:x1]
            np.copyto(host[start:start + part.size].reshape(part.shape), part)
        return self._staging[0], host[:nbytes]

    # -- the launches ------------------------------------------------------------------------------

    def _stop(self, pixels: int) -> float:
        """A level's stopping threshold on the summed squared update (epsilon^2 per pixel), as its launch takes it."""
        return self.params.epsilon ** 2 * pixels

    def _pyramid_and_solve(self, b: _Buffers) -> tuple[Any, Any]:
        """Levels 1.. from level 0 (already written), then the coarse-to-fine solve; the planes holding u1, u2.
        The cluster layout runs the pyramid and every level whose state fits in one launch; the finer levels,
        and every level of the other layouts, run level by level."""
        flow, spare = (b.planes["u1"], b.planes["u2"]), (b.planes["v1"], b.planes["v2"])
        coarsest = len(b.shapes) - 1
        done = self._launch_clusters(b, flow, spare) if self.solver == "cluster" else None
        if done is None:
            self._launch_pyramid(b)
            below, layout = coarsest, "bands" if self.solver == "cluster" else self.solver
        else:
            last, flow, spare = done
            below, layout = last - 1, "bands"  # a level too large for the cluster's shared memory
        for level in range(below, -1, -1):
            flow, spare = self._launch_level(b, level, flow, spare, layout)
        return flow

    def _launch_clusters(self, b: _Buffers, flow: tuple[Any, Any],
                         spare: tuple[Any, Any]) -> tuple[int, tuple[Any, Any], tuple[Any, Any]] | None:
        """The cluster layout: the pyramid and the levels from the coarsest down to the finest whose state fits
        in the cluster's shared memory, in one launch; (that finest level, the planes of its flow, the spare
        ones), or None when not even the coarsest fits."""
        p, i32, f32 = self.params, np.int32, np.float32
        blocks = self.cluster_blocks
        last, rows = None, 0
        for level in range(len(b.shapes) - 1, -1, -1):
            fits = self._cluster_rows(*b.shapes[level], blocks)
            if not fits:
                break
            last, rows = level, fits
        if last is None:
            return None
        q = b.planes
        shared = _cluster_bytes(rows, b.shapes[last][1])  # the largest level of the launch sizes it
        self.k[CLUSTER_KERNELS[blocks]](
            b.table, i32(len(b.shapes)), i32(last), q["sampled"], flow[0], flow[1], spare[0], spare[1],
            f32(1.0 / p.scale_step), f32(p.lambda_ * p.theta), f32(p.theta), f32(p.tau / p.theta), i32(p.warps),
            i32(p.outer_iterations), i32(p.inner_iterations), i32(p.median_filtering),
            block=(self._threads["cluster"], 1, 1), grid=(blocks, 1, 1), shared=shared, stream=self.stream)
        if (len(b.shapes) - 1 - last) % 2:  # the levels' flows alternate between the two pairs of planes
            flow, spare = spare, flow
        return last, flow, spare

    def _launch_pyramid(self, b: _Buffers) -> None:
        """Levels 1.. of both images from level 0, one launch per level."""
        i32, f32 = np.int32, np.float32
        for (sh, sw), (dh, dw), src, dst in zip(b.shapes, b.shapes[1:], b.levels, b.levels[1:]):
            self.k["tvl1_downsample"](src, i32(sw), i32(sh), i32(sh * sw), dst, i32(dw), i32(dh), i32(dh * dw),
                                      f32(1.0 / self.params.scale_step), block=(TILE, TILE, 1),
                                      grid=_grid(dw, dh, 2), stream=self.stream)

    def _launch_level(self, b: _Buffers, level: int, flow: tuple[Any, Any], spare: tuple[Any, Any],
                      layout: str) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """One level: the coarser level's flow upsampled (or zeros at the coarsest), the second image's
        gradient, then ``warps`` times the warp and the solve in ``layout``; (the flow's planes, the spare)."""
        k, s, p, q = self.k, self.stream, self.params, b.planes
        i32, f32 = np.int32, np.float32
        h, w = b.shapes[level]
        n = h * w
        i0 = int(b.levels[level])
        i1 = i0 + 4 * n
        stride = i32(2 * n)
        if level == len(b.shapes) - 1:
            self.drv.memset_d32_async(flow[0], 0, n, s)
            self.drv.memset_d32_async(flow[1], 0, n, s)
        else:
            ch, cw = b.shapes[level + 1]
            k["tvl1_upsample_flow"](flow[0], flow[1], i32(cw), i32(ch), i32(2 * ch * cw), spare[0], spare[1],
                                    i32(w), i32(h), stride, f32(1.0 / p.scale_step),
                                    block=(TILE, TILE, 1), grid=_grid(w, h), stream=s)
            flow, spare = spare, flow
        grid = _grid(w, h)
        k["tvl1_centered_gradient"](np.uintp(i1), i32(w), i32(h), stride, q["gx"], q["gy"],
                                    block=(TILE, TILE, 1), grid=grid, stream=s)
        solve = self._solve_bands if layout == "bands" else self._solve_block
        common = (q["i1wx"], q["i1wy"], q["igrad"], q["rho_c"], i32(w), i32(h), stride, f32(p.lambda_ * p.theta),
                  f32(p.theta), f32(p.tau / p.theta), f32(self._stop(n)), i32(p.outer_iterations),
                  i32(p.inner_iterations), i32(p.median_filtering))
        for warp in range(p.warps):
            k["tvl1_warp"](np.uintp(i0), np.uintp(i1), q["gx"], q["gy"], flow[0], flow[1], i32(w), i32(h),
                           stride, q["i1wx"], q["i1wy"], q["igrad"], q["rho_c"],
                           block=(TILE, TILE, 1), grid=grid, stream=s)
            solve(b, flow, common, w, h, warp == 0)
        return flow, spare

    def _solve_block(self, b: _Buffers, flow: tuple[Any, Any], common: tuple[Any, ...], w: int, h: int,
                     first: bool) -> None:
        """One warp's iterations in one thread block (``__syncthreads`` between phases)."""
        q = b.planes
        self.k["tvl1_solve"](flow[0], flow[1], q["p11"], q["p12"], q["p21"], q["p22"], q["tmp1"], q["tmp2"], *common,
                             np.int32(first), np.int32(1), self._barrier, self._partials,
                             block=(self._threads["block"], 1, 1), grid=(1, 1, 1), stream=self.stream)

    def _solve_bands(self, b: _Buffers, flow: tuple[Any, Any], common: tuple[Any, ...], w: int, h: int,
                     first: bool) -> None:
        """One warp's iterations over up to one block per multiprocessor, each a band of rows, one grid barrier
        per iteration (tmp1, tmp2: the flow's second buffers)."""
        q = b.planes
        threads = self._threads["bands"]
        parts = max(1, min(self.multiprocessors, -(-(w * h) // threads)))
        rows = -(-h // parts)
        parts = -(-h // rows)
        self.k["tvl1_solve_bands"](flow[0], flow[1], q["tmp1"], q["tmp2"], q["p11"], q["p12"], q["p21"], q["p22"],
                                   q["q11"], q["q12"], q["q21"], q["q22"], b.halo, *common, np.int32(first),
                                   np.int32(rows), self._barrier, self._partials, block=(threads, 1, 1),
                                   grid=(parts, 1, 1), stream=self.stream)

    def _replay(self, key: tuple[Any, ...], launches: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        """Run ``launches`` (which returns where they leave the flow) from the graph captured for ``key`` the
        first time, or directly when graphs are off or this layout cannot be captured."""
        if not self.use_graphs:
            return launches()
        key = (*key, self.solver, tuple(sorted(self._threads.items())))
        if key not in self._graphs:
            if key[0] == "stage" and sum(k[0] == "stage" for k in self._graphs) >= STAGE_GRAPHS:
                del self._graphs[next(k for k in self._graphs if k[0] == "stage")]  # the oldest
            try:
                self._graphs[key] = capture(self.drv, self.stream, launches)
            except (GraphError, self.drv.Error) as exc:
                self._graphs[key] = None
                self._graph_notes[self.solver] = f"no CUDA graph ({_first_line(exc)}): one launch per kernel"
        held = self._graphs[key]
        if held is None:
            return launches()
        graph, flow = held
        try:
            graph.launch(self.stream)
        except GraphError as exc:
            raise UserError(f"the CUDA flow stage's {self.solver} layout did not launch: {_first_line(exc)}") from None
        return flow

    def _settle(self) -> None:
        """Wait for a write(sync=False) still in flight and check its barriers (nothing to do otherwise)."""
        if self._pending:
            self.stream.synchronize()
            self._pending = False
            self._check_barrier()

    def _fetch_barrier_flag(self) -> None:
        """Queue the copy of the grid barrier's gave-up word behind the solve, so that checking it after the
        call's own synchronise costs no extra round trip."""
        if self.solver != "block":  # a plain int address: pycuda takes no numpy ints here
            self.drv.memcpy_dtoh_async(self._gave_up, int(self._barrier) + 8, self.stream)

    def _check_barrier(self) -> None:
        """After a synchronise: raise when the grid solve's barrier gave up waiting (results are wrong)."""
        if self.solver != "block" and self._gave_up[0]:
            self._gave_up[0] = 0
            self.drv.memset_d32(self._barrier, 0, 3)
            raise UserError("the grid flow solve gave up waiting for one of its blocks (the GPU is shared?); "
                            "use the block solver")

    def _pre(self, b: _Buffers, staged: Any) -> None:
        """Both face crops into the finest level, from what _stage_pair put in ``staged``."""
        self.k["tvl1_pre"](staged, np.int32(self.size), b.levels[0], block=(TILE, TILE, 1),
                           grid=_grid(self.size, self.size, 2), stream=self.stream)

    def _epilogue(self, b: _Buffers, flow: tuple[Any, Any], motion: Any, texture: Any) -> None:
        size = self.size
        apex = np.uintp(int(b.levels[0]) + 4 * size * size)
        self.k["tvl1_epilogue"](flow[0], flow[1], apex, np.int32(size), np.int32(2 * size * size),
               np.float32(112.0 / size / FLOW_UNIT), np.float32(1.0 / STRAIN_UNIT), np.float32(CLIP),
               np.float32(TEXTURE_MEAN), np.float32(TEXTURE_STD), motion, texture,
               block=(TILE, TILE, 1), grid=_grid(size, size), stream=self.stream)

    # -- the stage ---------------------------------------------------------------------------------

    def self_check(self, tolerance_px: float = 0.05) -> str | None:
        """Run one face pair through the GPU and the numpy reference; None when they agree, else why not.

        ``edge-mer run --flow auto`` calls this before it trusts the GPU with a camera loop.
        """
        from edge_mer.flow.pairs import micro_pairs  # face photos: loaded only when checked

        pair = micro_pairs(self.size, peaks=(1.0,))[0]
        try:
            got = self.flow(pair.first, pair.second)
        except Exception as exc:  # a driver or launch error: any of pycuda's, reported in one line
            return f"the CUDA flow failed its self-check: {type(exc).__name__}: {_first_line(exc)}"
        diff = float(np.linalg.norm(got - tvl1(pair.first, pair.second), axis=2).mean())
        if not diff < tolerance_px:
            return f"the CUDA flow differs from the reference by {diff:.3f} px on average (tolerance {tolerance_px})"
        return None

    def _launch(self, key: tuple[Any, ...], dst: Any, host: np.ndarray, launches: Callable[[], tuple[Any, Any]],
                after: Callable[[tuple[Any, Any]], None] | None = None, sync: bool = True) -> float:
        """The one sequence of every call (context pushed, an earlier call settled): copy ``host`` into ``dst``,
        run ``launches`` (from their graph), queue ``after(flow)`` (copies back), then synchronise and check
        the barriers, or leave that to the next call when not ``sync``. GPU milliseconds from the copy to the
        end of the launches (CUDA events), or NaN."""
        self.start.record(self.stream)  # the host's copies into page-locked memory are done by now
        self.drv.memcpy_htod_async(dst, host, self.stream)  # asynchronous: the host side is page-locked
        flow = self._replay(key, launches)
        self.end.record(self.stream)
        self._fetch_barrier_flag()
        if after is not None:
            after(flow)
        if not sync:
            self._pending = True
            return float("nan")
        self.stream.synchronize()
        self._check_barrier()
        self.last_ms = self.end.time_since(self.start)
        return self.last_ms

    def write(self, onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray, motion_ptr: int, texture_ptr: int,
              sync: bool = True) -> float:
        """Crop, flow and normalise straight into device buffers (a TensorRT backend's ``device_inputs()``):
        motion (3, S, S) and texture (1, S, S), float32 (the engines' inputs, as exported). GPU milliseconds when
        ``sync`` (CUDA events from the copy of the frames' face windows, once the host has put them in
        page-locked memory, to the end of the epilogue), else NaN (the caller orders later work on
        ``self.stream``; the next call of the stage checks that this one's grid barriers did not give up)."""
        self.ctx.push()
        try:
            self._settle()  # before the staging buffer is filled again
            staged, host = self._stage_pair(onset, apex, matrix)
            b = self._buffers_for((self.size, self.size))
            motion, texture = np.uintp(motion_ptr), np.uintp(texture_ptr)

            def launches() -> tuple[Any, Any]:
                self._pre(b, staged)
                flow = self._pyramid_and_solve(b)
                self._epilogue(b, flow, motion, texture)
                return flow

            return self._launch(("stage", int(staged), int(motion_ptr), int(texture_ptr)), staged, host, launches,
                                sync=sync)
        finally:
            self.ctx.pop()

    def __call__(self, onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.options != MotionOptions():  # flow finer or without the head's motion: the host finishes it
            return super().__call__(onset, apex, matrix)
        self.write(onset, apex, matrix, int(self._dmotion), int(self._dtexture), sync=False)
        self.ctx.push()
        try:
            self.drv.memcpy_dtoh_async(self._motion, self._dmotion, self.stream)
            self.drv.memcpy_dtoh_async(self._texture, self._dtexture, self.stream)
            self._settle()
            self.last_ms = self.end.time_since(self.start)
        finally:
            self.ctx.pop()
        return self._motion.copy(), self._texture.copy()

    def crop(self, frame: np.ndarray, matrix: np.ndarray, size: int | None = None) -> np.ndarray:
        """(S, S) uint8 grey crop as the GPU makes it (``reference.crop_gray``)."""
        return crop_gray(to_gray(frame), np.asarray(matrix, np.float64), size or self.size).astype(np.uint8)

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(H, W, 2) float32 raw flow between two grey images of one size (no crop), on the GPU."""
        if first.shape != second.shape or first.ndim != 2:
            raise ValueError(f"expected two grey images of one size, got {first.shape} and {second.shape}")
        h, w = first.shape
        pair = np.ascontiguousarray(np.stack([to_float(first), to_float(second)]))
        out = np.empty((2, h, w), np.float32)
        def copy_back(flow: tuple[Any, Any]) -> None:
            self.drv.memcpy_dtoh_async(out[0], flow[0], self.stream)
            self.drv.memcpy_dtoh_async(out[1], flow[1], self.stream)

        self.ctx.push()
        try:
            self._settle()
            b = self._buffers_for((h, w))
            self._launch(("flow", b.shapes[0]), b.levels[0], pair, lambda: self._pyramid_and_solve(b), copy_back)
        finally:
            self.ctx.pop()
        return np.ascontiguousarray(out.transpose(1, 2, 0))
