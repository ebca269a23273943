"""Checkpoints: the model rebuilt from its file alone (config, weights and, after QAT, its quantizers).

A checkpoint carries the MMT's config, so export and the torch backends need no training code;
a QAT checkpoint also carries modelopt's state, restored onto the fresh model before its weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_mer.errors import UserError
from edge_mer.model.config import MMTConfig

CHECKPOINT_FORMAT = "edge-mer-checkpoint/1"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """modelopt prints to stdout and warns about optional packages; keep stdout for results."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def modelopt() -> tuple[Any, Any]:
    """(modelopt.torch.quantization, modelopt.torch.opt), or one clear error."""
    try:
        with quiet():
            import modelopt.torch.opt as mto
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise UserError(f"QAT and its checkpoints need NVIDIA's TensorRT Model Optimizer: pip install "
                        f"'edge-mer[train]' (import failed: {exc})") from None
    return mtq, mto


def restore_quantizers(model: Any, quant: dict[str, Any]) -> Any:
    """Rebuild the quantized structure of a QAT checkpoint on a fresh model (before loading its weights)."""
    _, mto = modelopt()
    with quiet():
        return mto.restore_from_modelopt_state(model, quant["modelopt_state"])


def load_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """(the model in eval mode, the checkpoint's dict); one clear error for a missing or foreign file."""
    import torch

    from edge_mer.model.build import build_model

    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an edge-mer checkpoint")
    model = build_model(MMTConfig.from_dict(ck["config"]))
    if ck.get("quant"):
        model = restore_quantizers(model, ck["quant"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck
