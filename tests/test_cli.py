"""The command line a newcomer meets first: --help, --version, doctor, and its error lines."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess

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
