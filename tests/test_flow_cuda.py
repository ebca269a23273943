"""The CUDA flow stage against its specification, the numpy reference.

Each test runs for each layout of the solve (one block per pair, a grid of blocks,
row bands) and twice: on a CUDA GPU (marked ``gpu``: skipped without one) and on the
CPU emulator (``tests/cuda_emulator``: the same kernel source compiled with g++,
CUDA threads as fibers, every allocation ending at a guard page), so that the
kernels and their host driver are checked on every machine and the GPU run adds
what only a GPU shows (its float arithmetic, its compiler, its launch limits).

Tolerances: the kernels differ from the reference only by float32 rounding and
summation order, which can move TV-L1's stopping test by an iteration; the flows then
agree to a few hundredths of a pixel, far below the micro-expression motion they
measure (0.3 to 2 px).
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import cuda_emulator as emulate
import numpy as np
import pytest

from edge_mer.flow.base import MotionOptions
from edge_mer.flow.cuda import SMALLER_BLOCKS, SOLVERS, CudaStage, _crop_window, kernel_source
from edge_mer.flow.normalise import FLOW_UNIT, motion_tensor, texture_tensor
from edge_mer.flow.pairs import endpoint_error, in_frames, micro_pairs, shift_pairs
from edge_mer.flow.reference import crop_gray, tvl1

FLOW_TOLERANCE_PX = 0.05  # mean endpoint difference CUDA vs reference

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="the CUDA emulator needs a C++ compiler (g++)")


WHERE = {"gpu": pytest.mark.gpu, "emulated": needs_compiler}


# every layout; the cluster layout as the GPU runs it (16 blocks where allowed) and with its portable 8
VARIANTS = [(layout, None) for layout in SOLVERS] + [("cluster", 8)]


@pytest.fixture(scope="module", params=[pytest.param((where, solver, blocks), marks=mark,
                                                     id=f"{where}-{solver}{blocks or ''}")
                                        for where, mark in WHERE.items() for solver, blocks in VARIANTS])
def stage(request):
    where, solver, blocks = request.param
    if where == "gpu" and solver == "cluster":
        from edge_mer.runtime.gpu import cuda_devices

        names, _ = cuda_devices()
        if names and int(names[0].rsplit("sm_", 1)[1].rstrip(")")) < 90:
            pytest.skip(f"{names[0]} has no thread block clusters (compute capability 9.0 and newer)")
    return CudaStage(112, solver=solver, runtime=emulate if where == "emulated" else None, cluster_blocks=blocks)


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch, tmp_path):
    """Each test's auto stages time the layouts themselves, not read an earlier test's choice."""
    from edge_mer.runtime import choices

    monkeypatch.setattr(choices, "cache_dir", lambda: tmp_path / "choices")


@pytest.mark.parametrize("size", [64, 112])
def test_raw_flow_agrees_with_the_reference(stage, size):
    pairs = micro_pairs(size, peaks=(0.8, 2.0)) + shift_pairs(size, ((0.4, 0.0), (0.7, -0.4)))
    for p in pairs:
        ref = tvl1(p.first, p.second)
        got = stage.flow(p.first, p.second)
        assert got.shape == ref.shape == (size, size, 2) and got.dtype == np.float32
        diff = float(np.linalg.norm(got - ref, axis=2).mean())
        print(f"{p.name} S={size}: |cuda - reference| mean {diff:.2g} px; endpoint error cuda "
              f"{endpoint_error(got, p.flow):.4f}, reference {endpoint_error(ref, p.flow):.4f}")
        assert diff < FLOW_TOLERANCE_PX, (p.name, diff)
        assert endpoint_error(got, p.flow) <= 1.1 * endpoint_error(ref, p.flow) + 0.005


def _frames(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 640x480 BGR onset/apex pair with the face crop somewhere in it, the crop matrix, the truth flow."""
    p = micro_pairs(size, peaks=(1.4,))[0]
    onset, apex, matrix = in_frames(p)
    return onset, apex, matrix, p.flow


