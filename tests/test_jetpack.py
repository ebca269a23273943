"""The device runtime in each JetPack's own Python userland, installed the way docs/jetson.md tells a Jetson user.

For each JetPack the README names, a copy of this machine's interpreter of that JetPack's Python
(pyenv's 3.8, 3.10, 3.12) plays /usr/bin/python3, with that JetPack's numpy and an OpenCV built
against numpy 1.x installed into it as apt installs them into /usr/lib/python3/dist-packages.
scripts/jetson/setup.sh then runs for real against a root file system holding that JetPack's
nv_tegra_release: a venv with --system-site-packages, edge-mer built from this checkout on that
Python, ONNX Runtime (the newest wheel that accepts that numpy). The tests use the result as a user
would (doctor, spot on a clip, the loop for a few hundred frames, build-engine's refusal without
TensorRT, the host commands' refusal on 3.8), run the device test modules inside it, and check that
numpy and OpenCV are the system's, unchanged, and that the ``jetson`` extra alone would not replace
them either.

No Jetson, no CUDA and no TensorRT are involved: pycuda is skipped (no JetPack CUDA toolkit here) and
TensorRT's use is checked against each version's API by test_tensorrt_api.py. Building the
environments needs the package registry and a few minutes each: ``python -m pytest -m jetpack``
(.ci/run does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import env_without_nvcc

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "jetson" / "setup.sh"

pytestmark = pytest.mark.jetpack


@dataclass(frozen=True)
class JetPack:
    name: str
    python: str
    numpy: str
    opencv: str  # an opencv-python-headless wheel built against numpy 1.x that imports with ``numpy``
    l4t: str  # the first line of /etc/nv_tegra_release
    tensorrt_generation: str


JETPACKS = [
    JetPack("5.1", "3.8", "1.17.4", "4.5.4.60",
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023",
            "engine API generation 8"),
    # JetPack 6 ships OpenCV 4.8.0; the 4.8 wheels' typing module needs numpy 1.22, so 4.7 stands in for it
    JetPack("6.2", "3.10", "1.21.5", "4.7.0.72",
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025",
            "engine API generation 10"),
    JetPack("7.0", "3.12", "1.26.4", "4.9.0.80",
            "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 2025",
            "engine API generation 10"),
]
# the device test modules, run inside each environment
DEVICE_TESTS = ("tests/test_ring.py", "tests/test_flow_reference.py", "tests/test_sources.py",
                "tests/test_no_torch.py")


def _run(argv: list[str], timeout: float = 900, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def _interpreter_home(version: str) -> Path | None:
    """The installation folder of this machine's Python ``version`` (on PATH, else pyenv's), or None."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates = [shutil.which(f"python{version}")]
    candidates += [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)]
    for exe in filter(None, candidates):
        proc = _run([exe, "-c", "import sys; print(sys.base_prefix)"], timeout=60)
        if proc.returncode == 0:  # a pyenv shim of a version that is not selected fails here
            return Path(proc.stdout.strip())
    return None


def _versions(python: Path) -> dict[str, str]:
    code = ("import json, numpy, cv2; print(json.dumps({'numpy': numpy.__version__, 'numpy_file': numpy.__file__, "
            "'cv2': cv2.__version__, 'cv2_file': cv2.__file__}))")
    return json.loads(_ok(_run([str(python), "-c", code], timeout=120)).stdout)


@dataclass
class Installed:
    jetpack: JetPack
    system: Path  # the stand-in /usr: its bin/python3 and site-packages
    venv: Path
    setup_out: str
    setup_err: str
    before: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def edge_mer(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "XDG_CACHE_HOME": str(self.venv.parent / "cache")}
        env.pop("PYTHONPATH", None)
        return _run([str(self.venv / "bin" / "edge-mer"), *args], timeout=timeout, env=env, cwd=self.venv.parent)


def _system_python(jp: JetPack, work: Path) -> Path:
    """A copy of the interpreter with the JetPack's numpy and OpenCV in its own site-packages (as apt puts
    python3-numpy and JetPack's OpenCV into /usr/lib/python3/dist-packages)."""
    home = _interpreter_home(jp.python)
    if home is None:
        missing = f"no Python {jp.python} on this machine (pyenv install {jp.python})"
        if os.environ.get("CI"):  # CI's machine has pyenv's Pythons: a missing one is a failure there
            pytest.fail(missing)
        pytest.skip(missing)
    system = work / "usr"
    shutil.copytree(home, system, symlinks=True)
    python = system / "bin" / f"python{jp.python}"
    _ok(_run([str(python), "-m", "pip", "install", "-q", "--no-deps", f"numpy=={jp.numpy}",
              f"opencv-python-headless=={jp.opencv}"]))
    return python


