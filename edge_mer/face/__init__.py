"""Faces: detection and landmarks (the shipped BlazeFace and FaceMesh, Haar as the fallback), following, and the
eye-line alignment to the crop (the device runtime uses it too: numpy and OpenCV only)."""

from edge_mer.face.align import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAligner, FaceAlignment, NoFaceError

__all__ = ["CANONICAL_EYE_Y", "CANONICAL_IOD", "FaceAligner", "FaceAlignment", "NoFaceError"]
