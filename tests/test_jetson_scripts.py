"""scripts/jetson/setup.sh and the GPU scripts, run by real bash against fake root file systems."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import env_without_nvcc

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "jetson" / "setup.sh"
GPU_CHECK = REPO / "scripts" / "gpu" / "check_flow.sh"
GPU_PREPARE = REPO / "scripts" / "gpu" / "prepare.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH or "bash", str(script), *args], capture_output=True, text=True, timeout=30,
                          env=env, check=False)


def _fake_root(tmp_path: Path, line: str) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text(line + "\n")
    return root


def _commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize(("release_line", "l4t", "expected"), [
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 2023",
     "L4T: R35.4.1", "JetPack 5.1.x, Python 3.8, TensorRT 8.5 (engine API generation 8"),
    ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 2024",
     "L4T: R36.3.0", "JetPack 6.0, Python 3.10, TensorRT 8.6 (engine API generation 8"),
    ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 2024",
     "L4T: R36.4.0", "TensorRT 10.3 (engine API generation 10"),
    ("# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 00:55:42 2025",
     "L4T: R38.2.0", "JetPack 7.x, Python 3.12, TensorRT 10.13 or newer"),
])
def test_setup_dry_run_reports_release_and_prints_the_install(tmp_path: Path, release_line: str, l4t: str,
                                                              expected: str) -> None:
    root = _fake_root(tmp_path, release_line)
    prefix = tmp_path / "venv"
    env = env_without_nvcc(tmp_path / "usr-local", ("cuda-11.4", "cuda-12.6"))
    res = _run(SETUP, "--dry-run", "--root", str(root), "--prefix", str(prefix), env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert l4t in out.splitlines()
    assert expected in out
    commands = _commands(out)
    assert f"python3 -m venv --system-site-packages {prefix}" in commands
    # every install is held to the system's numpy by the constraints file
    installs = [c for c in commands if " pip install " in c]
    assert all(f"-c {prefix}/constraints.txt" in c for c in installs if "--upgrade pip" not in c)
    assert f"{prefix}/bin/python -m pip install -c {prefix}/constraints.txt {REPO}" in commands
    # pycuda built against JetPack's numpy, with the newest toolkit (nvcc is not on a Jetson's PATH)
    toolkit = env["CUDA_PREFIX"] + "/cuda-12.6"
    pycuda = [c for c in installs if "pycuda" in c]
    assert len(pycuda) == 1 and "--no-build-isolation 'pycuda>=2025.1.2'" in pycuda[0]
    assert f"CUDA_ROOT={toolkit} PATH={toolkit}/bin:" in pycuda[0]
    assert not any("opencv" in c or "onnxruntime" in c or "tensorrt" in c or "numpy" in c for c in installs)
    assert not (prefix / "bin").exists()  # nothing ran


def test_setup_without_a_cuda_compiler_skips_pycuda_and_says_so(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64")
    res = _run(SETUP, "--dry-run", "--root", str(root), "--prefix", str(tmp_path / "v"),
               env=env_without_nvcc(tmp_path / "usr-local"))
    assert res.returncode == 0, res.stderr
    assert not any("pycuda" in c for c in _commands(res.stdout))
    assert "no CUDA compiler (nvcc)" in res.stderr and "pycuda is skipped" in res.stderr


def test_setup_dry_run_options_add_their_commands(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64")
    prefix = tmp_path / "v"
    res = _run(SETUP, "--dry-run", "--root", str(root), "--prefix", str(prefix), "--with-onnxruntime",
               "--power-mode", "2", "--clocks")
    assert res.returncode == 0, res.stderr
    commands = _commands(res.stdout)
    assert "sudo nvpmodel -m 2" in commands
    assert "sudo jetson_clocks" in commands
    assert f"{prefix}/bin/python -m pip install -c {prefix}/constraints.txt onnxruntime" in commands
    assert not any("onnxruntime-gpu" in c for c in commands)


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this machine is a Jetson")
def test_setup_without_root_on_a_non_jetson_exits_2() -> None:
    res = _run(SETUP)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["setup.sh: error: not a Jetson (no /etc/nv_tegra_release)"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    res = subprocess.run(["shellcheck", "--shell=bash", str(SETUP), str(GPU_CHECK), str(GPU_PREPARE)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA GPU is here")
def test_gpu_check_says_it_needs_a_gpu(tmp_path) -> None:
    res = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, OUT=str(tmp_path / "out")))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "no NVIDIA GPU here" in res.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_prepare_needs_a_prebuilt_pycuda(tmp_path) -> None:
    had_folder = (REPO / ".gpu").exists()
    for args in ([], [str(tmp_path)]):  # no folder; a folder without pycuda-*.tgz
        res = subprocess.run(["bash", str(GPU_PREPARE), *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("prepare.sh: ")
    assert (REPO / ".gpu").exists() == had_folder  # a refusal makes nothing
