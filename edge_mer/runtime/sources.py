"""Frame sources by URI: one factory, one small interface, BGR uint8 frames out.

* ``0``, ``/dev/video0``, ``v4l2:///dev/video0``: a V4L2 camera (USB webcams,
  UVC devices; a Raspberry Pi camera module goes through ``picam://``). Live.
* ``csi://0``: a Jetson CSI camera through GStreamer's ``nvarguscamerasrc``
  (needs JetPack's OpenCV). Live.
* ``picam://0``: a Raspberry Pi camera through picamera2. Live.
* ``rtsp://``, ``http(s)://``: a network stream through FFmpeg. Live.
* a path or ``file://path``: a video file, or a folder of numbered frames.
* ``demo://?seconds=60&fps=30&size=640x480&seed=0&subject=0``: the synthetic
  long video with micro-expressions, rendered while it plays, with its truth.

Every source answers ``read() -> (ok, frame)``, ``fps``, ``size`` (width,
height), ``live``, ``describe()`` and ``close()``, and is a context manager.
``flip`` uses the Jetson ``nvvidconv`` flip-method numbers for every source:
CSI cameras flip in hardware, the others with OpenCV.

Sources that are not live can be paced to their frame rate (``realtime``): a
file then plays like a camera. Live sources are paced by the device itself.

cv2 is imported inside the functions that use it and picamera2 only for
``picam://``, so importing this module costs numpy alone.
"""

from __future__ import annotations

import glob
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.native_stderr import native_stderr
from edge_mer.runtime.opencv_build import opencv_facts
from edge_mer.spot.truth import TruthInterval

if TYPE_CHECKING:
    from edge_mer.synth.video import VideoConfig

#: nvvidconv flip-method: 0 none, 1 rotate 90° counter-clockwise, 2 rotate 180°, 3 rotate 90° clockwise,
#: 4 horizontal flip, 5 flip across the upper-right diagonal, 6 vertical flip, 7 flip across the upper-left diagonal
FLIP_METHODS = ("none", "rotate-90-ccw", "rotate-180", "rotate-90-cw", "horizontal", "upper-right-diagonal",
                "vertical", "upper-left-diagonal")
NETWORK_TIMEOUT_S = 5.0
CSI_DEFAULT = (1280, 720, 30.0)
PICAM_DEFAULT = (640, 480, 30.0)
DEMO_KEYS = ("seconds", "fps", "size", "seed", "subject")
OPENCV_WHEELS = "opencv-python opencv-python-headless opencv-contrib-python opencv-contrib-python-headless"


