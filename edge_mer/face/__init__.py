"""Face detection and eye-line alignment (OpenCV only; the device runtime uses it too)."""

from edge_mer.face.align import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAligner, FaceAlignment, NoFaceError

__all__ = ["CANONICAL_EYE_Y", "CANONICAL_IOD", "FaceAligner", "FaceAlignment", "NoFaceError"]
