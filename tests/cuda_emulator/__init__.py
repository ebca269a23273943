"""A CPU stand-in for the part of ``pycuda.driver`` the CUDA flow stage uses.

The tests' tooling, not part of the package: ``CudaStage(size, runtime=cuda_emulator)``
(``tests/`` on ``sys.path``, as pytest puts it) then compiles ``edge_mer/flow/kernels/tvl1.cu``
itself with the host C++ compiler (``g++``, with ``emulate.h`` here supplying
threads, blocks, per-block shared memory, ``__syncthreads``, warp shuffles, atomics and
``__nanosleep`` as fibers on one OS thread, every block of a launch resident at once, so
the kernels' own grid barrier runs as written; a launch of a cluster kernel is one
thread block cluster, with the cluster barrier and each block's dynamic shared memory
mapped into the others', as on compute capability 9.0, and this folder's ``tvl1_gpu.h``
standing in for the kernels' GPU instructions) and runs every launch of the host driver
on the CPU; a stream being captured records its launches into a graph that ``launch``
replays. That checks, without a GPU, what a GPU check would find first: that the kernels
implement the numpy reference, that the driver's launches (grids, strides, offsets,
argument types) fit the kernels, that no kernel reads or writes past a buffer (each
allocation ends at a guard page) or reads what nobody wrote (fresh memory is NaN), and
that results do not depend on the order threads run between two barriers (``schedule``).

It is a checking tool, about half a second per pair at S = 112; it says nothing about
speed, and float results can differ from a GPU's in the last bits (the GPU contracts
multiply-adds).

Stricter than pycuda where pycuda would silently pass wrong bits: every kernel
argument must have the parameter's kind (``numpy.int32`` for ``int``, ``numpy.float32``
for ``float``, a device allocation or ``numpy.uintp`` inside a live allocation for a
pointer), copies and memsets take an allocation or a Python int, copies are refused
while a stream captures, and a block larger than ``max_threads_per_block``, more than
48 KB of dynamic shared memory without ``set_attribute`` raising the limit fails as on
a GPU; so does a cluster kernel's grid that is not one cluster (a GPU would run several,
the emulator runs one).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

MAX_THREADS_PER_BLOCK = 1024  # what get_function reports, as on a GPU for a kernel with few registers
# per kernel: what a kernel with many registers reports instead (on a GPU ptxas decides; here it
# sets the block of the driver's one-block solve, and with it how long the emulation takes)
THREAD_LIMITS: dict[str, int] = {"tvl1_solve": 128, "tvl1_solve_bands": 128, "tvl1_levels_cluster": 128,
                                  "tvl1_levels_cluster16": 128}
PORTABLE_CLUSTER = 8  # blocks per cluster a GPU launches without the non-portable attribute
STATIC_SHARED_LIMIT = 48 * 1024  # static + dynamic shared memory of a block before set_attribute raises it
SHARED_OPTIN = 227 * 1024  # a block's shared memory when raised (an H100's figure)
_schedule = 0  # 0: threads resume in order, 1: reverse, other: shuffled with this seed


class Error(Exception):
    """A driver error (pycuda.driver.Error)."""


class CompileError(Error):
    """The kernel source does not compile (pycuda.driver.CompileError)."""


class LaunchError(Error):
    """A launch that a GPU would refuse, or a kernel that broke CUDA's rules while running."""


@contextlib.contextmanager
def schedule(order: int) -> Iterator[None]:
    """Launches run and resume their threads in this order: 0 forward, 1 reverse, else shuffled (seeded)."""
    global _schedule
    before, _schedule = _schedule, int(order)
    try:
        yield
    finally:
        _schedule = before


# -- memory ------------------------------------------------------------------------------------

_LIB: ctypes.CDLL | None = None  # the last compiled module; allocation lives in every one of them
_live: dict[int, int] = {}  # address -> bytes of every live allocation


def _runtime() -> ctypes.CDLL:
    return _LIB if _LIB is not None else SourceModule("").lib


