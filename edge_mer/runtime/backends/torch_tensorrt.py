"""Torch-TensorRT on a checkpoint (x86 workstations with CUDA, Jetson Thor).

Compiles the model (FP32, or a QAT checkpoint whose fake quantizers export as
Q/DQ) through ``torch.export`` and ``torch_tensorrt.dynamo.compile`` for batch
1. Imported lazily: elsewhere construction fails with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.backends.base import Backend


class TorchTensorRTBackend(Backend):
    name = "torch-tensorrt"

    def __init__(self, path: Path) -> None:
        try:
            import torch
            import torch_tensorrt
        except ImportError:
            raise UserError("the torch-tensorrt backend needs torch and torch-tensorrt with CUDA "
                            "(pip install torch-tensorrt where NVIDIA publishes wheels)") from None
        if not torch.cuda.is_available():
            raise UserError("the torch-tensorrt backend needs a CUDA GPU")
        from edge_mer.model.checkpoint import load_checkpoint

        model, ck = load_checkpoint(path)
        self.torch = torch
        self.size = int(model.cfg.size)
        self.class_names = list(model.cfg.class_names)
        self.precision = "int8" if ck.get("quant") else "fp32"
        model = model.cuda().eval()
        s = self.size
        example = (torch.zeros(1, 3, s, s, device="cuda"), torch.zeros(1, 1, s, s, device="cuda"))
        precisions = {torch.float32, torch.int8} if ck.get("quant") else {torch.float32}
        with _export_mode(ck):
            program = torch.export.export(model, example)
        self.module: Any = torch_tensorrt.dynamo.compile(program, inputs=list(example),
                                                         enabled_precisions=precisions, min_block_size=1)

    def logits(self, motion: np.ndarray, texture: np.ndarray) -> np.ndarray:
        outs = []
        with self.torch.inference_mode():
            for i in range(len(motion)):  # compiled for batch 1
                m = self.torch.from_numpy(motion[i:i + 1]).cuda()
                t = self.torch.from_numpy(texture[i:i + 1]).cuda()
                outs.append(self.module(m, t).float().cpu().numpy())
        return np.concatenate(outs).astype(np.float32)


def _export_mode(ck: dict[str, Any]) -> Any:
    """modelopt's export mode for QAT checkpoints (fake quantizers become Q/DQ), else nothing."""
    import contextlib

    if not ck.get("quant"):
        return contextlib.nullcontext()
    from modelopt.torch.quantization.utils import export_torch_mode

    return export_torch_mode()