@dataclass(frozen=True)
class OpenOptions:
    """What the caller asked of a source; kept so a lost source can be opened again the same way."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    flip: int = 0
    realtime: bool | None = None


def list_cameras() -> list[str]:
    """The V4L2 device nodes of this machine, ``/dev/video2`` before ``/dev/video10``."""
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


def cameras_line() -> str:
    cams = list_cameras()
    return f"cameras here: {', '.join(cams)}" if cams else "no cameras found (use a video file or demo://)"


# the credentials of rtsp://user:password@host, and the values of query parameters that carry a secret in
# the URLs cameras accept (rtsp://host/stream?user=admin&password=...)
_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")
_SECRET_VALUES = re.compile(r"(?i)([?&](?:password|passwd|pass|pwd|secret|token|key|auth|signature|sig)=)[^&#]*")


def redact(uri: str) -> str:
    """``uri`` without its secrets, for messages and logs."""
    return _SECRET_VALUES.sub(r"\1***", _CREDENTIALS.sub(r"\1***@", uri))


def orient(frame: np.ndarray, flip: int) -> np.ndarray:
    """``frame`` flipped or rotated like nvvidconv's ``flip-method=flip``."""
    import cv2

    if flip == 0:
        return frame
    if flip == 1:
        return cv2.rotate(frame, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if flip == 2:
        return cv2.rotate(frame, cv2.ROTATE_180)
    if flip == 3:
        return cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    if flip == 4:
        return cv2.flip(frame, 1)
    if flip == 5:
        return cv2.rotate(cv2.transpose(frame), cv2.ROTATE_180)
    if flip == 6:
        return cv2.flip(frame, 0)
    if flip == 7:
        return cv2.transpose(frame)
    raise ValueError(f"flip must be 0..7 (nvvidconv flip-method), got {flip}")


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Three-channel uint8 BGR from what a backend delivers (gray, BGRA or BGR)."""
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def csi_pipeline(sensor_id: int, width: int, height: int, fps: float, flip: int) -> str:
    """The GStreamer pipeline of a Jetson CSI camera: NVMM capture, flip in nvvidconv, BGR to a 1-deep appsink.

    ``drop=true max-buffers=1`` keeps only the newest frame in the appsink, so a
    slow reader gets fresh frames instead of a growing queue. Rotations (flip
    1, 3, 5, 7) swap the output width and height.
    """
    if not 0 <= flip < len(FLIP_METHODS):
        raise ValueError(f"flip must be 0..7 (nvvidconv flip-method), got {flip}")
    if width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"width, height and fps must be positive, got {width}x{height} @ {fps}")
    out_w, out_h = (height, width) if flip in (1, 3, 5, 7) else (width, height)
    rate = Fraction(fps).limit_denominator(1001)
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
            f"framerate=(fraction){rate.numerator}/{rate.denominator}, format=(string)NV12 ! "
            f"nvvidconv flip-method={flip} ! "
            f"video/x-raw, width=(int){out_w}, height=(int){out_h}, format=(string)BGRx ! "
            "videoconvert ! video/x-raw, format=(string)BGR ! "
            "appsink drop=true max-buffers=1")


class Source:
    """A stream of BGR uint8 (H, W, 3) frames.

    ``size`` is (width, height) after ``flip``; ``length`` the frame count of a
    file, folder or demo as announced (None for live sources and streams of unknown length);
    ``frames_read`` the frames ``read()`` has returned; ``error`` why the last ``read()``
    failed when that was not a plain end of stream; ``early_end()`` says when a file or
    folder ended before the frames it announced.
    """

    kind = "source"

    def __init__(self, uri: str, options: OpenOptions, *, live: bool, fps: float) -> None:
        self.uri = uri
        self.options = options
        self.live = live
        self.fps = float(fps)
        self.realtime = options.realtime if options.realtime is not None else live or self.kind == "demo"
        self.size: tuple[int, int] = (0, 0)
        self.length: int | None = None
        self.error: str | None = None
        self.frames_read = 0
        self.rate_known = True  # False: ``fps`` is a guess (a folder or a file that does not say its rate)
        self.ended = False  # read() reached the end of a file or folder (or failed there)
        self._flip = options.flip  # CSI sources flip in hardware and set this to 0
        self._pending: np.ndarray | None = None
        self._clock: float | None = None
        self._paced = 0
        self._closed = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of every frame: (height, width, 3); what a ring for this source is made of."""
        return (self.size[1], self.size[0], 3)

    def _grab(self) -> np.ndarray | None:
        """The next raw frame (BGR, before flip), or None at the end or on failure."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _first(self, frame: np.ndarray, keep: bool) -> None:
        """Take the size from the first frame; a file keeps it for the first read, a live source drops it (stale)."""
        frame = orient(frame, self._flip)
        self.size = (int(frame.shape[1]), int(frame.shape[0]))
        self._pending = frame if keep else None

    def read(self) -> tuple[bool, np.ndarray | None]:
        """``(True, frame)``, or ``(False, None)`` at the end of a file or when a live source fails."""
        if self._closed:
            return False, None
        frame, self._pending = self._pending, None
        if frame is None:
            raw = self._grab()
            if raw is None:
                self.ended = not self.live
                return False, None
            frame = orient(as_bgr(raw), self._flip)
        if self.realtime and not self.live:
            self._pace()
        self.frames_read += 1
        return True, frame

    def early_end(self) -> str | None:
        """One line when this file or folder ended before its announced frames (a truncated or corrupt file, an
        unreadable image), else None."""
        if not self.ended:
            return None
        # some containers announce an estimate (duration x rate): a shortfall of a few frames is not a cut
        short = self.length is not None and self.length - self.frames_read > max(2, round(0.02 * self.length))
        if not short and self.error is None:
            return None
        announced = f" of the {self.length} it announces" if self.length is not None else ""
        why = f": {self.error}" if self.error else " (truncated or corrupt)"
        return f"{redact(self.uri)} ended after {self.frames_read} frames{announced}{why}"

    def _pace(self) -> None:
        """Sleep until this frame is due; after falling more than a frame behind, restart the clock, not burst."""
        now = time.monotonic()
        period = 1.0 / self.fps
        if self._clock is None or now - (self._clock + self._paced * period) > period:
            self._clock, self._paced = now, 0
        due = self._clock + self._paced * period
        if due > now:
            time.sleep(due - now)
        self._paced += 1

    def describe(self) -> str:
        w, h = self.size
        extra = [] if self.length is None else [f"{self.length} frames"]
        extra.append("live" if self.live else ("realtime" if self.realtime else "as fast as possible"))
        if self.options.flip:
            extra.append(f"flip {FLIP_METHODS[self.options.flip]}")
        return f"{self.kind} {redact(self.uri)} {w}x{h} @ {self.fps:.1f} fps ({', '.join(extra)})"

    def reopen(self) -> Source:
        """A new source opened from the same URI and options (after this one was lost)."""
        return open_source(self.uri, **asdict(self.options))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending = None
            self._release()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _sane_fps(reported: float, fallback: float) -> float:
    """Backends report 0, NaN or 90000 (an RTP clock) when they do not know the rate."""
    return float(reported) if 0 < reported <= 1000 else fallback


class CaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: V4L2 cameras, GStreamer pipelines, FFmpeg streams and files."""

    def __init__(self, uri: str, options: OpenOptions, cap: Any, *, kind: str, live: bool, no_frame: str,
                 fps: float | None = None, hardware_flip: bool = False) -> None:
        import cv2

        self.kind = kind
        raw_fps = cap.get(cv2.CAP_PROP_FPS)
        reported = _sane_fps(raw_fps, options.fps or 30.0)
        super().__init__(uri, options, live=live, fps=fps or reported)
        self.rate_known = bool(fps) or _sane_fps(raw_fps, 0.0) > 0
        if hardware_flip:
            self._flip = 0
        self._cap = cap
        first = self._grab()
        if first is None:
            cap.release()
            raise UserError(no_frame)
        self._first(as_bgr(first), keep=not live)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.length = count if not live and count > 0 else None

    def _grab(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        return frame if ok and frame is not None else None

    def _release(self) -> None:
        self._cap.release()


class FolderSource(Source):
    """A folder of numbered images played in numeric order (``img9.jpg`` before ``img10.jpg``)."""

    kind = "folder"

    def __init__(self, uri: str, options: OpenOptions, folder: Path) -> None:
        from edge_mer.runtime.frames import list_frames

        super().__init__(uri, options, live=False, fps=options.fps or 30.0)
        self.rate_known = options.fps is not None  # a folder has no rate of its own
        self._paths = list(list_frames(folder).values())
        if not self._paths:
            raise UserError(f"no frames in {folder}: expected numbered images such as frame_000000.jpg")
        self.length = len(self._paths)
        self._next = 0
        first = self._grab()
        if first is None:
            raise UserError(f"cannot read the first frame {self._paths[0]} (corrupt or not an image)")
        self._first(first, keep=True)

    def _grab(self) -> np.ndarray | None:
        import cv2

        if self._next >= len(self._paths):
            return None
        path = self._paths[self._next]
        self._next += 1
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            self.error = f"cannot read {path} (corrupt or not an image)"
        return frame

    def _release(self) -> None:
        self._paths = []


def demo_config(uri: str, options: OpenOptions) -> VideoConfig:
    """The generator's video config from ``demo://?seconds=&fps=&size=WxH&seed=&subject=``.

    The query wins over ``width``/``height``/``fps`` given to :func:`open_source`;
    without either, 60 s of 640x480 at 30 fps.
    """
    from edge_mer.synth.video import VideoConfig

    query = urlsplit(uri).query
    try:
        raw = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True, strict_parsing=bool(query)).items()}
    except ValueError:
        raise UserError(f"cannot parse {uri}: expected demo://?seconds=60&fps=30&size=640x480&seed=0") from None
    unknown = sorted(set(raw) - set(DEMO_KEYS))
    if unknown:
        raise UserError(f"unknown demo:// option {', '.join(unknown)}; known: {', '.join(DEMO_KEYS)}")
    cfg = VideoConfig()
    size = (options.width or cfg.size[0], options.height or cfg.size[1])
    try:
        if "size" in raw:
            w, h = raw["size"].lower().split("x")
            size = (int(w), int(h))
        cfg = replace(cfg, seconds=float(raw.get("seconds", cfg.seconds)),
                      fps=float(raw.get("fps", options.fps or cfg.fps)), size=size,
                      seed=int(raw.get("seed", cfg.seed)), subject=int(raw.get("subject", cfg.subject)))
    except ValueError:
        raise UserError(f"bad value in {uri}: seconds and fps are numbers, size is WxH, seed and subject "
                        "are integers") from None
    if cfg.seconds <= 0 or cfg.fps <= 0 or min(cfg.size) < 32:
        raise UserError(f"{uri}: seconds and fps must be positive and size at least 32x32")
    return cfg


class DemoSource(Source):
    """The synthetic long video rendered while it plays, with its truth.

    ``truth`` holds the planned events (``TruthInterval``: onset, apex, offset, kind and
    label, as the generator's truth CSV has them).

    Frames are rendered on the fly: about 11 ms of CPU per 640x480 frame
    (three quarters of it the sensor noise), a third of one core at 30 fps. It
    starts at once and holds one frame; pre-rendering a 60 s clip instead would
    cost about 20 s at open and 1.7 GB raw (or a lossy temporary video).
    """

    kind = "demo"

    def __init__(self, uri: str, options: OpenOptions) -> None:
        from edge_mer.synth.video import plan_events, video_frames

        self.config = demo_config(uri, options)
        super().__init__(uri, options, live=False, fps=self.config.fps)
        events = plan_events(self.config)
        self.truth = [TruthInterval(e.onset, e.offset, e.kind, e.apex, "demo", "" if e.kind == "blink" else e.emotion)
                      for e in events]
        self.length = int(round(self.config.seconds * self.config.fps))
        self._frames: Iterator[np.ndarray] | None = video_frames(self.config, events)
        self.size = self.config.size
        if self._flip in (1, 3, 5, 7):
            self.size = (self.size[1], self.size[0])

    def describe(self) -> str:
        return f"{super().describe()}, {len(self.truth)} planned events"

    def _grab(self) -> np.ndarray | None:
        return next(self._frames, None) if self._frames is not None else None

    def _release(self) -> None:
        self._frames = None