class DeviceAllocation:
    """Device memory: page-guarded host memory; ``int()`` gives its address."""

    def __init__(self, nbytes: int) -> None:
        self.lib = _runtime()
        self.nbytes = int(nbytes)
        self.ptr = int(self.lib.emu_alloc(ctypes.c_size_t(max(self.nbytes, 1))))
        if not self.ptr:
            raise Error(f"out of memory allocating {nbytes} bytes")
        _live[self.ptr] = self.nbytes

    def __int__(self) -> int:
        return self.ptr

    __index__ = __int__

    def free(self) -> None:
        if self.ptr:
            _live.pop(self.ptr, None)
            self.lib.emu_free(ctypes.c_void_p(self.ptr), ctypes.c_size_t(max(self.nbytes, 1)))
            self.ptr = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the library may be gone first
            self.free()


def _check_range(address: int, nbytes: int, what: str) -> None:
    for start, size in _live.items():
        if start <= address and address + nbytes <= start + size:
            return
    raise LaunchError(f"{what}: {nbytes} bytes at {address:#x} are not inside one live allocation")


def _address(value: Any, what: str) -> int:
    """A device address as pycuda's copy and memset functions take it: an allocation or a Python int."""
    if isinstance(value, DeviceAllocation) or type(value) is int:
        return int(value)
    raise Error(f"{what}: a device address must be a DeviceAllocation or a Python int, got {type(value).__name__}")


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    return np.empty(shape, dtype)


def _host(array: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise Error(f"{what}: host memory must be a C-contiguous numpy array")
    return array


def _not_capturing(what: str) -> None:
    if _recording is not None:
        raise Error(f"{what}: operation not permitted when stream is capturing")


def memcpy_htod(dst: Any, src: np.ndarray) -> None:
    _not_capturing("memcpy_htod")
    src = _host(np.asarray(src), "memcpy_htod")
    address = _address(dst, "memcpy_htod")
    _check_range(address, src.nbytes, "memcpy_htod")
    ctypes.memmove(address, src.ctypes.data, src.nbytes)


def memcpy_dtoh(dst: np.ndarray, src: Any) -> None:
    _not_capturing("memcpy_dtoh")
    dst = _host(dst, "memcpy_dtoh")
    address = _address(src, "memcpy_dtoh")
    _check_range(address, dst.nbytes, "memcpy_dtoh")
    ctypes.memmove(dst.ctypes.data, address, dst.nbytes)


def memset_d32(dst: Any, value: int, count: int) -> None:
    _not_capturing("memset_d32")
    _memset(_address(dst, "memset_d32"), value, count)


def _memset(address: int, value: int, count: int) -> None:
    _check_range(address, 4 * count, "memset_d32")
    words = np.full(count, value, np.uint32)  # held: memmove reads it after .ctypes.data is taken
    ctypes.memmove(address, words.ctypes.data, words.nbytes)


def memcpy_htod_async(dst: Any, src: np.ndarray, stream: Any = None) -> None:
    memcpy_htod(dst, src)


def memcpy_dtoh_async(dst: np.ndarray, src: Any, stream: Any = None) -> None:
    memcpy_dtoh(dst, src)


def memset_d32_async(dst: Any, value: int, count: int, stream: Any = None) -> None:
    address = _address(dst, "memset_d32_async")
    _enqueue(lambda: _memset(address, value, count))


# -- graphs: what a stream does while capturing is recorded, and replayed by launch() ---------------

_recording: list[Callable[[], None]] | None = None


def _enqueue(step: Callable[[], None]) -> None:
    if _recording is not None:
        _recording.append(step)
    else:
        step()


class RecordedGraph:
    """The launches and memsets made on a stream while it was capturing, in order."""

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps

    def launch(self, stream: Any = None) -> None:
        _not_capturing("graph launch")
        for step in self.steps:
            step()


def capture_graph(stream: Any, record: Callable[[], T]) -> tuple[RecordedGraph, T]:
    """What ``edge_mer.flow.graphs.capture`` does on a GPU: nothing runs until the graph is launched."""
    global _recording
    if _recording is not None:
        raise Error("a stream is already capturing")
    _recording = []
    try:
        result = record()
        steps = _recording
    finally:
        _recording = None
    return RecordedGraph(steps), result


# -- device, context, stream, events (everything runs at once, in order) ----------------------------

def init() -> None:
    """Nothing to initialise."""


class Context:
    def push(self) -> None:
        """Contexts are not emulated: one address space."""

    def pop(self) -> None:
        """See push."""


class device_attribute:  # pycuda's names
    MULTIPROCESSOR_COUNT = "MULTIPROCESSOR_COUNT"
    MAX_THREADS_PER_BLOCK = "MAX_THREADS_PER_BLOCK"
    COMPUTE_CAPABILITY_MAJOR = "COMPUTE_CAPABILITY_MAJOR"
    COMPUTE_CAPABILITY_MINOR = "COMPUTE_CAPABILITY_MINOR"
    MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"


class function_attribute:  # pycuda's name
    MAX_DYNAMIC_SHARED_SIZE_BYTES = "MAX_DYNAMIC_SHARED_SIZE_BYTES"
    NON_PORTABLE_CLUSTER_SIZE_ALLOWED = "NON_PORTABLE_CLUSTER_SIZE_ALLOWED"  # not in pycuda 2026.1's enum


ATTRIBUTES = {device_attribute.MULTIPROCESSOR_COUNT: 4,  # the grid solve: up to 4 blocks (each one a fiber set)
              device_attribute.MAX_THREADS_PER_BLOCK: 1024,
              device_attribute.COMPUTE_CAPABILITY_MAJOR: 9,  # thread block clusters, as on Hopper
              device_attribute.COMPUTE_CAPABILITY_MINOR: 0,
              device_attribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: SHARED_OPTIN}


class Device:
    def __init__(self, ordinal: int) -> None:
        if ordinal != 0:
            raise Error(f"invalid device ordinal {ordinal}: the emulator is device 0")

    def get_attribute(self, attribute: str) -> int:
        return ATTRIBUTES[attribute]

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return "CPU emulator (tests/cuda_emulator)"

    def retain_primary_context(self) -> Context:
        return Context()


class Stream:
    def __init__(self, flags: int = 0) -> None:
        self.flags = flags

    def synchronize(self) -> None:
        """Launches run to completion when made."""


class Event:
    def __init__(self) -> None:
        self.t = 0.0

    def record(self, stream: Stream | None = None) -> Event:
        self.t = time.perf_counter()
        return self

    def synchronize(self) -> None:
        """Recorded at once."""

    def time_since(self, start: Event) -> float:
        """CPU milliseconds of the emulation: not a GPU time."""
        return (self.t - start.t) * 1e3


# -- compiling and launching ------------------------------------------------------------------

# a kernel's name and parameters; a cluster kernel carries TVL1_CLUSTER_DIMS(blocks) before its name
_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:TVL1_CLUSTER_DIMS\((\w+)\)\s+)?(\w+)\s*\(([^)]*)\)')


