"""The CPU emulator of the CUDA flow stage: it must find what it claims to find.

tests/test_flow_cuda.py holds the kernels against the reference through it; here the
kernels' results must not depend on the order threads run between barriers, and the
emulator itself must catch a race, a divergent barrier, a wrong argument, a stray
pointer and a write past the end of a buffer, each with a clear message.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cuda_emulator as emulate
import numpy as np
import pytest

from edge_mer.errors import UserError
from edge_mer.flow.cuda import SOLVERS, CudaStage, kernel_source
from edge_mer.flow.pairs import in_frames, micro_pairs
from edge_mer.flow.reference import tvl1

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="the CUDA emulator needs a C++ compiler (g++)")

# kernels that break CUDA's rules on purpose, one module for all of them (clusters from tvl1_gpu.h, as tvl1.cu)
BROKEN = r"""
#include "tvl1_gpu.h"
extern "C" __global__ void racy(float* x, int n) {
    // reads a neighbour that another thread writes in the same phase: no barrier between
    int i = threadIdx.x;
    if (i < n) x[i] = x[(i + 1) % n] + 1.0f;
}
extern "C" __global__ void divergent(float* x) {
    if (threadIdx.x < 16) __syncthreads();  // half the block never reaches the barrier
    x[threadIdx.x] = 1.0f;
}
extern "C" __global__ void fill(float* x, int n, float value) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) x[i] = value;  // one past the end when the grid covers n + 1 threads
}
#define TVL1_CLUSTER 2
// each block of a 2-block cluster reads the other's shared memory, after the cluster barrier or not
extern "C" __global__ void TVL1_CLUSTER_DIMS(TVL1_CLUSTER) neighbour(float* out, int synced) {
    float* mine = dynamic_shared();
    mine[threadIdx.x] = blockIdx.x * 100.0f + threadIdx.x;
    if (synced) cluster_sync();
    out[blockIdx.x * blockDim.x + threadIdx.x] = cluster_map(mine, (blockIdx.x + 1) % 2)[threadIdx.x];
    cluster_sync();  // no block leaves while the other may still read its shared memory
}
extern "C" __global__ void TVL1_CLUSTER_DIMS(TVL1_CLUSTER) early_exit(float* out, int offset) {
    // block 1 reads block 0's shared memory (at an offset from its start) with no barrier
    // keeping block 0 alive: run forward, block 0 has ended by then
    float* mine = dynamic_shared();
    mine[threadIdx.x] = 1.0f;
    cluster_sync();
    if (blockIdx.x == 1) out[threadIdx.x] = cluster_map(mine, 0)[(int)threadIdx.x + offset];
}
extern "C" __global__ void TVL1_CLUSTER_DIMS(2) stray_map(float* out) {
    float local[1] = {0.0f};
    out[0] = *cluster_map(local, 1);  // not shared memory at all
}
extern "C" __global__ void warp_sum(float* x) {
    float v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) x[threadIdx.x] = v;
}
"""


def _faults_after(code: str, marker: str) -> None:
    """``code`` (a Python program) prints ``marker`` after its legal accesses, then dies of SIGSEGV at the
    stray one before it can print that it went unnoticed."""
    tests = str(Path(__file__).resolve().parent)  # where cuda_emulator lives
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert marker in proc.stdout, proc.stderr
    assert "unnoticed" not in proc.stdout
    assert proc.returncode == -signal.SIGSEGV


@pytest.fixture(scope="module")
def broken():
    return emulate.SourceModule(BROKEN, no_extern_c=True)


# every layout, and the cluster layout with both of its kernels (8 blocks: where 16 are not allowed)
VARIANTS = [pytest.param(layout, None, id=layout) for layout in SOLVERS if layout != "cluster"] + \
    [pytest.param("cluster", blocks, id=f"cluster{blocks}") for blocks in (8, 16)]


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    """Each test's auto stages time the layouts themselves, not read an earlier test's choice."""
    from edge_mer.runtime import choices

    monkeypatch.setattr(choices, "cache_dir", lambda: tmp_path / "choices")


@pytest.mark.parametrize(("solver", "blocks"), VARIANTS)
def test_stage_results_do_not_depend_on_thread_order(solver, blocks):
    stage = CudaStage(64, runtime=emulate, solver=solver, cluster_blocks=blocks)
    onset, apex, matrix = in_frames(micro_pairs(64, peaks=(1.2,))[0])
    runs = []
    for order in (0, 1, 12345):  # forward, reverse, shuffled on every barrier round
        with emulate.schedule(order):
            runs.append(stage(onset, apex, matrix))
    for motion, texture in runs[1:]:
        np.testing.assert_array_equal(motion, runs[0][0])
        np.testing.assert_array_equal(texture, runs[0][1])
    assert float(np.abs(runs[0][0][:2]).max()) > 0.05  # the flow is there, not all zeros


@pytest.mark.parametrize(("solver", "blocks"), VARIANTS)
@pytest.mark.parametrize("threads", [32, 512])
def test_the_solve_agrees_at_any_block_size_the_gpu_may_choose(monkeypatch, threads, solver, blocks):
    # the driver takes the kernel's max_threads_per_block: 127 registers give 512 on Hopper;
    # one warp is the other extreme of the block-wide reduction
    for kernel in list(emulate.THREAD_LIMITS):
        monkeypatch.setitem(emulate.THREAD_LIMITS, kernel, threads)
    stage = CudaStage(48, runtime=emulate, solver=solver, cluster_blocks=blocks)
    assert stage.solve_threads == threads
    p = micro_pairs(48, peaks=(1.5,))[0]
    diff = np.linalg.norm(stage.flow(p.first, p.second) - tvl1(p.first, p.second), axis=2)
    assert float(diff.mean()) < 1e-3


def test_a_grid_barrier_that_a_block_never_reaches_gives_up_instead_of_hanging():
    absent = r"""
    extern "C" __global__ void absent_block(unsigned* barrier, int absent, float* out) {
        if ((int)blockIdx.x == absent) return;  // this block never arrives
        for (int k = 0; k < 5; ++k) grid_sync(barrier);
        if (threadIdx.x == 0) out[blockIdx.x] = 1.0f;
    }
    """
    kernel = emulate.SourceModule(kernel_source() + absent, no_extern_c=True).get_function("absent_block")
    barrier, out = emulate.mem_alloc(3 * 4), emulate.mem_alloc(3 * 4)
    emulate.memset_d32(barrier, 0, 3)
    emulate.memset_d32(out, 0, 3)
    kernel(barrier, np.int32(1), out, block=(32, 1, 1), grid=(3, 1))  # returns: the waits gave up
    state, written = np.empty(3, np.uint32), np.empty(3, np.float32)
    emulate.memcpy_dtoh(state, barrier)
    emulate.memcpy_dtoh(written, out)
    assert state[2] == 1  # gave up: the driver turns this into an error
    assert written.tolist() == [1.0, 0.0, 1.0]  # the other blocks ran to the end


def test_a_grid_solve_that_gave_up_is_an_error_not_a_result():
    stage = CudaStage(48, runtime=emulate, solver="bands")
    p = micro_pairs(48, peaks=(1.0,))[0]
    # as the kernel leaves it when one block never reached a grid barrier
    emulate.memcpy_htod(int(stage._barrier) + 8, np.array([1], np.uint32))
    with pytest.raises(UserError, match="gave up waiting for one of its blocks"):
        stage.flow(p.first, p.second)
    assert stage.flow(p.first, p.second).shape == (48, 48, 2)  # the barrier was reset
    # an unsynchronised write is checked by the stage's next call
    onset, apex, matrix = in_frames(p)
    emulate.memcpy_htod(int(stage._barrier) + 8, np.array([1], np.uint32))
    assert np.isnan(stage.write(onset, apex, matrix, int(stage._dmotion), int(stage._dtexture), sync=False))
    with pytest.raises(UserError, match="gave up waiting for one of its blocks"):
        stage.flow(p.first, p.second)


def test_the_device_selftest_holds_the_flow_stage_against_the_reference():
    from edge_mer.runtime.selftest import selftest, selftest_lines

    report = selftest(flow_runtime=emulate, flow_size=32)  # TensorRT is not here: the flow part alone
    assert report["flow"]["ok"], report
    # TensorRT did not run, so the self-test cannot pass: it says what is missing instead
    assert not report["ok"] and report["status"] == "incomplete" and "tensorrt_unavailable" in report
    assert report["flow"]["layout"].partition("/")[0] in SOLVERS and set(report["flow"]["layout_ms"])
    lines = selftest_lines(report)
    assert lines[0].startswith("TensorRT: not tested")
    assert lines[1].startswith("CUDA flow stage at S = 32: agrees with the numpy reference; kept layout")


def test_the_thread_order_check_finds_a_race(broken):
    racy = broken.get_function("racy")
    results = []
    for order in (0, 1):
        x = emulate.mem_alloc(64 * 4)
        emulate.memcpy_htod(x, np.arange(64, dtype=np.float32))
        with emulate.schedule(order):
            racy(x, np.int32(64), block=(64, 1, 1), grid=(1, 1))
        out = np.empty(64, np.float32)
        emulate.memcpy_dtoh(out, x)
        results.append(out)
    assert not np.array_equal(results[0], results[1])


def test_cluster_blocks_see_each_others_shared_memory_after_the_cluster_barrier(broken):
    neighbour = broken.get_function("neighbour")
    expected = np.concatenate([100 + np.arange(32), np.arange(32)]).astype(np.float32)
    for synced, order in ((1, 0), (1, 1), (1, 7), (0, 0)):
        out = emulate.mem_alloc(64 * 4)
        with emulate.schedule(order):
            neighbour(out, np.int32(synced), block=(32, 1, 1), grid=(2, 1, 1), shared=32 * 4)
        got = np.empty(64, np.float32)
        emulate.memcpy_dtoh(got, out)
        if synced:
            np.testing.assert_array_equal(got, expected)
        else:  # block 0 ran first and read block 1's shared memory before block 1 wrote it
            assert np.isnan(got[:32]).all() and (got[32:] == expected[32:]).all()


def test_a_cluster_kernel_launches_as_one_cluster_within_its_shared_memory(broken):
    neighbour = broken.get_function("neighbour")
    out = emulate.mem_alloc(2 * 32 * 4)
    with pytest.raises(emulate.LaunchError, match=r"launches as one cluster of 2 blocks here, not grid \(4, 1, 1\)"):
        neighbour(out, np.int32(1), block=(32, 1, 1), grid=(4, 1, 1), shared=32 * 4)
    big = 64 * 1024
    with pytest.raises(emulate.LaunchError, match="too many resources requested"):
        neighbour(out, np.int32(1), block=(32, 1, 1), grid=(2, 1, 1), shared=big)
    neighbour.set_attribute(emulate.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, big)  # as on a GPU
    neighbour(out, np.int32(1), block=(32, 1, 1), grid=(2, 1, 1), shared=big)
    with pytest.raises(emulate.Error, match="invalid argument"):
        neighbour.set_attribute(emulate.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, emulate.SHARED_OPTIN + 1)
    with pytest.raises(emulate.LaunchError, match="cluster_map of an address outside this block's dynamic shared"):
        broken.get_function("stray_map")(out, block=(32, 1, 1), grid=(2, 1, 1), shared=4)


def test_shared_memory_of_a_block_that_ended_or_before_its_start_is_not_there():
    code = f"""
