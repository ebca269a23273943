"""The ONNX artefact and its JSON sidecar.

``model.onnx`` travels with ``model.onnx.json``: the model config, class names,
the normalisation constants of the inputs, the input/output spec, the
precision (``fp32`` or ``int8``), the sha256 of the ONNX file, and where one
exists the file of the other precision (``companion``), so a CPU backend can
choose the faster one; an INT8 file also carries its quality gate's figures and
verdict (``quality``), and one that failed is never chosen for its companion.
Every reader checks the sha256 and refuses a sidecar that belongs to another file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mer.atomic import write_text
from edge_mer.errors import UserError

SIDECAR_FORMAT = "edge-mer-onnx/1"
INPUTS = ("motion", "texture")
OUTPUT = "logits"
# the packaged demo model (synthetic data only): the default of run, bench and the self-test
DEMO_MODEL = Path(__file__).resolve().parent.parent / "assets" / "models" / "demo.int8.onnx"


def default_model() -> Path:
    """The packaged demo model, or one clear error when the installation lacks it."""
    if not DEMO_MODEL.is_file():
        raise UserError(f"the packaged demo model is missing ({DEMO_MODEL}); pass --model MODEL.onnx")
    return DEMO_MODEL


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_stem(onnx_path: Path) -> str:
    """The file's name without ``.onnx`` (``model.int8.onnx`` -> ``model.int8``), the base of names made from it."""
    return onnx_path.stem if onnx_path.suffix == ".onnx" else onnx_path.name


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def input_spec(size: int) -> dict[str, Any]:
    return {"motion": {"shape": ["batch", 3, size, size], "dtype": "float32",
                       "channels": ["u", "v", "strain"]},
            "texture": {"shape": ["batch", 1, size, size], "dtype": "float32", "channels": ["gray"]}}


@dataclass(frozen=True)
class Artifact:
    """An ONNX file with its sidecar, checked."""

    path: Path
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.meta["config"]["size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision", "fp32"))

    @property
    def usable(self) -> bool:
        """False when the file failed its INT8 quality gate (``quality.usable`` in the sidecar, written by
        calibrate and export); a file without a gate's verdict (FP32, older exports) is usable."""
        q = self.meta.get("quality")
        return not (isinstance(q, dict) and q.get("usable") is False)

    def companion(self) -> Artifact | None:
        """The file of the other precision named by the sidecar, when it is present and matches."""
        c = self.meta.get("companion")
        if not c:
            return None
        other = self.path.parent / c["file"]
        if not other.is_file() or not sidecar_path(other).is_file():
            return None
        try:
            art = load_artifact(other)
        except UserError:
            return None
        return art if art.meta["sha256"] == c["sha256"] else None


def write_sidecar(onnx_path: Path, meta: dict[str, Any], staged: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Write ``onnx_path``.json with the file's sha256 (atomically). ``staged``: (where the file's bytes are now,
    where its sidecar goes now), both temporary names that land together with the file (``replacing_together``)."""
    data, side = staged or (onnx_path, sidecar_path(onnx_path))
    doc = {"format": SIDECAR_FORMAT, **meta, "file": onnx_path.name, "sha256": sha256(data),
           "bytes": data.stat().st_size}
    write_text(side, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def load_artifact(onnx_path: Path, check_hash: bool = True) -> Artifact:
    if not onnx_path.is_file():
        raise UserError(f"model not found: {onnx_path}")
    side = sidecar_path(onnx_path)
    if not side.is_file():
        raise UserError(f"{onnx_path} has no sidecar {side.name}: export it with edge-mer export "
                        "(or edge-mer calibrate), which writes both")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {side}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{side} is not an edge-mer model sidecar")
    if check_hash and meta.get("sha256") != sha256(onnx_path):
        raise UserError(f"{onnx_path} does not match its sidecar (sha256 differs): the file was changed or the "
                        "sidecar belongs to another export")
    return Artifact(onnx_path, meta)