class PicamSource(Source):
    """A Raspberry Pi camera through picamera2.

    picamera2's ``RGB888`` is laid out [B, G, R] in memory (libcamera names
    formats by their little-endian words), which is OpenCV's BGR as is.
    """

    kind = "picam"

    def __init__(self, uri: str, options: OpenOptions, index: int) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise UserError("picam:// needs picamera2: sudo apt install python3-picamera2 (in a venv, create it "
                            "with --system-site-packages to see it)") from None
        w, h, fps = (options.width or PICAM_DEFAULT[0], options.height or PICAM_DEFAULT[1],
                     options.fps or PICAM_DEFAULT[2])
        super().__init__(uri, options, live=True, fps=fps)
        found = Picamera2.global_camera_info()
        if index >= len(found):
            names = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(found)) or "none"
            raise UserError(f"no Raspberry Pi camera {index} (cameras: {names}); check the ribbon cable")
        self._cam = Picamera2(camera_num=index)
        config = self._cam.create_video_configuration(main={"size": (w, h), "format": "RGB888"},
                                                      controls={"FrameRate": fps})
        self._cam.configure(config)
        self._cam.start()
        first = self._grab()
        if first is None:
            self._release()
            raise UserError(f"Raspberry Pi camera {index} opened but gives no frames")
        self._first(first, keep=False)

    def _grab(self) -> np.ndarray | None:
        frame = self._cam.capture_array("main")
        return frame[..., :3] if frame is not None else None

    def _release(self) -> None:
        self._cam.stop()
        self._cam.close()