def test_stage_matches_the_reference_pipeline(stage):
    onset, apex, matrix, _ = _frames(112)
    motion, texture = stage(onset, apex, matrix)
    first, second = crop_gray(onset, matrix, 112), crop_gray(apex, matrix, 112)
    ref_motion = motion_tensor(tvl1(first.astype(np.uint8), second.astype(np.uint8)))
    ref_texture = texture_tensor(second.astype(np.uint8))
    assert motion.shape == (3, 112, 112) and texture.shape == (1, 112, 112)
    # the crop: bilinear in float32 on the GPU, float64 positions in numpy; at most one grey level apart
    assert np.abs(texture - ref_texture).max() <= 1 / 255 / 0.25 + 1e-6
    # at S = 112 the motion channels are the flow in units of FLOW_UNIT
    assert float(np.abs(motion[:2] - ref_motion[:2]).mean()) < FLOW_TOLERANCE_PX / FLOW_UNIT
    # strain is a derivative of the flow, ten times amplified: a looser bound, and the same pattern
    assert float(np.abs(motion[2] - ref_motion[2]).mean()) < 0.25
    assert np.corrcoef(motion[2].ravel(), ref_motion[2].ravel())[0, 1] > 0.95
    print(f"stage on {stage.drv.Device(0).name()}: {stage.last_ms:.3f} ms per pair (pre + flow + epilogue; "
          "CUDA events on a GPU, CPU time on the emulator)")


@pytest.mark.parametrize("where", ["centred", "off the top left", "turned, off the bottom right", "outside"])
def test_the_crop_reads_only_the_window_it_needs_and_equals_the_reference(stage, where):
    """The stage copies only the part of each frame that the crop reads; wherever the face is, even partly
    or wholly outside the frame (coordinates clamped), the crop equals reference.crop_gray."""
    rng = np.random.default_rng(7)
    onset = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    apex = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    turn = np.deg2rad(20.0)
    scale, angle, origin = {"centred": (0.5, 0.0, (200.0, 150.0)), "off the top left": (0.7, 0.0, (-40.0, -30.0)),
                            "turned, off the bottom right": (0.4, turn, (560.0, 420.0)),
                            "outside": (0.5, 0.0, (700.0, 500.0))}[where]
    c, s_ = np.cos(angle) / scale, np.sin(angle) / scale  # frame -> crop: rotate, scale, then shift
    matrix = np.array([[c, s_, 0.0], [-s_, c, 0.0]])
    matrix[:, 2] = -matrix[:, :2] @ np.array(origin)
    x0, y0, x1, y1 = _crop_window(np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2], 112, 640, 480)
    if where != "outside":
        assert (x1 - x0) * (y1 - y0) < 640 * 480 / 2  # far less than a whole frame travels
    got = np.empty((2, 112, 112), np.float32)
    stage.ctx.push()
    try:
        staged, host = stage._stage_pair(onset, apex, matrix)  # the frames' windows, as write() stages them
        b = stage._buffers_for((112, 112))
        stage.drv.memcpy_htod_async(staged, host, stage.stream)
        stage._pre(b, staged)  # tvl1_pre alone: both crops into the finest level
        stage.stream.synchronize()
        stage.drv.memcpy_dtoh(got, b.levels[0])
    finally:
        stage.ctx.pop()
    for frame, crop in zip((onset, apex), got):  # float32 positions on the GPU: one grey level
        assert np.abs(crop - crop_gray(frame, matrix, 112)).max() <= 1.0, where


@pytest.mark.parametrize("options", [MotionOptions(head="removed"), MotionOptions(oversample=2)],
                         ids=["head-removed", "finer"])
