"""The flow stage (frames + face transform -> model inputs), ``edge-mer flow`` and the CUDA kernels' source."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fake_nvcc, run_cli

from edge_mer.cli.flow import add_parser
from edge_mer.errors import UserError
from edge_mer.face import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAlignment
from edge_mer.flow.base import MotionOptions
from edge_mer.flow.head import without_head
from edge_mer.flow.normalise import FLOW_UNIT, motion_tensor, texture_tensor
from edge_mer.flow.opencv import has_tvl1, make_flow
from edge_mer.flow.reference import tvl1
from edge_mer.flow.stage import OpenCVStage, make_stage
from edge_mer.synth.aus import parse_aus
from edge_mer.synth.faces import make_subject
from edge_mer.synth.render import FaceRenderer, Pose, default_face_iod

KERNELS = Path(__file__).resolve().parents[1] / "edge_mer" / "flow" / "kernels" / "tvl1.cu"
ENTRY_POINTS = ("tvl1_pre", "tvl1_downsample", "tvl1_centered_gradient", "tvl1_warp", "tvl1_solve",
                "tvl1_solve_bands", "tvl1_levels_cluster", "tvl1_levels_cluster16", "tvl1_upsample_flow",
                "tvl1_epilogue")
FRAME = (320, 240)
METHODS = ["reference", pytest.param("opencv-tvl1", marks=pytest.mark.skipif(
    not has_tvl1(), reason="OpenCV contrib's TV-L1 is not installed")), "opencv-dis"]


def _renderer() -> FaceRenderer:
    return FaceRenderer(make_subject(0, 0), FRAME, default_face_iod(FRAME))


def _matrix(r: FaceRenderer, size: int) -> np.ndarray:
    """The aligner's frame -> crop similarity, from the rendered eyes (image-left eye first)."""
    pts = r.region_points()
    left, right = pts["eye_r"], pts["eye_l"]
    angle = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    mid = (left + right) / 2
    scale = CANONICAL_IOD * size / float(np.linalg.norm(right - left))
    m = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), angle, scale)
    m[:, 2] += np.array([0.5 * size, CANONICAL_EYE_Y * size]) - mid
    return m


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A BGR onset and apex (AU 12, lip corner puller) and the face transform to a 112 crop."""
    r = _renderer()
    return r.render({}), r.render({c: 1.5 for c in parse_aus("12")}), _matrix(r, 112)


def _crops(onset: np.ndarray, apex: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The feature cache's crops: grey frames through FaceAlignment.crop."""
    align = FaceAlignment(matrix, size, "eyes", (0, 0, 1, 1))
    return (align.crop(cv2.cvtColor(onset, cv2.COLOR_BGR2GRAY)), align.crop(cv2.cvtColor(apex, cv2.COLOR_BGR2GRAY)))


@pytest.mark.parametrize("name", METHODS)
def test_stage_outputs_are_the_feature_cache_tensors(name, scene):
    onset, apex, matrix = scene
    stage = make_stage(name, 112)
    motion, texture = stage(onset, apex, matrix)
    assert motion.shape == (3, 112, 112) and motion.dtype == np.float32
    assert texture.shape == (1, 112, 112) and texture.dtype == np.float32
    a, b = _crops(onset, apex, matrix, 112)
    flow = tvl1(a, b) if name == "reference" else make_flow(name.removeprefix("opencv-"))(a, b)
    np.testing.assert_array_equal(motion, motion_tensor(flow))
    np.testing.assert_array_equal(texture, texture_tensor(b))
    assert np.abs(motion[:2]).max() > 0.05  # the AU moved the mouth corners
    gray_motion, gray_texture = stage(cv2.cvtColor(onset, cv2.COLOR_BGR2GRAY), cv2.cvtColor(apex, cv2.COLOR_BGR2GRAY),
                                      matrix)
    np.testing.assert_array_equal(gray_motion, motion)
    np.testing.assert_array_equal(gray_texture, texture)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("size", [64, 112])
