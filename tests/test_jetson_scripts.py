"""scripts/jetson/flash.sh and setup.sh, run by real bash against fake BSP folders and fake root file systems."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLASH = REPO / "scripts" / "jetson" / "flash.sh"
SETUP = REPO / "scripts" / "jetson" / "setup.sh"
GPU_CHECK = REPO / "scripts" / "gpu" / "check_flow.sh"
GPU_PREPARE = REPO / "scripts" / "gpu" / "prepare.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

R36_QSPI = "bootloader/generic/cfg/flash_t234_qspi.xml"
R35_QSPI = "bootloader/t186ref/cfg/flash_t234_qspi.xml"


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH or "bash", str(script), *args], capture_output=True, text=True, timeout=30,
                          env=env, check=False)


def _stub(path: Path, marker: Path) -> None:
    """An executable that leaves ``marker`` behind and fails, so any run of it is caught."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho ran >> '{marker}'\nexit 99\n")
    path.chmod(0o755)


@pytest.fixture
def bsp(tmp_path: Path) -> tuple[Path, Path]:
    """(folder holding Linux_for_Tegra, marker file written if a stub runs)."""
    marker = tmp_path / "stub-ran"
    l4t = tmp_path / "bsp" / "Linux_for_Tegra"
    _stub(l4t / "flash.sh", marker)
    _stub(l4t / "tools" / "kernel_flash" / "l4t_initrd_flash.sh", marker)
    return tmp_path / "bsp", marker


