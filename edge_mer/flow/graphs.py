"""CUDA graphs for the flow stage: a pair's pyramid and solve, about 60 kernel launches,
captured once per image shape and replayed with one launch.

From Python every launch costs tens of microseconds of CPU time (pycuda packs the
arguments on every call), more than most of these kernels take on the GPU, so without
a graph the GPU waits for the CPU and a pair costs what its launches cost. The sequence
depends only on the image shape (buffers, sizes and parameters are fixed per shape; the
iteration counts are decided on the device), so it is captured from the stream the
first time a shape is seen and replayed after that.

pycuda has no graph API; the capture goes through the CUDA driver library with ctypes
on the stream's handle (CUDA 11.4 or newer, as on JetPack 5). A runtime that offers
``capture_graph`` (the CPU emulator) records the launches itself.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

CAPTURE_MODE_THREAD_LOCAL = 1  # CUstreamCaptureMode: other threads' CUDA calls are not affected


class Graph(Protocol):
    def launch(self, stream: Any) -> None: ...


class GraphError(RuntimeError):
    """The driver refused to capture, instantiate or launch a graph (the caller launches directly instead)."""


class _Driver:
    """The few CUDA driver entry points graphs need, from libcuda."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise GraphError(f"libcuda.so.1 cannot be loaded: {exc}") from None
        voidp, pvoidp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        try:
            begin = getattr(lib, "cuStreamBeginCapture_v2", None) or lib.cuStreamBeginCapture
            self.entries: dict[str, Any] = {
                "cuStreamBeginCapture": (begin, [voidp, ctypes.c_int]),
                "cuStreamEndCapture": (lib.cuStreamEndCapture, [voidp, pvoidp]),
                "cuGraphInstantiateWithFlags": (lib.cuGraphInstantiateWithFlags, [pvoidp, voidp, ctypes.c_ulonglong]),
                "cuGraphLaunch": (lib.cuGraphLaunch, [voidp, voidp]),
                "cuGraphDestroy": (lib.cuGraphDestroy, [voidp]),
                "cuGraphExecDestroy": (lib.cuGraphExecDestroy, [voidp]),
            }
        except AttributeError as exc:  # a driver older than CUDA 11.4
            raise GraphError(f"this CUDA driver lacks a graph entry point: {exc}") from None
        for fn, argtypes in self.entries.values():
            fn.argtypes, fn.restype = argtypes, ctypes.c_int

    def __call__(self, name: str, *args: Any) -> None:
        rc = self.entries[name][0](*args)
        if rc != 0:
            raise GraphError(f"{name} failed with CUDA error {rc}")


_DRIVER: _Driver | None = None


class _DriverGraph:
    """An instantiated graph (CUgraphExec), destroyed with its owner."""

    def __init__(self, driver: _Driver, graph_exec: ctypes.c_void_p) -> None:
        self.driver, self.exec = driver, graph_exec

    def launch(self, stream: Any) -> None:
        self.driver("cuGraphLaunch", self.exec, ctypes.c_void_p(stream.handle))

    def __del__(self) -> None:
        if self.exec:
            self.driver.entries["cuGraphExecDestroy"][0](self.exec)
            self.exec = ctypes.c_void_p()


def capture(drv: Any, stream: Any, record: Callable[[], T]) -> tuple[Graph, T]:
    """Run ``record`` (which launches work on ``stream``) under capture: the graph, and what it returned.

    Nothing runs while capturing; launch the graph to run it. The stream's context must
    be current.
    """
    if hasattr(drv, "capture_graph"):
        return drv.capture_graph(stream, record)
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = _Driver()
    d = _DRIVER
    handle = ctypes.c_void_p(stream.handle)
    d("cuStreamBeginCapture", handle, CAPTURE_MODE_THREAD_LOCAL)
    graph = ctypes.c_void_p()
    try:
        result = record()
    except BaseException:
        d.entries["cuStreamEndCapture"][0](handle, ctypes.byref(graph))  # end it; the first error is the one
        if graph:
            d.entries["cuGraphDestroy"][0](graph)
        raise
    d("cuStreamEndCapture", handle, ctypes.byref(graph))
    try:
        graph_exec = ctypes.c_void_p()
        d("cuGraphInstantiateWithFlags", ctypes.byref(graph_exec), graph, 0)
    finally:
        d("cuGraphDestroy", graph)
    return _DriverGraph(d, graph_exec), result