def _without_cuda(work: Path) -> dict[str, str]:
    """No CUDA toolkit in sight: this machine's is not JetPack's, and pycuda cannot be tested without a GPU."""
    env = env_without_nvcc(work / "no-cuda")
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module", params=JETPACKS, ids=[f"jetpack{jp.name}" for jp in JETPACKS])
def installed(request, tmp_path_factory) -> Installed:
    jp: JetPack = request.param
    work = tmp_path_factory.mktemp(f"jetpack{jp.name}")
    python = _system_python(jp, work)
    before = _versions(python)
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text(jp.l4t + "\n")
    venv = work / "edge-mer" / "venv"
    proc = _run(["bash", str(SETUP), "--from", str(REPO), "--prefix", str(venv), "--python", str(python),
                 "--root", str(root), "--with-onnxruntime"], timeout=1800, env=_without_cuda(work))
    _ok(proc)
    return Installed(jp, python.parent.parent, venv, proc.stdout, proc.stderr, before)


def test_setup_keeps_the_systems_numpy_and_opencv(installed: Installed) -> None:
    jp = installed.jetpack
    assert jp.tensorrt_generation in installed.setup_out
    assert f"numpy: unchanged ({jp.numpy})" in installed.setup_out
    assert "pycuda is skipped" in installed.setup_err  # said, not silent
    after = _versions(installed.python)
    assert after == installed.before  # the same numpy and cv2, from the same (system) files
    assert after["numpy_file"].startswith(str(installed.system)) and after["cv2_file"].startswith(str(installed.system))
    local = _ok(_run([str(installed.python), "-m", "pip", "list", "--local", "--format=freeze"])).stdout.lower()
    assert "numpy==" not in local and "opencv" not in local and "edge-mer==" in local
    assert (installed.venv / "constraints.txt").read_text().strip() == f"numpy=={jp.numpy}"


def test_the_jetson_extra_pulls_in_no_numpy_or_opencv(installed: Installed) -> None:
    """Even without setup.sh's pin, ``pip install edge-mer[jetson]`` leaves the system's numpy and OpenCV alone."""
    report = installed.venv.parent / "jetson-extra.json"
    env = _without_cuda(installed.venv.parent)
    _ok(_run([str(installed.python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
              f"{REPO}[jetson]"], env=env))
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "pycuda" in names
    assert not {n for n in names if n == "numpy" or n.startswith("opencv")}, names


def test_doctor_reports_this_python_and_onnxruntime(installed: Installed) -> None:
    report = json.loads(_ok(installed.edge_mer("doctor", "--json", "--no-torch")).stdout)
    assert report["python"].startswith(installed.jetpack.python + ".")
    text = json.dumps(report)
    assert installed.jetpack.numpy in text
    assert report["engines"]["onnxruntime"] and not report["engines"]["tensorrt"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """A 12 s synthetic clip with its truth, written by this (host) environment."""
    d = tmp_path_factory.mktemp("jetpack_clip")
    video, truth = d / "clip.mp4", d / "truth.csv"
    _ok(_run([sys.executable, "-m", "edge_mer", "synth", "video", "--seconds", "12", "--fps", "30", "--out",
              str(video), "--truth", str(truth), "--seed", "3"]))
    return video, truth


def test_spot_scores_a_clip(installed: Installed, clip: tuple[Path, Path]) -> None:
    video, truth = clip
    report = json.loads(_ok(installed.edge_mer("spot", "--video", str(video), "--truth", str(truth),
                                               "--json")).stdout)
    assert report["frames"] == 360 and report["micro_truth"] == 2
    assert report["tp"] >= 1  # the clip's micro-expressions are found on this Python and numpy


def test_the_loop_runs_a_few_hundred_frames_with_onnxruntime(installed: Installed) -> None:
    events, summary = installed.venv.parent / "events.jsonl", installed.venv.parent / "summary.json"
    _ok(installed.edge_mer("run", "--demo", "--max-frames", "450", "--backend", "onnxruntime", "--events",
                           str(events), "--json-summary", str(summary), "--quiet"))
    done = json.loads(summary.read_text())
    assert done["frames"] == 450 and done["skipped_frames"] == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == done["events"] >= 2  # the demo's first micro-expressions, classified
    assert all(e["label"] in ("negative", "positive", "surprise") for e in lines)


def test_device_commands_without_their_parts_say_so_in_one_line(installed: Installed) -> None:
    proc = installed.edge_mer("build-engine", "--onnx", str(REPO / "edge_mer" / "assets" / "models" /
                                                               "demo.int8.onnx"), "--out", "engines")
    assert proc.returncode == 2 and proc.stderr.startswith("edge-mer: error: TensorRT is not installed")
    assert proc.stderr.count("\n") == 1
    proc = installed.edge_mer("train", "--features", "f", "--out", "run")
    if installed.jetpack.python == "3.8":  # training needs 3.10: the device says so
        assert proc.returncode == 2 and "needs Python 3.10 or newer (this is 3.8." in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_device_tests_pass_on_this_python(installed: Installed) -> None:
    python = str(installed.python)
    _ok(_run([python, "-m", "pip", "install", "-q", "-c", str(installed.venv / "constraints.txt"), "pytest",
              "openpyxl"]))
    env = {**os.environ, "XDG_CACHE_HOME": str(installed.venv.parent / "cache")}
    env.pop("PYTHONPATH", None)
    proc = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(installed.venv.parent),
                 "-c", os.devnull, *(str(REPO / t) for t in DEVICE_TESTS)], timeout=1800, env=env,
                cwd=installed.venv.parent)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout.splitlines()[-1] and " failed" not in proc.stdout.splitlines()[-1]
    assert _versions(installed.python) == installed.before  # nothing the tests installed replaced numpy