def test_a_model_of_other_flow_gets_it_from_the_gpu_flow(stage, options):
    """A model trained on ``data prepare --head removed`` or ``--oversample 2`` features on a Jetson: the GPU
    computes the flow (of the finer crops), the host removes the head's motion or averages it back, as the
    cache did; the loop then does not write into TensorRT's buffers (``write`` computes the plain flow)."""
    from edge_mer.face import FaceAlignment
    from edge_mer.runtime.loop import Recognizer

    p = micro_pairs(112, peaks=(1.0,))[0]
    onset, apex, matrix = in_frames(p)
    plain = stage.options
    stage.options = options
    try:
        motion, texture = stage(onset, apex, matrix)
        k = options.oversample
        fine = FaceAlignment(np.asarray(matrix, np.float64), 112, "matrix", (0, 0, 0, 0)).finer(k).matrix
        first, second = (stage.crop(f, fine, 112 * k) for f in (onset, apex))
        np.testing.assert_array_equal(motion, options.motion(stage.flow(first, second)))
        np.testing.assert_array_equal(texture, texture_tensor(stage.crop(apex, matrix)))
        ref = options.motion(tvl1(first, second))  # the specification on the same crops
        assert np.abs(motion[:2] - ref[:2]).mean() * FLOW_UNIT < FLOW_TOLERANCE_PX

        class TensorRTLike:  # what the loop looks for to hand the stage TensorRT's input buffers
            size = 112

            def device_inputs(self) -> dict[str, Any]:
                raise AssertionError("not for a model of other flow")

        assert not Recognizer(TensorRTLike(), stage).fused  # type: ignore[arg-type]
    finally:
        stage.options = plain
    assert Recognizer(TensorRTLike(), stage).fused  # type: ignore[arg-type]


def test_write_fills_device_buffers_as_the_host_copy(stage):
    """write() leaves in the given device buffers what __call__ returns on the host: the TensorRT backend's
    input buffers are filled without a trip through host memory."""
    drv = stage.drv
    onset, apex, matrix, _ = _frames(112)
    motion, texture = stage(onset, apex, matrix)
    stage.ctx.push()
    try:
        dm, dt = drv.mem_alloc(3 * 112 * 112 * 4), drv.mem_alloc(112 * 112 * 4)
    finally:
        stage.ctx.pop()
    ms = stage.write(onset, apex, matrix, int(dm), int(dt))
    assert ms > 0
    got_motion, got_texture = np.empty((3, 112, 112), np.float32), np.empty((1, 112, 112), np.float32)
    stage.ctx.push()
    try:
        drv.memcpy_dtoh(got_motion, dm)
        drv.memcpy_dtoh(got_texture, dt)
    finally:
        stage.ctx.pop()
    np.testing.assert_array_equal(got_motion, motion)
    np.testing.assert_array_equal(got_texture, texture)