def _parameters(text: str) -> list[tuple[str, str]]:
    """[(C type without __restrict__, kind: 'pointer' | 'int' | 'float')] of a kernel's parameter list."""
    out = []
    for raw in (p.strip() for p in text.split(",") if p.strip()):
        named = re.fullmatch(r"(.*?)\s*\b(\w+)", re.sub(r"\b__restrict__\b", " ", raw).strip(), re.S)
        if named is None:
            raise CompileError(f"the emulator cannot read the kernel parameter {raw!r}")
        ctype = re.sub(r"\s+", " ", named.group(1)).strip()
        if "*" in ctype:
            kind = "pointer"
        elif ctype in ("int", "unsigned", "unsigned int"):
            kind = "int"
        elif ctype == "float":
            kind = "float"
        else:
            raise CompileError(f"the emulator cannot pass a kernel parameter of type {ctype!r}")
        out.append((ctype, kind))
    return out


def _wrappers(kernels: dict[str, list[tuple[str, str]]]) -> str:
    """C++ entry points emu_launch_<kernel>(grid, block, order, args) for every kernel."""
    parts = []
    for name, params in kernels.items():
        unpack = "".join(f"    auto a{i} = *reinterpret_cast<{t}*>(args[{i}]);\n" for i, (t, _) in enumerate(params))
        call = ", ".join(f"a{i}" for i in range(len(params)))
        parts.append(f'extern "C" int emu_launch_{name}(const unsigned* grid, const unsigned* block, '
                     f"size_t shared, unsigned order, void** args) {{\n{unpack}"
                     f"    return ::emu::launch(grid, block, shared, order, [&] {{ {name}({call}); }});\n}}\n")
    return "\n".join(parts)


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "edge-mer" / "cuda-emulator"


