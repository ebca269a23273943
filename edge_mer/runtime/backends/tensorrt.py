"""TensorRT: a serialized engine, a pycuda stream, page-locked host buffers.

Device and host buffers are allocated once for the engine's largest batch.
``device_inputs()`` exposes the input device pointers so a CUDA flow stage can
write ``motion``/``texture`` straight into them and call ``infer_device`` (no
trip through host memory). Every TensorRT generation runs the engine through
named I/O tensors (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``): 8.5.2 (JetPack 5.1) has them already, and the binding
API went in 10.0. tests/test_tensorrt_api.py holds this file's use of TensorRT
against each version's bindings, as it does engine.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.artifact import INPUTS, OUTPUT
from edge_mer.runtime.backends.base import Backend
from edge_mer.runtime.engine import MAX_BATCH, find_or_build, import_tensorrt, read_engine_info

if TYPE_CHECKING:
    import tensorrt as trt


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, fp16: bool = False, device: int = 0) -> None:
        import_tensorrt()  # one clear error when TensorRT is missing or only its stubs are installed
        import tensorrt as trt

        self.version = str(trt.__version__)
        try:
            import pycuda.driver as cuda
        except ImportError:
            raise UserError("pycuda is not installed: on a Jetson run scripts/jetson/setup.sh") from None
        self.cuda = cuda
        engine_path = find_or_build(path, fp16=fp16)
        info = read_engine_info(engine_path)
        self.info = info
        self.size = int(info.meta["size"])
        self.class_names = list(info.meta["class_names"])
        self.precision = str(info.meta["precision"])
        self.max_batch = int(info.meta.get("max_batch", MAX_BATCH))
        cuda.init()
        self.ctx = cuda.Device(device).retain_primary_context()
        self.ctx.push()
        try:
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine: trt.ICudaEngine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise UserError(f"TensorRT could not load {engine_path.name} (built by another version?); "
                                "rebuild it with edge-mer build-engine")
            self.engine: trt.ICudaEngine = engine
            self.context: trt.IExecutionContext = engine.create_execution_context()
            self.stream = cuda.Stream()
            shapes = {"motion": (3, self.size, self.size), "texture": (1, self.size, self.size),
                      OUTPUT: (len(self.class_names),)}
            self.host = {n: cuda.pagelocked_empty((self.max_batch, *s), np.float32) for n, s in shapes.items()}
            self.dev = {n: cuda.mem_alloc(self.host[n].nbytes) for n in shapes}
        finally:
            self.ctx.pop()

    def device_inputs(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """name -> (device pointer, shape of one sample) of the input buffers (float32, as exported)."""
        return {n: (int(self.dev[n]), tuple(self.host[n].shape[1:])) for n in INPUTS}

    def logits(self, motion: np.ndarray, texture: np.ndarray) -> np.ndarray:
        outs = []
        for s in range(0, len(motion), self.max_batch):
            b = min(self.max_batch, len(motion) - s)
            self.host["motion"][:b] = motion[s:s + b]
            self.host["texture"][:b] = texture[s:s + b]
            outs.append(self._infer(b, copy_inputs=True))
        return np.concatenate(outs)

    def infer_device(self, batch: int = 1) -> np.ndarray:
        """Run on inputs already written to ``device_inputs()``; probabilities (batch, classes)."""
        from edge_mer.runtime.backends.base import softmax

        return softmax(self._infer(batch, copy_inputs=False))

    def _infer(self, batch: int, copy_inputs: bool) -> np.ndarray:
        cuda = self.cuda
        self.ctx.push()
        try:
            if copy_inputs:
                for n in INPUTS:
                    cuda.memcpy_htod_async(self.dev[n], self.host[n][:batch], self.stream)
            self._run(batch)
            cuda.memcpy_dtoh_async(self.host[OUTPUT][:batch], self.dev[OUTPUT], self.stream)
            self.stream.synchronize()
        finally:
            self.ctx.pop()
        return self.host[OUTPUT][:batch].copy()

    def _run(self, batch: int) -> None:
        """Named I/O tensors: the batch's input shapes, every tensor's address, one asynchronous run."""
        for n in INPUTS:
            self.context.set_input_shape(n, (batch, *self.host[n].shape[1:]))
        for n in (*INPUTS, OUTPUT):
            self.context.set_tensor_address(n, int(self.dev[n]))
        if not self.context.execute_async_v3(self.stream.handle):
            raise UserError("TensorRT execution failed")

    def describe(self) -> str:
        return f"tensorrt {self.version} ({self.precision}, {self.info.path.name})"

    def close(self) -> None:
        self.ctx.push()
        try:
            for buf in self.dev.values():
                buf.free()
        finally:
            self.ctx.pop()