def _check(options: OpenOptions) -> None:
    for name in ("width", "height", "fps"):
        value = getattr(options, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name} must be positive, got {value}")
    if not 0 <= options.flip < len(FLIP_METHODS):
        raise UserError(f"--flip must be 0..7 (nvvidconv flip-method: {', '.join(FLIP_METHODS)}), got {options.flip}")


def _set_mode(cap: Any, options: OpenOptions) -> None:
    import cv2

    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, options.width), (cv2.CAP_PROP_FRAME_HEIGHT, options.height),
                        (cv2.CAP_PROP_FPS, options.fps)):
        if value is not None:
            cap.set(prop, float(value))


def _open_v4l2(uri: str, device: str, options: OpenOptions) -> Source:
    import cv2

    m = re.fullmatch(r"/dev/video(\d+)", device)
    if sys.platform.startswith("linux"):
        if not Path(device).exists():
            raise UserError(f"no camera at {device}; {cameras_line()}")
        cap = cv2.VideoCapture(int(m.group(1)) if m else device, cv2.CAP_V4L2)
    elif m:  # macOS, Windows: the platform backend numbers cameras from 0
        cap = cv2.VideoCapture(int(m.group(1)))
    else:
        raise UserError(f"{uri}: V4L2 device paths exist on Linux only; pass a camera index such as 0")
    if not cap.isOpened():
        raise UserError(f"cannot open camera {device} (used by another program, or no permission: "
                        f"sudo usermod -aG video $USER); {cameras_line()}")
    _set_mode(cap, options)
    return CaptureSource(uri, options, cap, kind="v4l2", live=True,
                         no_frame=f"camera {device} opened but gives no frames (a metadata node? try another "
                                  f"index); {cameras_line()}")


def _open_csi(uri: str, sensor: int, options: OpenOptions) -> Source:
    import cv2

    if not opencv_facts(cv2)["gstreamer"]:
        raise UserError(f"csi:// needs OpenCV built with GStreamer (JetPack's), and this OpenCV {cv2.__version__} "
                        f"has none: pip's opencv wheels lack it; pip uninstall {OPENCV_WHEELS}, then use "
                        "JetPack's python3-opencv")
    w, h, fps = options.width or CSI_DEFAULT[0], options.height or CSI_DEFAULT[1], options.fps or CSI_DEFAULT[2]
    cap = cv2.VideoCapture(csi_pipeline(sensor, w, h, fps, options.flip), cv2.CAP_GSTREAMER)
    hint = "is it connected and is the mode supported? sudo systemctl restart nvargus-daemon"
    if not cap.isOpened():
        raise UserError(f"cannot open CSI camera {sensor} at {w}x{h} @ {fps:g} fps ({hint})")
    return CaptureSource(uri, options, cap, kind="csi", live=True, fps=fps, hardware_flip=True,
                         no_frame=f"CSI camera {sensor} opened but gives no frames ({hint})")


