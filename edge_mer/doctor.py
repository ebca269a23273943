"""What this machine can run: Python, packages, OpenCV build, engines, GPUs, cameras.

Every check is cheap and never fails the command; a missing part comes with a
one-line hint of what to install. Nothing here imports torch unless it is
installed, and the report works on a machine with numpy alone.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_mer.runtime.gpu import cuda_devices as probe_cuda
from edge_mer.runtime.opencv_build import opencv_facts

# (import name, distribution names to ask for a version, hint when missing)
PACKAGES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("numpy", ("numpy",), "pip install numpy"),
    ("cv2", ("opencv-contrib-python-headless", "opencv-contrib-python", "opencv-python-headless",
             "opencv-python"),
     "pip install 'edge-mer[desktop]' (on a Jetson use JetPack's OpenCV: apt install python3-opencv)"),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu"), "pip install onnxruntime"),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
     "TensorRT comes with JetPack (apt install python3-libnvinfer) or NVIDIA's tensorrt wheels"),
    ("pycuda", ("pycuda",), "pip install pycuda (builds against the local CUDA toolkit; "
                            "on a Jetson run scripts/jetson/setup.sh)"),
    ("torch", ("torch",), "pip install 'edge-mer[train]' (training and export only; devices need no torch)"),
    ("onnx", ("onnx",), "pip install 'edge-mer[train]'"),
    ("picamera2", ("picamera2",), "on a Raspberry Pi: sudo apt install python3-picamera2"),
    ("openpyxl", ("openpyxl",), "pip install openpyxl (spreadsheets of the datasets)"),
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


@dataclass
class Report:
    python: str
    platform: str
    machine: str
    jetson: str | None
    packages: dict[str, dict[str, Any]] = field(default_factory=dict)
    opencv: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, bool] = field(default_factory=dict)
    cuda_devices: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    face: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dist_version(names: tuple[str, ...]) -> str | None:
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            continue
    return None


def _try_import(name: str) -> tuple[Any, str]:
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # a broken install says why, whatever it raises
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


def jetson_release() -> str | None:
    path = Path("/etc/nv_tegra_release")
    if not path.exists():
        return None
    first = path.read_text(errors="replace").splitlines()[:1]
    return first[0].strip("# ").strip() if first else "unknown L4T"


def cuda_devices(pycuda_ok: bool) -> list[str]:
    """The GPUs: pycuda's (the probe the runtime uses), else what nvidia-smi or a Jetson's release file says."""
    if pycuda_ok:
        found, _ = probe_cuda()
        if found:
            return list(found)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
            return [line.split(" (UUID")[0] for line in out.splitlines() if line.startswith("GPU")]
        except (OSError, subprocess.SubprocessError):
            return []
    if jetson_release():
        return ["Jetson integrated GPU (install pycuda to query it)"]
    return []


def collect(import_heavy: bool = True) -> Report:
    """Inspect this machine. ``import_heavy=False`` skips importing torch."""
    rep = Report(python=sys.version.split()[0], platform=platform.platform(), machine=platform.machine(),
                 jetson=jetson_release())
    modules: dict[str, Any] = {}
    for name, dists, hint in PACKAGES:
        version = _dist_version(dists)
        if name == "torch" and not import_heavy:
            mod, err = (object() if version else None), ("" if version else "not installed")
        else:
            mod, err = _try_import(name)
        modules[name] = mod
        if mod is not None and version is None:
            version = str(getattr(mod, "__version__", "unknown"))
        rep.packages[name] = {"version": version, "importable": mod is not None, "error": err or None}
        rep.checks.append(Check(name, mod is not None, version or err or "not installed",
                                "" if mod is not None else hint))
    rep.opencv = opencv_facts(modules["cv2"])
    if modules["cv2"] is not None:
        facts = rep.opencv
        rep.checks.append(Check("opencv contrib (TV-L1 flow)", facts["contrib"], str(facts["contrib"]),
                                "" if facts["contrib"] else "pip install opencv-contrib-python-headless"))
        rep.checks.append(Check("opencv gstreamer (csi:// cameras)", facts["gstreamer"],
                                str(facts["gstreamer"]), "" if facts["gstreamer"] else
                                "on a Jetson use JetPack's OpenCV; pip wheels are built without GStreamer"))
        rep.checks.append(Check("face cascades", facts["cascades"] is not None, str(facts["cascades"]),
                                "" if facts["cascades"] else
                                "apt install opencv-data, or an opencv wheel that ships cv2/data"))
        from edge_mer.face.mesh import detector_facts  # imports OpenCV, which is optional here

        rep.face = detector_facts()
        mesh = rep.face["detector"] == "mesh"
        rep.checks.append(Check("face detector", mesh, f"BlazeFace + FaceMesh through {rep.face['engine']}" if mesh
                                else f"Haar cascades ({rep.face['why']})",
                                "" if mesh else "pip install onnxruntime, or an OpenCV with its dnn module"))
    rep.engines = {"tensorrt": modules["tensorrt"] is not None,
                   "onnxruntime": modules["onnxruntime"] is not None,
                   "torch": modules["torch"] is not None}
    if not any(rep.engines.values()):
        rep.checks.append(Check("inference engine", False, "none",
                                "pip install onnxruntime (any CPU) or use TensorRT on a Jetson"))
    rep.cuda_devices = cuda_devices(modules["pycuda"] is not None)
    rep.checks.append(Check("cuda devices", bool(rep.cuda_devices), ", ".join(rep.cuda_devices) or "none",
                            "" if rep.cuda_devices else "no NVIDIA GPU found: the CPU path (ONNX Runtime, "
                            "OpenCV flow) is used"))
    from edge_mer.runtime.sources import list_cameras  # numpy only; OpenCV is imported when a source opens

    rep.cameras = list_cameras()
    rep.checks.append(Check("cameras", bool(rep.cameras), ", ".join(rep.cameras) or "none",
                            "" if rep.cameras else "no /dev/video* device; use --source FILE or --demo"))
    return rep


def format_report(rep: Report) -> str:
    lines = [f"edge-mer doctor: Python {rep.python} on {rep.platform} ({rep.machine})"]
    if rep.jetson:
        lines.append(f"Jetson: {rep.jetson}")
    width = max(len(c.name) for c in rep.checks)
    for c in rep.checks:
        mark = "ok " if c.ok else "-- "
        line = f"  {mark}{c.name.ljust(width)}  {c.detail}"
        if c.hint:
            line += f"\n     {' ' * width}  hint: {c.hint}"
        lines.append(line)
    engines = [k for k, v in rep.engines.items() if v]
    lines.append(f"inference engines: {', '.join(engines) or 'none'}")
    return "\n".join(lines)