class Function:
    """A kernel; called like pycuda's: ``f(*args, block=(x, y, z), grid=(x, y[, z]), stream=s, shared=bytes)``.

    A cluster kernel (``cluster``: its blocks per cluster) launches as exactly one cluster here.
    """

    def __init__(self, lib: ctypes.CDLL, name: str, params: list[tuple[str, str]], cluster: int = 0) -> None:
        self.name, self.params, self.cluster = name, params, cluster
        self.entry = getattr(lib, f"emu_launch_{name}")
        self.entry.restype = ctypes.c_int
        self.entry.argtypes = [ctypes.POINTER(ctypes.c_uint)] * 2 + [ctypes.c_size_t, ctypes.c_uint,
                                                                     ctypes.POINTER(ctypes.c_void_p)]
        self.lib = lib
        self.max_threads_per_block = THREAD_LIMITS.get(name, MAX_THREADS_PER_BLOCK)
        # the module's static shared memory stands in for the kernel's own (pycuda's shared_size_bytes)
        self.shared_size_bytes = int(lib.emu_static_shared())
        self.max_dynamic_shared = STATIC_SHARED_LIMIT - self.shared_size_bytes
        self.non_portable = False  # a cluster of more than PORTABLE_CLUSTER blocks needs it set

    def set_attribute(self, attribute: str, value: int) -> None:
        """pycuda's ``Function.set_attribute``: the dynamic shared memory limit and the non-portable
        cluster size are emulated."""
        if attribute == function_attribute.NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
            self.non_portable = bool(value)
            return
        if attribute != function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES:
            raise Error(f"{self.name}: the emulator does not model the function attribute {attribute}")
        most = SHARED_OPTIN - self.shared_size_bytes
        if not 0 <= int(value) <= most:
            raise Error(f"{self.name}: invalid argument (at most {most} bytes of dynamic shared memory: "
                        f"{SHARED_OPTIN} less {self.shared_size_bytes} of static)")
        self.max_dynamic_shared = int(value)

    def _argument(self, i: int, value: Any, kind: str) -> ctypes._SimpleCData:
        where = f"{self.name}: argument {i + 1} ({self.params[i][0]})"
        if kind == "pointer":
            if not isinstance(value, (DeviceAllocation, np.uintp, np.intp)):
                raise LaunchError(f"{where} must be a device allocation or numpy.uintp, got {type(value).__name__}")
            _check_range(int(value), 1, where)
            return ctypes.c_void_p(int(value))
        if kind == "int":
            if not isinstance(value, (np.int32, np.uint32)):
                raise LaunchError(f"{where} must be numpy.int32, got {type(value).__name__}")
            return ctypes.c_int32(int(value))
        if not isinstance(value, np.float32):
            raise LaunchError(f"{where} must be numpy.float32, got {type(value).__name__}")
        return ctypes.c_float(float(value))

    def __call__(self, *args: Any, block: tuple[int, ...], grid: tuple[int, ...] = (1, 1), stream: Any = None,
                 shared: int = 0) -> None:
        if len(args) != len(self.params):
            raise LaunchError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        b = (*block, 1, 1)[:3]
        g = (*grid, 1, 1)[:3]
        threads = b[0] * b[1] * b[2]
        if not 0 < threads <= self.max_threads_per_block or b[2] > 64 or min(g) < 1:
            raise LaunchError(f"{self.name}: block {b} / grid {g} cannot launch "
                              f"(at most {self.max_threads_per_block} threads per block here)")
        if not 0 <= shared <= self.max_dynamic_shared:
            raise LaunchError(f"{self.name}: too many resources requested for launch ({shared} bytes of dynamic "
                              f"shared memory, {self.max_dynamic_shared} allowed)")
        if self.cluster > PORTABLE_CLUSTER and not self.non_portable:
            raise LaunchError(f"{self.name}: cluster misconfiguration ({self.cluster} blocks per cluster without "
                              "the non-portable cluster size attribute)")
        if self.cluster and g != (self.cluster, 1, 1):
            raise LaunchError(f"{self.name}: a cluster kernel launches as one cluster of {self.cluster} blocks "
                              f"here, not grid {g}")
        values = [self._argument(i, a, kind) for i, (a, (_, kind)) in enumerate(zip(args, self.params))]
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values))
        grid_dims, block_dims = (ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b)

        def run(held: list[Any] = values) -> None:  # held: pointers points into these
            if self.entry(grid_dims, block_dims, shared, _schedule, pointers) != 0:
                raise LaunchError(f"{self.name}: {self.lib.emu_error().decode()}")

        _enqueue(run)