def _open_stream(uri: str, options: OpenOptions) -> Source:
    import cv2

    if not opencv_facts(cv2)["ffmpeg"]:
        raise UserError(f"{redact(uri)}: network streams need OpenCV built with FFmpeg, and this OpenCV "
                        f"{cv2.__version__} has none (pip install opencv-python-headless off a Jetson)")
    params: list[int] = []
    if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):  # OpenCV >= 4.5.2; older builds wait FFmpeg's own timeouts
        ms = int(NETWORK_TIMEOUT_S * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
    hint = ("check the address, port and credentials; for RTSP over TCP set "
            "OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp")
    if not cap.isOpened():
        raise UserError(f"cannot open stream {redact(uri)}: no connection or no video within "
                        f"{NETWORK_TIMEOUT_S:g} s ({hint})")
    return CaptureSource(uri, options, cap, kind="stream", live=True,
                         no_frame=f"stream {redact(uri)} opened but gives no frames ({hint})")


def _open_path(uri: str, path: Path, options: OpenOptions) -> Source:
    import cv2

    if path.is_dir():
        return FolderSource(uri, options, path)
    if not path.is_file():
        raise UserError(f"no such video file or frame folder: {path}")
    with native_stderr() as said:
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        why = f": {said[-1]}" if said else ""
        raise UserError(f"cannot open {path} as a video (corrupt, or a codec this OpenCV cannot decode){why}")
    return CaptureSource(uri, options, cap, kind="file", live=False, fps=options.fps,
                         no_frame=f"{path} has no readable frames (corrupt or empty video)")


def _index(uri: str, rest: str) -> int:
    rest = rest.strip("/") or "0"
    if not rest.isdigit():
        raise UserError(f"{uri}: expected a camera number such as {uri.split('://')[0]}://0")
    return int(rest)


def open_source(uri: str, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                flip: int = 0, realtime: bool | None = None) -> Source:
    """Open ``uri`` (see the module docstring); a user's mistake raises :class:`UserError` with one line.

    ``width``/``height``/``fps`` request a camera mode (the camera may choose a
    near one: read ``size`` and ``fps`` back); files and folders play at their
    own size, ``fps`` sets a folder's rate. ``realtime`` paces sources that are
    not live to their frame rate: default on for ``demo://``, off for files.
    """
    options = OpenOptions(width, height, fps, flip, realtime)
    _check(options)
    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower() if sep else ""
    if text.isdigit():
        return _open_v4l2(text, f"/dev/video{int(text)}", options)
    if not scheme and text.startswith("/dev/video"):
        return _open_v4l2(text, text, options)
    if scheme == "v4l2":
        return _open_v4l2(text, rest if rest.startswith("/") else f"/dev/video{_index(text, rest)}", options)
    if scheme == "csi":
        return _open_csi(text, _index(text, rest), options)
    if scheme == "picam":
        return PicamSource(text, options, _index(text, rest))
    if scheme in ("rtsp", "rtsps", "rtmp", "http", "https"):
        return _open_stream(text, options)
    if scheme == "demo":
        return DemoSource(text, options)
    if scheme == "file":
        return _open_path(text, Path(rest), options)
    if scheme:
        raise UserError(f"unknown source {redact(text)}: use a camera number, v4l2://, csi://, picam://, "
                        "rtsp://, http(s)://, demo:// or a path")
    return _open_path(text, Path(text).expanduser(), options)


def open_path(path: Path, *, fps: float | None = None, realtime: bool = False) -> Source:
    """A video file or a frame folder by its path (``edge-mer spot``), whatever its name looks like: never a
    camera number or a URI."""
    options = OpenOptions(fps=fps, realtime=realtime)
    _check(options)
    return _open_path(str(path), path, options)