def test_a_head_moving_right_gives_positive_u(name, size):
    r = _renderer()
    matrix = _matrix(r, size)
    motion, _ = make_stage(name, size)(r.render({}), r.render({}, pose=Pose(tx=1.0)), matrix)
    assert motion.shape == (3, size, size)
    crop_px = float(np.hypot(*matrix[0, :2]))  # crop pixels per frame pixel
    expected = 1.0 * crop_px * 112 / size / FLOW_UNIT
    inner = slice(size // 8, -size // 8)
    assert np.median(motion[0, inner, inner]) == pytest.approx(expected, abs=0.2 * expected)
    assert abs(np.median(motion[1, inner, inner])) < 0.1 * expected


def test_a_finer_crop_averaged_back_is_the_crop_itself(scene):
    """``FaceAlignment.finer``: each k x k block of the finer crop covers one pixel of the S crop, centred on it."""
    onset, _, matrix = scene
    gray = cv2.GaussianBlur(cv2.cvtColor(onset, cv2.COLOR_BGR2GRAY), (0, 0), 2.0)  # smooth: sampling aside
    align = FaceAlignment(matrix, 112, "eyes", (0, 0, 1, 1))
    for k in (2, 3):
        fine = align.finer(k).crop(gray).astype(np.float32)
        assert fine.shape == (112 * k, 112 * k)
        pooled = fine.reshape(112, k, 112, k).mean((1, 3))
        assert np.median(np.abs(pooled - align.crop(gray))) < 0.5  # half a grey level: the same pixels
        shifted = FaceAlignment(matrix * k, 112 * k, "eyes", (0, 0, 1, 1)).crop(gray).astype(np.float32)
        off = shifted.reshape(112, k, 112, k).mean((1, 3))  # without the half-pixel offset the blocks sit askew
        assert np.median(np.abs(off - align.crop(gray))) > np.median(np.abs(pooled - align.crop(gray)))


@pytest.mark.parametrize("name", ["reference", "opencv-dis"])
def test_an_oversampled_stage_gives_the_motion_in_pixels_of_the_s_crop(name, scene):
    """Flow computed on crops twice as fine and averaged back: the same (3, S, S) tensors in the same units as a
    stage at S, made as the feature cache makes them with ``data prepare --oversample 2``."""
    r = _renderer()
    matrix = _matrix(r, 112)
    stage = make_stage(name, 112, MotionOptions(oversample=2))
    assert stage.options.oversample == 2 and "oversample=2" in repr(stage)
    motion, texture = stage(r.render({}), r.render({}, pose=Pose(tx=1.0)), matrix)
    assert motion.shape == (3, 112, 112) and texture.shape == (1, 112, 112)
    expected = 1.0 * float(np.hypot(*matrix[0, :2])) / FLOW_UNIT  # one frame pixel in units of the 112 crop
    inner = slice(14, -14)
    assert np.median(motion[0, inner, inner]) == pytest.approx(expected, abs=0.2 * expected)
    onset, apex, _ = scene
    motion, texture = stage(onset, apex, matrix)
    align = FaceAlignment(matrix, 112, "eyes", (0, 0, 1, 1))
    fine = align.finer(2)
    a, b = (fine.crop(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)) for f in (onset, apex))
    flow = tvl1(a, b) if name == "reference" else make_flow("dis")(a, b)
    np.testing.assert_array_equal(motion, motion_tensor(flow, 2))
    np.testing.assert_array_equal(texture, texture_tensor(align.crop(cv2.cvtColor(apex, cv2.COLOR_BGR2GRAY))))