class SourceModule:
    """Compiles CUDA source (with ``extern "C"`` entry points) for the CPU; ``get_function`` like pycuda's."""

    def __init__(self, source: str, no_extern_c: bool = False, options: list[str] | None = None,
                 **_: Any) -> None:
        global _LIB
        if not no_extern_c and source.strip():
            raise CompileError("the emulator needs the entry points declared extern \"C\" (no_extern_c=True)")
        self.kernels = {m.group(2): _parameters(m.group(3)) for m in _SIGNATURE.finditer(source)}
        # per cluster kernel: its blocks per cluster, a number or a #define of the source
        defines = dict(re.findall(r"^#define\s+(\w+)\s+(\d+)\b", source, re.MULTILINE))
        self.clusters = {m.group(2): int(defines.get(m.group(1)) or m.group(1))
                         for m in _SIGNATURE.finditer(source) if m.group(1)}
        here = Path(__file__).parent
        prelude = (here / "emulate.h").read_text()
        primitives = (here / "tvl1_gpu.h").read_text()
        text = source + "\n\n// ---- launch entry points (tests/cuda_emulator) ----\n" + _wrappers(self.kernels)
        self.lib = self._build(prelude, primitives, text)
        self.lib.emu_alloc.restype = ctypes.c_size_t
        self.lib.emu_alloc.argtypes = [ctypes.c_size_t]
        self.lib.emu_free.restype = None
        self.lib.emu_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.lib.emu_error.restype = ctypes.c_char_p
        self.lib.emu_static_shared.restype = ctypes.c_size_t
        _LIB = self.lib

    # no _FORTIFY_SOURCE: its longjmp check refuses the jumps between fiber stacks that emulate.h makes
    FLAGS = ("-std=c++17", "-O2", "-U_FORTIFY_SOURCE", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas",
             "-Wno-unused-function")

    @classmethod
    def _build(cls, prelude: str, primitives: str, text: str) -> ctypes.CDLL:
        compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        if compiler is None:
            raise CompileError("the CUDA emulator needs a C++ compiler (g++) on PATH")
        key = hashlib.sha256("\0".join((compiler, *cls.FLAGS, prelude, primitives, text)).encode()).hexdigest()[:20]
        cache = _cache_dir()
        target = cache / f"{key}.so"
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                (work / "emulate.h").write_text(prelude)
                (work / "tvl1_gpu.h").write_text(primitives)  # found before the GPU's by #include "tvl1_gpu.h"
                (work / "kernels.cpp").write_text(text)
                built = work / "kernels.so"
                proc = subprocess.run([compiler, *cls.FLAGS, "-I", str(work), "-include", str(work / "emulate.h"),
                                       str(work / "kernels.cpp"), "-o", str(built)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise CompileError("the kernels do not compile for the CPU emulator:\n" + proc.stderr[-4000:])
                partial = cache / f"{key}.{os.getpid()}.tmp"
                shutil.copyfile(built, partial)
                partial.replace(target)  # atomic: parallel test workers never load a half-written file
        return ctypes.CDLL(str(target))

    def get_function(self, name: str) -> Function:
        if name not in self.kernels:
            raise Error(f"named symbol not found: {name}")
        return Function(self.lib, name, self.kernels[name], self.clusters.get(name, 0))