def _env_with_lsusb(tmp_path: Path, listing: str) -> dict[str, str]:
    """PATH with a fake lsusb printing ``listing`` in front."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    lsusb = bin_dir / "lsusb"
    lsusb.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}\nEOF\n")
    lsusb.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _would_run(out: str) -> str:
    lines = [line.strip() for line in out.splitlines()]
    return lines[lines.index("would run:") + 2]


@pytest.mark.parametrize(("board", "storage", "expected"), [
    ("orin-nano", None, "sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 "
                        f"-c tools/kernel_flash/flash_l4t_external.xml -p '-c {R35_QSPI}' --showlogs "
                        "--network usb0 jetson-orin-nano-devkit internal"),
    ("orin-nano", "sd", "sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device mmcblk1p1 "
                        f"-c tools/kernel_flash/flash_l4t_external.xml -p '-c {R35_QSPI}' --showlogs "
                        "--network usb0 jetson-orin-nano-devkit internal"),
    ("orin-nx", "nvme", "sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 "
                        f"-c tools/kernel_flash/flash_l4t_external.xml -p '-c {R35_QSPI}' --showlogs "
                        "--network usb0 jetson-orin-nano-devkit internal"),
    ("agx-orin", None, "sudo ./flash.sh jetson-agx-orin-devkit internal"),
    ("agx-orin", "nvme", "sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 "
                         f"-c tools/kernel_flash/flash_l4t_external.xml -p '-c {R35_QSPI}' --showlogs "
                         "--network usb0 jetson-agx-orin-devkit internal"),
    ("xavier-nx", None, "sudo ./flash.sh jetson-xavier-nx-devkit mmcblk0p1"),
    ("xavier-nx", "emmc", "sudo ./flash.sh jetson-xavier-nx-devkit-emmc mmcblk0p1"),
])
def test_flash_dry_run_prints_the_command_and_runs_nothing(bsp: tuple[Path, Path], board: str,
                                                           storage: str | None, expected: str) -> None:
    folder, marker = bsp
    args = ["--board", board, "--bsp", str(folder), "--dry-run"] + (["--storage", storage] if storage else [])
    res = _run(FLASH, *args)
    assert res.returncode == 0, res.stderr
    assert f"cd {(folder / 'Linux_for_Tegra').resolve()}" in res.stdout
    assert _would_run(res.stdout) == expected
    assert "root check skipped (--dry-run)" in res.stdout
    assert not marker.exists()


def test_flash_dry_run_uses_r36_layouts_when_the_bsp_has_them(bsp: tuple[Path, Path]) -> None:
    folder, marker = bsp
    l4t = folder / "Linux_for_Tegra"
    (l4t / "tools" / "kernel_flash" / "flash_l4t_t234_nvme.xml").write_text("<partition_layout/>")
    (l4t / "bootloader" / "generic" / "cfg").mkdir(parents=True)
    res = _run(FLASH, "--board", "orin-nano", "--bsp", str(l4t), "--dry-run")  # the Linux_for_Tegra folder itself
    assert res.returncode == 0, res.stderr
    assert (f"-c tools/kernel_flash/flash_l4t_t234_nvme.xml -p '-c {R36_QSPI}'") in _would_run(res.stdout)
    assert not marker.exists()


@pytest.mark.parametrize(("listing", "expected"), [
    ("Bus 001 Device 012: ID 0955:7523 NVIDIA Corp. APX", "recovery mode: found 0955:7523"),
    ("Bus 001 Device 002: ID 1d6b:0002 Linux Foundation 2.0 root hub", "recovery mode: not found"),
])
def test_flash_dry_run_reports_recovery_mode_without_failing(bsp: tuple[Path, Path], tmp_path: Path,
                                                             listing: str, expected: str) -> None:
    folder, marker = bsp
    res = _run(FLASH, "--board", "orin-nano", "--bsp", str(folder), "--dry-run",
               env=_env_with_lsusb(tmp_path, listing))
    assert res.returncode == 0, res.stderr
    assert expected in res.stdout
    assert not marker.exists()


def test_flash_real_run_stops_at_preflight_without_recovery_device(bsp: tuple[Path, Path], tmp_path: Path) -> None:
    folder, marker = bsp
    env = _env_with_lsusb(tmp_path, "Bus 001 Device 002: ID 1d6b:0002 Linux Foundation 2.0 root hub")
    res = _run(FLASH, "--board", "agx-orin", "--bsp", str(folder), env=env)
    assert res.returncode != 0
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("flash.sh: error: ")
    # as root the recovery check stops it, otherwise the root check does
    assert "recovery mode" in errors[0] or "must run as root" in errors[0]
    assert not marker.exists()


def test_flash_unknown_board_lists_the_boards(bsp: tuple[Path, Path]) -> None:
    folder, marker = bsp
    res = _run(FLASH, "--board", "jetson-tx2", "--bsp", str(folder), "--dry-run")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "flash.sh: error: unknown board 'jetson-tx2': choose one of orin-nano orin-nx agx-orin xavier-nx"]
    assert not marker.exists()


def test_flash_storage_the_board_lacks_is_refused(bsp: tuple[Path, Path]) -> None:
    folder, _ = bsp
    res = _run(FLASH, "--board", "orin-nx", "--storage", "emmc", "--bsp", str(folder), "--dry-run")
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "nvme" in res.stderr


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_flash_missing_bsp_is_one_clear_line(tmp_path: Path, layout: str) -> None:
    target = tmp_path / "no-such-bsp"
    if layout == "empty":
        target.mkdir()
    res = _run(FLASH, "--board", "orin-nano", "--bsp", str(target), "--dry-run")
    assert res.returncode != 0
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("flash.sh: error: ")
    assert str(target) in errors[0]


def test_flash_help() -> None:
    res = _run(FLASH, "--help")
    assert res.returncode == 0
    assert "--board" in res.stdout and "--dry-run" in res.stdout


def _fake_root(tmp_path: Path, line: str) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text(line + "\n")
    return root


@pytest.mark.parametrize(("release_line", "l4t", "tensorrt"), [
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 2023",
     "L4T: R35.4.1", "TensorRT 8.5 (engine API generation 8.5)"),
    ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 2024",
     "L4T: R36.4.0", "TensorRT 10.3 (engine API generation 10"),
])
def test_setup_dry_run_reports_release_and_prints_the_install(tmp_path: Path, release_line: str, l4t: str,
                                                              tensorrt: str) -> None:
    root = _fake_root(tmp_path, release_line)
    prefix = tmp_path / "venv"
    res = _run(SETUP, "--dry-run", "--root", str(root), "--prefix", str(prefix))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert l4t in out.splitlines()
    assert tensorrt in out
    commands = [line[2:] for line in out.splitlines() if line.startswith("+ ")]
    assert f"python3 -m venv --system-site-packages {prefix}" in commands
    assert f"{prefix}/bin/python -m pip install --no-deps {REPO}" in commands
    installs = [c for c in commands if " pip install " in c]
    assert any("pycuda" in c and "CUDA_ROOT=/usr/local/cuda" in c for c in installs)
    assert not any("opencv" in c or "onnxruntime" in c or "tensorrt" in c for c in installs)
    assert not (prefix / "bin").exists()  # nothing ran


def test_setup_dry_run_options_add_their_commands(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64")
    res = _run(SETUP, "--dry-run", "--root", str(root), "--prefix", str(tmp_path / "v"), "--with-onnxruntime",
               "--power-mode", "2", "--clocks")
    assert res.returncode == 0, res.stderr
    commands = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert "sudo nvpmodel -m 2" in commands
    assert "sudo jetson_clocks" in commands
    assert any(c.endswith("pip install 'onnxruntime>=1.16'") for c in commands)
    assert not any("onnxruntime-gpu" in c for c in commands)


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this machine is a Jetson")
def test_setup_without_root_on_a_non_jetson_exits_2() -> None:
    res = _run(SETUP)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["setup.sh: error: not a Jetson (no /etc/nv_tegra_release)"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    res = subprocess.run(["shellcheck", "--shell=bash", str(FLASH), str(SETUP), str(GPU_CHECK), str(GPU_PREPARE)],
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
