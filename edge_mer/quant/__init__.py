"""INT8: calibration sets, post-training quantization of ONNX files (no torch), QAT and export (torch)."""