import numpy as np
import cuda_emulator as emulate
early_exit = emulate.SourceModule({BROKEN!r}, no_extern_c=True).get_function("early_exit")
out = emulate.mem_alloc(32 * 4)
with emulate.schedule(1):  # reverse: block 1 reads while block 0 still waits to end
    early_exit(out, np.int32(0), block=(32, 1, 1), grid=(2, 1, 1), shared=32 * 4)
got = np.empty(32, np.float32)
emulate.memcpy_dtoh(got, out)
assert (got == 1).all()
with emulate.schedule(1):  # one float before block 0's shared memory: never written, NaN
    early_exit(out, np.int32(-1), block=(32, 1, 1), grid=(2, 1, 1), shared=32 * 4)
emulate.memcpy_dtoh(got, out)
assert np.isnan(got[0]) and (got[1:] == 1).all()
print("alive ok", flush=True)
early_exit(out, np.int32(0), block=(32, 1, 1), grid=(2, 1, 1), shared=32 * 4)  # forward: block 0 has ended
print("read after the end went unnoticed", flush=True)
"""
    _faults_after(code, "alive ok")


def test_a_layout_that_cannot_be_captured_runs_kernel_by_kernel_and_one_that_cannot_launch_is_left_out(
        monkeypatch):
    call = emulate.Function.__call__
    refuse = {"capture": "tvl1_levels_cluster16", "launch": ""}

    def picky(self, *args, **kwargs):
        if self.name == refuse["launch"]:
            raise emulate.LaunchError(f"{self.name}: cluster misconfiguration")
        if self.name == refuse["capture"] and emulate._recording is not None:
            raise emulate.Error(f"{self.name}: operation not permitted when stream is capturing")
        return call(self, *args, **kwargs)

    monkeypatch.setattr(emulate.Function, "__call__", picky)
    stage = CudaStage(32, runtime=emulate, solver="cluster")
    p = micro_pairs(32, peaks=(1.0,))[0]
    assert float(np.linalg.norm(stage.flow(p.first, p.second) - tvl1(p.first, p.second), axis=2).mean()) < 1e-3
    assert stage.graph_note.startswith("no CUDA graph (tvl1_levels_cluster16: operation not permitted")
    assert list(stage._graphs.values()) == [None]
    stage.solver = "bands"  # the other layouts keep their graphs
    stage.flow(p.first, p.second)
    assert stage.graph_note == "" and sum(v is not None for v in stage._graphs.values()) == 1

    refuse["launch"] = "tvl1_levels_cluster16"
    auto = CudaStage(32, runtime=emulate)
    assert not any(name.partition("/")[0] == "cluster" for name in auto.layout_ms)
    assert "cluster misconfiguration" in auto.layout_notes["cluster"] and auto.solver != "cluster"
    assert auto.graph_note == ""


def test_without_clusters_the_stage_leaves_that_layout_out(monkeypatch):
    monkeypatch.setitem(emulate.ATTRIBUTES, emulate.device_attribute.COMPUTE_CAPABILITY_MAJOR, 8)
    monkeypatch.setitem(emulate.ATTRIBUTES, emulate.device_attribute.COMPUTE_CAPABILITY_MINOR, 7)  # Orin
    stage = CudaStage(32, runtime=emulate)
    assert {name.partition("/")[0] for name in stage.layout_ms} == {"block", "bands"}
    assert "compute capability 9.0 or newer" in stage.layout_notes["cluster"] and "8.7" in stage.layout_notes["cluster"]
    with pytest.raises(UserError, match="cluster layout of the CUDA flow solve is not available here"):
        CudaStage(32, runtime=emulate, solver="cluster")


def test_clusters_of_16_where_allowed_else_of_8(monkeypatch):
    source = kernel_source()
    module = emulate.SourceModule(source, no_extern_c=True)
    large = module.get_function("tvl1_levels_cluster16")
    assert large.cluster == 16 and module.get_function("tvl1_levels_cluster").cluster == 8
    args = [np.uintp(0), np.int32(1), np.int32(0)] + [np.uintp(0)] * 5 + [np.float32(1.25)] * 4 + [np.int32(1)] * 4
    with pytest.raises(emulate.LaunchError, match="cluster misconfiguration"):  # as a GPU refuses it
        large(*args, block=(32, 1, 1), grid=(16, 1, 1))
    stage = CudaStage(32, runtime=emulate, solver="cluster")  # sets the attribute, so 16 blocks run
    assert stage.cluster_blocks == 16 and stage.large_cluster_note == ""
    p = micro_pairs(32, peaks=(1.0,))[0]
    assert float(np.linalg.norm(stage.flow(p.first, p.second) - tvl1(p.first, p.second), axis=2).mean()) < 1e-3

    def refuse(self, attribute, value):
        if attribute == emulate.function_attribute.NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
            raise emulate.Error(f"{self.name}: invalid value")
        return allow(self, attribute, value)

    allow = emulate.Function.set_attribute
    monkeypatch.setattr(emulate.Function, "set_attribute", refuse)
    portable = CudaStage(32, runtime=emulate, solver="cluster")  # a GPU that refuses 16: the portable 8
    assert portable.cluster_blocks == 8 and portable.large_cluster_note.startswith("16-block clusters cannot")
    assert float(np.linalg.norm(portable.flow(p.first, p.second) - tvl1(p.first, p.second), axis=2).mean()) < 1e-3
    with pytest.raises(UserError, match="16-block clusters are not available here"):
        CudaStage(32, runtime=emulate, solver="cluster", cluster_blocks=16)


def test_a_level_too_large_for_the_clusters_shared_memory_runs_in_bands(monkeypatch):
    # S = 64: the finest level needs (16 floats x 8 rows x 64 + 20 x 64 + 64) x 4 bytes (38,144 B) per block,
    # the next one (51 x 51, 7 rows) 27,184 B
    monkeypatch.setattr(emulate, "SHARED_OPTIN", 30 * 1024)
    monkeypatch.setitem(emulate.ATTRIBUTES, emulate.device_attribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 30 * 1024)
    launched: list[str] = []
    call = emulate.Function.__call__

    def counting(self, *args, **kwargs):
        launched.append(self.name)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(emulate.Function, "__call__", counting)
    stage = CudaStage(64, runtime=emulate, solver="cluster", graphs=False, cluster_blocks=8)  # the sizes above
    p = micro_pairs(64, peaks=(1.4,))[0]
    diff = np.linalg.norm(stage.flow(p.first, p.second) - tvl1(p.first, p.second), axis=2)
    assert float(diff.mean()) < 1e-3
    warps = stage.params.warps
    assert launched.count("tvl1_solve_bands") == launched.count("tvl1_warp") == warps  # the finest level
    assert launched.count("tvl1_upsample_flow") == launched.count("tvl1_centered_gradient") == 1
    assert launched.count("tvl1_levels_cluster") == 1  # the pyramid and the four coarser levels
    assert launched.count("tvl1_downsample") == 0


def test_warp_shuffles_sum_each_warp(broken):
    x = emulate.mem_alloc(64 * 4)
    emulate.memcpy_htod(x, np.arange(64, dtype=np.float32))
    broken.get_function("warp_sum")(x, block=(64, 1, 1), grid=(1, 1))
    out = np.empty(64, np.float32)
    emulate.memcpy_dtoh(out, x)
    assert out[0] == sum(range(32)) and out[32] == sum(range(32, 64))


def test_a_barrier_that_not_every_thread_reaches_stops_the_launch(broken):
    x = emulate.mem_alloc(32 * 4)
    with pytest.raises(emulate.LaunchError, match=r"divergent: a thread exited while others waited at __syncthreads"):
        broken.get_function("divergent")(x, block=(32, 1, 1), grid=(1, 1))


def test_arguments_are_checked_against_the_kernel_signature(broken):
    fill = broken.get_function("fill")
    x = emulate.mem_alloc(16 * 4)
    with pytest.raises(emulate.LaunchError, match=r"argument 2 \(int\) must be numpy.int32, got int"):
        fill(x, 15, np.float32(1), block=(16, 1, 1), grid=(1, 1))
    with pytest.raises(emulate.LaunchError, match=r"argument 3 \(float\) must be numpy.float32, got float64"):
        fill(x, np.int32(15), np.float64(1), block=(16, 1, 1), grid=(1, 1))
    with pytest.raises(emulate.LaunchError, match="takes 3 arguments, got 2"):
        fill(x, np.int32(15), block=(16, 1, 1), grid=(1, 1))
    with pytest.raises(emulate.LaunchError, match="not inside one live allocation"):
        fill(np.uintp(int(x) + 16 * 4), np.int32(15), np.float32(1), block=(16, 1, 1), grid=(1, 1))
    with pytest.raises(emulate.LaunchError, match="at most 1024 threads"):
        fill(x, np.int32(15), np.float32(1), block=(2048, 1, 1), grid=(1, 1))
    with pytest.raises(emulate.Error, match="named symbol not found"):
        broken.get_function("missing")


def test_a_write_past_the_end_of_a_buffer_faults():
    code = f"""