@pytest.mark.parametrize("name", ["reference", "opencv-dis"])
def test_a_stage_without_the_head_s_motion_gives_what_the_cache_gave(name, scene):
    """A model trained on ``data prepare --head removed`` features gets flow without the head's motion on the
    device too: the stage's tensors are the cache's, made from the same crops; the head's shift is gone."""
    r = _renderer()
    matrix = _matrix(r, 112)
    stage = make_stage(name, 112, MotionOptions(head="removed"))
    moved, _ = stage(r.render({}), r.render({}, pose=Pose(tx=1.0)), matrix)  # the head alone moves
    plain, _ = make_stage(name, 112)(r.render({}), r.render({}, pose=Pose(tx=1.0)), matrix)
    inner = slice(14, -14)
    assert np.median(plain[0, inner, inner]) > 0.2 and np.abs(np.median(moved[0, inner, inner])) < 0.02
    onset, apex, _ = scene
    motion, texture = stage(onset, apex, matrix)
    align = FaceAlignment(matrix, 112, "eyes", (0, 0, 1, 1))
    a, b = (align.crop(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)) for f in (onset, apex))
    flow = tvl1(a, b) if name == "reference" else make_flow("dis")(a, b)
    np.testing.assert_array_equal(motion, motion_tensor(without_head(flow)))
    np.testing.assert_array_equal(texture, texture_tensor(b))


