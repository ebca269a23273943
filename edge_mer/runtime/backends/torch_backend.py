"""torch on a checkpoint (FP32 or QAT with fake quantization), CPU or CUDA.

The one backend that imports torch, and only when it is constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.backends.base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: Path, device: str | None = None, threads: int | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise UserError("the torch backend needs torch: pip install 'edge-mer[train]'") from None
        from edge_mer.model.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, ck = load_checkpoint(path)
        self.model: Any = model.to(self.device).eval()
        self.checkpoint = ck
        self.size = int(model.cfg.size)
        self.class_names = list(model.cfg.class_names)
        self.precision = "int8-fake-quant" if ck.get("quant") else "fp32"

    def logits(self, motion: np.ndarray, texture: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(motion).to(self.device),
                             self.torch.from_numpy(texture).to(self.device))
        return np.asarray(out.float().cpu().numpy(), np.float32)

    def describe(self) -> str:
        return f"torch {self.torch.__version__} on {self.device} ({self.precision})"