# JetPack 6's own OpenCV is 4.8.0 (the JetPack 6.2 environment above stands 4.7 in for it, and 4.7's DNN gives
# NaN on the face models): the 4.8.0 wheel with the numpy its typing module needs
OPENCV_48 = ("3.10", "numpy==1.22.4", "opencv-python-headless==4.8.0.76", "onnxruntime==1.19.2")
FACE_ENGINES_AGREE = """
import json, sys
import cv2, numpy as np
from edge_mer.face.mesh import FaceModels
from edge_mer.assets import faces
from pathlib import Path
found = {}
for engine in ("opencv", "onnxruntime"):
    models = FaceModels(engine)
    for photo in ("astronaut.png", "hopper.png"):
        img = cv2.imread(str(Path(faces.__file__).parent / photo))
        for scale, angle in ((1.0, 0), (0.5, 0), (1.0, 25), (0.5, -25)):
            im = cv2.resize(img, None, fx=scale, fy=scale)
            h, w = im.shape[:2]
            im = cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h))
            out = []
            for face in models.detect(im):
                fitted = models.fit(im, face)
                out.append([list(map(float, face.box))] + ([] if fitted is None else list(fitted.points().values())))
            found.setdefault(f"{photo} x{scale} {angle}", {})[engine] = out
print(json.dumps({"cv2": cv2.__version__, "found": found}))
"""


def test_jetpack6_opencv_dnn_runs_the_face_models_as_onnxruntime_does(tmp_path: Path) -> None:
    python, *wheels = OPENCV_48
    home = _interpreter_home(python)
    if home is None:
        pytest.skip(f"no Python {python} on this machine")
    venv = tmp_path / "venv"
    _ok(_run([str(home / "bin" / f"python{python}"), "-m", "venv", str(venv)], timeout=300))
    _ok(_run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *wheels, "tqdm"], timeout=900))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = json.loads(_ok(_run([str(venv / "bin" / "python"), "-c", FACE_ENGINES_AGREE], env=env)).stdout)
    assert result["cv2"] == "4.8.0"
    for case, by_engine in result["found"].items():
        dnn, ort = by_engine["opencv"], by_engine["onnxruntime"]
        assert len(dnn) == len(ort) == 1, f"{case}: OpenCV DNN found {len(dnn)} faces, ONNX Runtime {len(ort)}"
        assert len(dnn[0]) == len(ort[0]) > 1, f"{case}: no landmarks from one engine"
        gap = max(abs(a - b) for p, q in zip(dnn[0], ort[0]) for a, b in zip(p, q))
        assert gap < 0.5, f"{case}: OpenCV 4.8.0's DNN and ONNX Runtime differ by {gap:.2f} px"