def test_motion_of_an_oversampled_flow_is_its_block_mean():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 1, (64, 64, 2)).astype(np.float32)
    block = flow.reshape(32, 2, 32, 2, 2).mean((1, 3)) / 2  # in pixels of the 32-pixel crop
    np.testing.assert_allclose(motion_tensor(flow, 2), motion_tensor(block), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not of a square crop 3 times finer"):
        motion_tensor(flow, 3)


def test_stage_names():
    assert make_stage("reference", 64).name == "reference"
    assert make_stage("opencv").name == ("opencv-tvl1" if has_tvl1() else "opencv-dis")
    assert make_stage("opencv-dis", 96).size == 96
    with pytest.raises(UserError, match="unknown flow stage 'tvl2'"):
        make_stage("tvl2")
    with pytest.raises(ValueError, match="2x3"):
        OpenCVStage(64, "dis")(np.zeros((80, 80), np.uint8), np.zeros((80, 80), np.uint8), np.eye(3))


def test_cuda_stage_says_why_it_cannot_run_here():
    from edge_mer.runtime.gpu import cuda_unavailable

    if cuda_unavailable() is None:
        pytest.skip("a CUDA device is here (tests/test_flow_cuda.py tests the stage)")
    with pytest.raises(UserError) as info:
        make_stage("cuda")
    message = str(info.value)
    assert "\n" not in message and message.startswith("the cuda flow stage")
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        assert "pycuda is not installed" in message


def test_nvcc_is_found_where_jetpack_puts_it(tmp_path):
    """JetPack installs the toolkit as /usr/local/cuda-X.Y with a /usr/local/cuda link and adds neither to PATH,
    nor does a venv or a systemd unit: the stage looks there itself."""
    from edge_mer.flow.cuda import find_nvcc

    bare = {"PATH": str(tmp_path / "empty-bin")}
    prefix = tmp_path / "usr-local"
    assert find_nvcc(bare, (prefix,)) is None
    older = fake_nvcc(prefix / "cuda-11.4" / "bin" / "nvcc")
    newer = fake_nvcc(prefix / "cuda-12.10" / "bin" / "nvcc")
    assert find_nvcc(bare, (prefix,)) == str(newer)  # 12.10 is newer than 12.6 or 11.4: numbers, not text
    fake_nvcc(prefix / "cuda-12.6" / "bin" / "nvcc")
    assert find_nvcc(bare, (prefix,)) == str(newer)
    link = fake_nvcc(prefix / "cuda" / "bin" / "nvcc")
    assert find_nvcc(bare, (prefix,)) == str(link)  # JetPack's link names the toolkit it chose
    assert find_nvcc({**bare, "CUDA_HOME": str(prefix / "cuda-11.4")}, (prefix,)) == str(older)
    on_path = fake_nvcc(tmp_path / "bin" / "nvcc")
    assert find_nvcc({"PATH": str(on_path.parent), "CUDA_HOME": str(prefix / "cuda-11.4")}, (prefix,)) == str(on_path)
    link.chmod(0o644)  # not executable: passed over
    assert find_nvcc(bare, (prefix,)) == str(newer)


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None
import numpy as np
from edge_mer.flow.stage import make_stage
from edge_mer.flow.reference import tvl1
from edge_mer.flow.pairs import shift_pairs
import edge_mer.cli.flow
p = shift_pairs(64, ((0.5, 0.0),))[0]
flow = tvl1(p.first, p.second)
m = np.float32([[0.5, 0, 0], [0, 0.5, 0]])
frame = np.repeat(np.repeat(p.first, 2, 0), 2, 1)
motion, texture = make_stage("reference", 64)(frame, frame, m)
assert sys.modules["torch"] is None
print("ok", flow.shape, motion.shape, texture.shape, round(float(flow[8:-8, 8:-8, 0].mean()), 1))
"""


def test_flow_stage_runs_with_torch_blocked():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok (64, 64, 2) (3, 64, 64) (1, 64, 64) 0.5"


def _listed_archs() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return ""
    return subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout


@pytest.mark.parametrize("arch", ["compute_72", "compute_87", "compute_90", "compute_110"])
def test_kernels_compile_to_ptx(arch, tmp_path):
    """Xavier (72), Orin (87), Hopper (90) and Thor (110). CUDA 13 dropped compute_72: it is skipped there, as
    compute_110 is by a toolkit older than 13."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    if arch not in _listed_archs().split():
        pytest.skip(f"this nvcc does not list {arch} (CUDA 13 dropped Volta/Xavier; use CUDA <= 12.x for it)")
    out = tmp_path / f"tvl1_{arch}.ptx"
    proc = subprocess.run(["nvcc", "-ptx", f"-arch={arch}", "--Werror", "all-warnings", str(KERNELS), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx))
    assert entries == set(ENTRY_POINTS)
    # thread block clusters from compute capability 9.0: below it tvl1_levels_cluster(16) is an empty kernel
    clusters = int(arch.split("_")[1]) >= 90
    assert (".reqnctapercluster 8, 1, 1" in ptx and ".reqnctapercluster 16, 1, 1" in ptx) == clusters
    assert ("barrier.cluster.arrive" in ptx and "mapa" in ptx) == clusters
    assert ("sync_restrict" in ptx) == clusters  # the barriers inside a level order shared memory only
    assert "sqrt.approx" in ptx


def test_the_kernel_text_builds_as_pycuda_builds_it(tmp_path):
    """pycuda compiles the source text in a folder of its own: the GPU instructions' header comes from the
    package's kernels folder (include_dirs), and only from there."""
    from edge_mer.flow.cuda import KERNELS as FOLDER
    from edge_mer.flow.cuda import kernel_source

    if shutil.which("nvcc") is None or "compute_87" not in _listed_archs().split():
        pytest.skip("nvcc for compute_87 is not on PATH")
    (tmp_path / "kernel.cu").write_text(kernel_source())
    argv = ["nvcc", "-ptx", "-arch=compute_87", "kernel.cu", "-o", "kernel.ptx"]
    alone = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert alone.returncode != 0 and "tvl1_gpu.h" in alone.stderr
    built = subprocess.run([*argv, "-I", str(FOLDER)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert set(re.findall(r"\.entry\s+(\w+)\(", (tmp_path / "kernel.ptx").read_text())) == set(ENTRY_POINTS)


def test_diagnostic_switches_change_what_the_kernels_do(tmp_path, monkeypatch):
    """EDGE_MER_CUDA_DEFINES builds the kernels with exact square roots / full barriers; nothing else passes."""
    from edge_mer.flow.cuda import kernel_defines

    monkeypatch.setenv("EDGE_MER_CUDA_DEFINES", "TVL1_EXACT_DUAL TVL1_FULL_BARRIERS")
    defines = kernel_defines()
    assert defines == ["-DTVL1_EXACT_DUAL", "-DTVL1_FULL_BARRIERS"]
    monkeypatch.setenv("EDGE_MER_CUDA_DEFINES", "TVL1_FAST")
    with pytest.raises(UserError, match="unknown switch TVL1_FAST"):
        kernel_defines()
    if shutil.which("nvcc") is None or "compute_90" not in _listed_archs().split():
        pytest.skip("nvcc for compute_90 is not on PATH")
    out = tmp_path / "switched.ptx"
    proc = subprocess.run(["nvcc", "-ptx", "-arch=compute_90", *defines, str(KERNELS), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    assert "sync_restrict" not in ptx and "sqrt.approx" not in ptx and "barrier.cluster.arrive" in ptx


# edge-mer flow


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Two grey 96x80 photos 0.6 px apart, a third of another size, and a file that is not an image."""
    from edge_mer.flow.pairs import face_crop, move

    folder = tmp_path_factory.mktemp("flow_images")
    first = face_crop(96)[8:88]  # 96 wide, 80 high
    flow = np.zeros((*first.shape, 2), np.float32)
    flow[..., 0] = 0.6
    paths = {"first": folder / "a.png", "second": folder / "b.png", "small": folder / "c.png",
             "broken": folder / "d.png"}
    cv2.imwrite(str(paths["first"]), first)
    cv2.imwrite(str(paths["second"]), move(first, flow))
    cv2.imwrite(str(paths["small"]), first[:40, :40])
    paths["broken"].write_text("not a png")
    return paths


def _own_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-mer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_flow_command_library_path(images, tmp_path, capsys):
    out = tmp_path / "flow.npy"
    args = _own_parser().parse_args(["flow", "--first", str(images["first"]), "--second", str(images["second"]),
                                     "--method", "opencv-dis", "--out", str(out), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape"] == [80, 96, 2] and report["method"] == "opencv-dis"
    assert np.load(out).shape == (80, 96, 2)
    before = out.read_bytes()
    args = _own_parser().parse_args(["flow", "--first", str(images["first"]), "--second", str(images["small"]),
                                     "--method", "reference", "--out", str(out)])
    with pytest.raises(UserError, match="differ in size"):
        args.func(args)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.npy"]  # no temporary file left


@pytest.fixture(scope="module")
def flow_cli() -> None:
    proc = run_cli("flow", "--help")
    assert proc.returncode == 0, f"edge-mer flow --help fails: {proc.stderr[-500:]}"


@pytest.mark.usefixtures("flow_cli")
def test_flow_cli_writes_the_flow(images, tmp_path):
    out = tmp_path / "sub" / "flow.npy"
    proc = run_cli("flow", "--first", str(images["first"]), "--second", str(images["second"]),
                   "--method", "reference", "--out", str(out), "--json", check=True)
    report = json.loads(proc.stdout)
    assert set(report) == {"method", "shape", "seconds", "out", "mean_magnitude"}
    assert report["method"] == "reference" and report["shape"] == [80, 96, 2] and report["out"] == str(out)
    flow = np.load(out)
    assert flow.shape == (80, 96, 2) and flow.dtype == np.float32
    assert float(np.median(flow[..., 0])) == pytest.approx(0.6, abs=0.1)
    assert report["mean_magnitude"] == pytest.approx(float(np.linalg.norm(flow, axis=-1).mean()), abs=1e-4)
    human = run_cli("flow", "--first", str(images["first"]), "--second", str(images["second"]),
                    "--method", "opencv-dis", "--out", str(out), check=True)
    assert len(human.stdout.strip().splitlines()) == 1 and "opencv-dis" in human.stdout


@pytest.mark.usefixtures("flow_cli")
@pytest.mark.parametrize(("second", "message"), [
    ("missing", "no such image"), ("broken", "cannot read image"), ("small", "differ in size")])
def test_flow_cli_bad_input_fails_in_one_line_and_keeps_the_output(images, tmp_path, second, message):
    out = tmp_path / "flow.npy"
    out.write_bytes(b"previous result")
    path = images.get(second, tmp_path / "missing.png")
    proc = run_cli("flow", "--first", str(images["first"]), "--second", str(path), "--method", "reference",
                   "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-mer: error:") and message in lines[0], proc.stderr
    assert out.read_bytes() == b"previous result"
