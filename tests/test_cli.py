"""The command line a newcomer meets first: --help, --version, doctor, and its error lines."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys

import pytest
from conftest import run_cli

from edge_mer import __version__


def test_console_script_help_lists_commands():
    exe = shutil.which("edge-mer")
    assert exe, "the edge-mer console script is not on PATH: is the package installed?"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("doctor", "synth"):
        assert command in proc.stdout


def test_version():
    proc = run_cli("--version", check=True)
    assert proc.stdout.strip() == f"edge-mer {__version__}"


@pytest.mark.parametrize("args", [("synth", "--help"), ("synth", "dataset", "--help"),
                                  ("synth", "video", "--help"), ("doctor", "--help")])
def test_every_command_has_help(args):
    proc = run_cli(*args, check=True)
    assert "usage: edge-mer" in proc.stdout


def test_doctor_json_reports_the_machine():
    proc = run_cli("doctor", "--json", check=True)
    rep = json.loads(proc.stdout)
    for key in ("python", "packages", "opencv", "engines", "cuda_devices", "cameras", "checks"):
        assert key in rep
    assert rep["packages"]["numpy"]["importable"] is True
    assert set(rep["engines"]) == {"tensorrt", "onnxruntime", "torch"}
    assert rep["cameras"] == sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    cv = rep["opencv"]
    assert isinstance(cv["contrib"], bool) and isinstance(cv["gstreamer"], bool)
    # every missing part says what to install
    for check in rep["checks"]:
        assert check["ok"] or check["hint"], check


def test_doctor_text_names_missing_parts_with_hints():
    proc = run_cli("doctor", "--no-torch", check=True)
    assert proc.stdout.startswith("edge-mer doctor: Python")
    rep = json.loads(run_cli("doctor", "--json", "--no-torch", check=True).stdout)
    for check in rep["checks"]:
        if not check["ok"]:
            assert check["hint"] in proc.stdout


def test_bad_output_suffix_is_one_clear_line(tmp_path):
    proc = run_cli("synth", "video", "--seconds", "1", "--out", str(tmp_path / "clip.txt"), "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-mer: error:")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "clip.txt").exists()


def test_bad_size_is_rejected_by_the_parser(tmp_path):
    proc = run_cli("synth", "video", "--size", "10by10", "--out", str(tmp_path / "a.mp4"))
    assert proc.returncode == 2
    assert "WIDTHxHEIGHT" in proc.stderr


def test_too_few_subjects_for_the_composite(tmp_path):
    proc = run_cli("synth", "dataset", "--layout", "megc2019", "--subjects", "2", "--out", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["edge-mer: error: the megc2019 layout needs at least 3 subjects "
                                                "(one per dataset)"]


@pytest.mark.parametrize(("args", "says"), [
    (("train", "--features", "f", "--out", "r", "--epochs", "0"), "argument --epochs: must be at least 1, got 0"),
    (("train", "--features", "f", "--out", "r", "--batch-size", "0"), "argument --batch-size: must be at least 1"),
    (("data", "prepare", "--dataset", "casme2", "--root", "r", "--out", "o", "--size", "8"),
     "argument --size: must be at least 32, got 8"),
    (("bench", "--model-only", "--runs", "0"), "argument --runs: must be at least 1, got 0"),
    (("run", "--demo", "--duration", "-5"), "argument --duration: must be a positive number, got -5"),
    (("spot", "--video", "v.mp4", "--fps", "nan"), "argument --fps: must be a positive number, got nan"),
    (("deploy", "--host", "h", "--port", "70000"), "argument --port: must be from 1 to 65535, got 70000"),
    (("nosuch",), "invalid choice: 'nosuch'"),
])
def test_impossible_values_are_refused_in_one_line_before_any_work(args, says):
    proc = run_cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-mer: error: ") and says in proc.stderr


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`edge-mer doctor --json | true`: the reader is gone before doctor (a second of probing) writes."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_mer", "doctor", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err


WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if not installed
from edge_mer.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("missing", "args", "says"), [
    ("cv2", ("run", "--demo", "--max-frames", "5"), "edge-mer run needs OpenCV: pip install 'edge-mer[desktop]'"),
    ("cv2", ("spot", "--video", "clip.mp4"), "edge-mer spot needs OpenCV"),
    ("onnxruntime,tensorrt", ("run", "--demo", "--max-frames", "5", "--backend", "onnxruntime"),
     "ONNX Runtime is not installed: pip install onnxruntime"),
])
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(missing, args, says):
    """`pip install edge-mer` alone, then a command that needs more: what to install, not a traceback."""
    proc = subprocess.run([sys.executable, "-c", WITHOUT, missing, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-mer: error: ") and says in proc.stderr