import numpy as np
from edge_mer.errors import UserError
import cuda_emulator as emulate
fill = emulate.SourceModule({BROKEN!r}, no_extern_c=True).get_function("fill")
x = emulate.mem_alloc(100 * 4)
fill(x, np.int32(99), np.float32(2), block=(100, 1, 1), grid=(1, 1))  # i <= 99: inside
out = np.empty(100, np.float32)
emulate.memcpy_dtoh(out, x)
assert (out == 2).all()
print("inside ok", flush=True)
fill(x, np.int32(100), np.float32(3), block=(101, 1, 1), grid=(1, 1))  # writes x[100]
print("past the end went unnoticed", flush=True)
"""
    _faults_after(code, "inside ok")


def test_memory_starts_as_nan_and_memset_fills_it():
    # fresh device memory reads as NaN, so a kernel that reads what nobody wrote shows it
    x = emulate.mem_alloc(10 * 4)
    out = np.empty(10, np.float32)
    emulate.memcpy_dtoh(out, x)
    assert np.isnan(out).all()
    emulate.memset_d32(x, 0, 6)
    emulate.memcpy_dtoh(out, x)
    assert (out[:6] == 0).all() and np.isnan(out[6:]).all()


def test_a_capturing_stream_refuses_copies_and_replays_launches_in_order(broken):
    fill = broken.get_function("fill")
    x = emulate.mem_alloc(8 * 4)
    emulate.memset_d32(x, 0, 8)

    def record() -> str:
        fill(x, np.int32(3), np.float32(5), block=(4, 1, 1), grid=(1, 1))
        emulate.memset_d32_async(x, 0x40000000, 2)  # 2.0f over the first two
        with pytest.raises(emulate.Error, match="not permitted when stream is capturing"):
            emulate.memcpy_htod(x, np.zeros(8, np.float32))
        return "recorded"

    graph, result = emulate.capture_graph(None, record)
    out = np.empty(8, np.float32)
    emulate.memcpy_dtoh(out, x)
    assert result == "recorded" and (out == 0).all()  # nothing ran while capturing
    graph.launch()
    emulate.memcpy_dtoh(out, x)
    assert out.tolist() == [2, 2, 5, 5, 0, 0, 0, 0]


def test_source_that_does_not_compile_is_one_clear_error():
    with pytest.raises(emulate.CompileError, match="do not compile for the CPU emulator"):
        emulate.SourceModule('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }',
                             no_extern_c=True)
