from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed ``edge-mer`` entry point as a user would."""
    proc = subprocess.run([sys.executable, "-m", "edge_mer", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"edge-mer {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def fake_nvcc(path: Path) -> Path:
    """An executable named nvcc at ``path`` that does nothing: where a CUDA compiler is looked for, not run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def env_without_nvcc(prefix: Path, toolkits: tuple[str, ...] = ()) -> dict[str, str]:
    """This environment with no nvcc on PATH and CUDA_PREFIX at ``prefix`` holding fake toolkits (cuda-X.Y with
    bin/nvcc and include/cuda.h), laid out as JetPack lays them out in /usr/local."""
    prefix.mkdir(parents=True, exist_ok=True)
    for name in toolkits:
        fake_nvcc(prefix / name / "bin" / "nvcc")
        (prefix / name / "include").mkdir()
        (prefix / name / "include" / "cuda.h").write_text("")
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvcc").exists()]
    return {**os.environ, "PATH": os.pathsep.join(path), "CUDA_PREFIX": str(prefix), "CUDA_ROOT": str(prefix / "cuda")}


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` for the test; skips where this machine cannot mount one (not root, or no
    CAP_SYS_ADMIN in a container)."""
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A folder on an 8 KiB tmpfs (two pages), for what a full disk does to a writer."""
    yield from _tmpfs(tmp_path / "small-disk", "size=8k")


@pytest.fixture
def read_only_disk(tmp_path) -> Iterator[Path]:
    """A folder on a read-only tmpfs: not writable, for root too."""
    yield from _tmpfs(tmp_path / "read-only", "ro,size=4k")


@pytest.fixture(scope="session")
def tvl1():
    cv2 = pytest.importorskip("cv2")
    if hasattr(cv2, "optflow"):
        return cv2.optflow.DualTVL1OpticalFlow_create()
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)


GENERATED_LAYOUTS = ("casme2", "samm", "smic", "casme3", "megc2019")


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> dict[str, Path]:
    """One small synthetic dataset per layout, written by the generator in the real layouts."""
    from edge_mer.data.synthetic import DatasetConfig, write_dataset

    base = tmp_path_factory.mktemp("generated")
    roots = {}
    for layout in GENERATED_LAYOUTS:
        subjects = 6 if layout == "megc2019" else 3
        cfg = DatasetConfig(layout=layout, subjects=subjects, clips_per_subject=3, size=(160, 120), fps=40,
                            seed=11, missing_apex_rate=0.2)
        write_dataset(cfg, base / layout, progress=False)
        roots[layout] = base / layout
    return roots


@pytest.fixture(scope="session")
def composite_features(generated, tmp_path_factory) -> Path:
    """DIS features (S = 112) of the small synthetic MEGC2019 composite."""
    out = tmp_path_factory.mktemp("feat") / "megc"
    run_cli("data", "prepare", "--dataset", "megc2019", "--root", str(generated["megc2019"]), "--out", str(out),
            "--flow", "dis", "--quiet", check=True)
    return out


def _have_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")  # type stubs alone are not TensorRT


def _have_cuda() -> bool:
    """pycuda sees a GPU (the runtime's own probe), or torch does (GPU tests that need no pycuda)."""
    from edge_mer.runtime.gpu import cuda_unavailable

    if cuda_unavailable() is None:
        return True
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    """Hardware tests skip with the reason where the hardware is missing; slow, jetpack and twin tests run with
    -m."""
    import glob

    wants_slow = "slow" in (config.getoption("-m") or "")
    wants_jetpack = "jetpack" in (config.getoption("-m") or "")
    wants_twin = "twin" in (config.getoption("-m") or "")
    checks = {"gpu": (_have_cuda, "no CUDA GPU on this machine"),
              "tensorrt": (_have_tensorrt, "TensorRT is not installed here (Jetson / NVIDIA GPU machines only)"),
              "camera": (lambda: bool(glob.glob("/dev/video*")), "no camera (/dev/video*) on this machine"),
              "jetson": (lambda: Path("/etc/nv_tegra_release").exists(), "not an NVIDIA Jetson")}
    found: dict[str, bool] = {}
    for item in items:
        if "slow" in item.keywords and not wants_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow"))
        if "jetpack" in item.keywords and not wants_jetpack:
            item.add_marker(pytest.mark.skip(reason="JetPack userland environments: run with -m jetpack"))
        if "twin" in item.keywords and not wants_twin:
            item.add_marker(pytest.mark.skip(reason="the deployment twins (debootstrap, qemu, systemd-nspawn; "
                                                    "minutes): run with -m twin"))
        for name, (check, reason) in checks.items():
            if name in item.keywords:
                if name not in found:
                    found[name] = check()
                if not found[name]:
                    item.add_marker(pytest.mark.skip(reason=reason))