@pytest.mark.gpu
def test_flow_command_with_cuda(tmp_path):
    import cv2
    from conftest import run_cli

    p = shift_pairs(96, ((0.5, 0.0),))[0]
    cv2.imwrite(str(tmp_path / "a.png"), p.first)
    cv2.imwrite(str(tmp_path / "b.png"), p.second)
    proc = run_cli("flow", "--first", str(tmp_path / "a.png"), "--second", str(tmp_path / "b.png"),
                   "--method", "cuda", "--out", str(tmp_path / "f.npy"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["gpu_ms"] > 0 and report["layout"].partition("/")[0] in SOLVERS
    flow = np.load(tmp_path / "f.npy")
    assert flow.shape == (96, 96, 2)
    assert abs(float(flow[10:-10, 10:-10, 0].mean()) - 0.5) < 0.05


def test_a_graph_replay_equals_launching_kernel_by_kernel(stage):
    direct = CudaStage(64, solver=stage.solver, runtime=stage.drv if stage.drv is emulate else None, graphs=False)
    replayed = CudaStage(64, solver=stage.solver, runtime=stage.drv if stage.drv is emulate else None)
    for p in micro_pairs(64, peaks=(0.8, 1.6)):  # the second call replays the graph captured by the first
        np.testing.assert_array_equal(replayed.flow(p.first, p.second), direct.flow(p.first, p.second))
    assert not replayed.graph_note and direct.graph_note == "graphs turned off"
    assert len(replayed._graphs) == 1 and None not in replayed._graphs.values()
    # the whole stage: the second and third pairs replay the graph captured by the first, with their own
    # face transform, frame windows and frame size (their parameters travel in the copy, not the graph)
    shots = [in_frames(p, frame_size=size, scale=scale, corner=corner) for p, size, scale, corner in zip(
        micro_pairs(64, peaks=(0.8, 1.6, 1.2)), ((640, 480), (640, 480), (320, 240)), (1.7, 1.3, 1.0),
        ((150.0, 90.0), (20.0, 300.0), (100.0, 60.0)))]
    for onset, apex, matrix in shots:
        for got, want in zip(replayed(onset, apex, matrix), direct(onset, apex, matrix)):
            np.testing.assert_array_equal(got, want)
    assert sum(key[0] == "stage" for key in replayed._graphs) == 1


@pytest.mark.parametrize("where", [pytest.param(where, marks=mark) for where, mark in WHERE.items()])
def test_auto_keeps_the_fastest_layout_and_remembers_it_for_this_gpu(where, monkeypatch):
    size = 112 if where == "gpu" else 32  # the emulator's times say nothing; it checks the choosing
    for kernel in list(emulate.THREAD_LIMITS):  # as on a GPU: room for the smaller-block candidates
        monkeypatch.setitem(emulate.THREAD_LIMITS, kernel, 512)
    runtime = emulate if where == "emulated" else None
    stage = CudaStage(size, runtime=runtime)
    print(f"layouts on {stage.gpu_name} at S={size}: {stage.layout_ms} ms -> {stage.solver}; "
          f"left out: {stage.layout_notes or 'none'}")
    without = {"cluster"} if stage.cluster_note else set()  # a GPU older than compute capability 9.0
    assert stage.layout_from == "timed"
    assert {name.partition("/")[0] for name in stage.layout_ms} == set(SOLVERS) - without
    if where == "emulated":
        smaller = {f"{layout}/{t}" for layout, sizes in SMALLER_BLOCKS.items() for t in sizes if t < 512}
        assert smaller and smaller <= set(stage.layout_ms)  # each layout also with its smaller blocks
    best = min(stage.layout_ms, key=stage.layout_ms.__getitem__)
    assert best.partition("/")[0] == stage.solver
    assert stage.solve_threads == int(best.partition("/")[2] or stage.solve_threads)
    p = micro_pairs(size, peaks=(1.0,))[0]
    assert float(np.linalg.norm(stage.flow(p.first, p.second) - tvl1(p.first, p.second), axis=2).mean()) < 1e-3
    # the next start on this GPU reads the choice instead of timing again; another size times again
    again = CudaStage(size, runtime=runtime)
    assert again.layout_from == "cache" and (again.solver, again.solve_threads) == (stage.solver, stage.solve_threads)
    assert CudaStage(size + 16, runtime=runtime).layout_from == "timed"


def test_self_check_passes(stage):
    assert stage.self_check() is None


# every k x k window of zeros and ones, one per loop step: the count whose median is wrong
MEDIAN_CHECK = r"""
extern "C" __global__ void median_zero_one(int k, unsigned* wrong) {
    const unsigned n = k * k;
    unsigned bad = 0;
    for (unsigned bits = threadIdx.x; bits < (1u << n); bits += blockDim.x) {
        float v[25];
        unsigned ones = 0;
        for (unsigned j = 0; j < n; ++j) {
            v[j] = (float)((bits >> j) & 1u);
            ones += (bits >> j) & 1u;
        }
        float m = k == 3 ? window_median<3>(v) : window_median<5>(v);
        bad += (m == 1.0f) != (2 * ones > n);
    }
    atomicAdd(wrong, bad);
}
"""


@needs_compiler
@pytest.mark.parametrize("k", [3, 5])
def test_the_median_networks_give_the_median_of_every_window(k):
    # a comparator network that gives the median of every input of zeros and ones gives it of every
    # input (the 0-1 principle): 2^25 windows for 5 x 5
    module = emulate.SourceModule(kernel_source() + MEDIAN_CHECK, no_extern_c=True)
    wrong = emulate.mem_alloc(4)
    emulate.memset_d32(wrong, 0, 1)
    module.get_function("median_zero_one")(np.int32(k), wrong, block=(32, 1, 1), grid=(1, 1))
    out = np.empty(1, np.uint32)
    emulate.memcpy_dtoh(out, wrong)
    assert out[0] == 0
