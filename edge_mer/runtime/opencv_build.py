"""What this OpenCV build can do: TV-L1 (contrib), GStreamer (CSI cameras), FFmpeg (network streams), CUDA,
and where its face cascades are. The sources and the face aligner ask before they rely on one; doctor reports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades",
                "/usr/local/share/opencv4/haarcascades")


def cascade_folder(cv2: Any | None) -> str | None:
    """The folder holding ``haarcascade_frontalface_default.xml``, or None."""
    candidates = []
    if cv2 is not None and hasattr(cv2, "data"):
        candidates.append(str(getattr(cv2.data, "haarcascades", "")))
    candidates += list(CASCADE_DIRS)
    for c in candidates:
        if c and Path(c, "haarcascade_frontalface_default.xml").is_file():
            return str(Path(c))
    return None


def opencv_facts(cv2: Any | None) -> dict[str, Any]:
    if cv2 is None:
        return {}
    info = cv2.getBuildInformation()
    gst = re.search(r"GStreamer:\s*(\S+)", info)
    ffmpeg = re.search(r"FFMPEG:\s*(\S+)", info)
    cuda = re.search(r"NVIDIA CUDA:\s*(\S+)", info)
    return {
        "version": cv2.__version__,
        "contrib": hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create"),
        "gstreamer": bool(gst and gst.group(1).upper().startswith("YES")),
        "ffmpeg": bool(ffmpeg and ffmpeg.group(1).upper().startswith("YES")),
        "cuda": bool(cuda and cuda.group(1).upper().startswith("YES")),
        "cascades": cascade_folder(cv2),
    }
