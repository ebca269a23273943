"""Frame sources by URI and the capture thread, on real files, folders, streams and the demo video."""

from __future__ import annotations

import csv
import functools
import glob
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_mer.errors import UserError
from edge_mer.runtime.capture import CaptureThread
from edge_mer.runtime.opencv_build import opencv_facts
from edge_mer.runtime.ring import FrameRing
from edge_mer.runtime.sources import FLIP_METHODS, DemoSource, Source, csi_pipeline, open_source, orient

SIZE = (64, 48)  # width, height


def level(i: int) -> int:
    """The grey level of test frame ``i``: far enough apart to survive lossy codecs."""
    return 20 + (i * 13) % 220


def frame_of(i: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    w, h = size
    frame = np.full((h, w, 3), level(i), np.uint8)
    frame[: h // 4, : w // 4] = (255, 0, 0)  # a blue corner: shows colour order and orientation
    return frame


def write_clip(path: Path, n: int, fps: float = 20.0, size: tuple[int, int] = SIZE) -> Path:
    fourcc = {".mp4": "mp4v", ".avi": "MJPG"}[path.suffix]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(frame_of(i, size))
    writer.release()
    return path


def write_folder(folder: Path, n: int, size: tuple[int, int] = SIZE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i + 1}.png"), frame_of(i, size))  # img2 before img10
    return folder


def mean_level(frame: np.ndarray) -> float:
    h, w = frame.shape[:2]
    return float(frame[h // 2 :, w // 2 :].mean())


def one_line_error(fn: Callable[[], object]) -> str:
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def read_all(source: Source) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    while True:
        ok, frame = source.read()
        if not ok:
            return frames
        assert frame is not None
        frames.append(frame)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# files and folders


def test_video_file_plays_every_frame_in_order_then_ends(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mp4", 24)
    with open_source(str(path)) as src:
        assert not src.live and not src.realtime
        assert src.size == SIZE and src.shape == (48, 64, 3)
        assert src.fps == pytest.approx(20.0) and src.length == 24
        assert "file" in src.describe() and "24 frames" in src.describe()
        frames = read_all(src)
        assert src.read() == (False, None)
    assert len(frames) == 24
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert all(abs(mean_level(f) - level(i)) < 5 for i, f in enumerate(frames))  # in order, none skipped
    assert frames[0][2, 2].tolist() == pytest.approx([255, 0, 0], abs=12)  # BGR: the corner is blue


def test_file_uri_and_fps_override(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.avi", 5)
    with open_source(f"file://{path}", fps=10) as src:
        assert src.fps == 10 and len(read_all(src)) == 5


def test_frame_folder_plays_in_numeric_order(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "frames", 12)
    with open_source(str(folder)) as src:
        assert not src.live and src.kind == "folder" and src.length == 12
        assert src.fps == 30.0 and src.size == SIZE
        frames = read_all(src)
    assert [int(f[-1, -1, 0]) for f in frames] == [level(i) for i in range(12)]
    with open_source(str(folder), fps=12.5) as src:
        assert src.fps == 12.5


def test_a_file_or_folder_that_ends_early_says_so(tmp_path: Path) -> None:
    """A cut video and a folder with an unreadable image stop where they break, and say how far they got."""
    whole = write_clip(tmp_path / "whole.avi", 40)
    with open_source(str(whole)) as src:
        assert len(read_all(src)) == 40 and src.early_end() is None  # a complete file is not flagged
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with open_source(str(cut)) as src:
        frames = read_all(src)
        warning = src.early_end()
    assert 0 < len(frames) < 40 and src.length == 40
    assert warning is not None and f"after {len(frames)} frames of the 40" in warning, warning
    folder = write_folder(tmp_path / "frames", 12)
    (folder / "img7.png").write_bytes(b"not a png")
    with open_source(str(folder)) as src:
        assert src.early_end() is None  # nothing read yet
        frames = read_all(src)
        warning = src.early_end()
    assert len(frames) == 6
    assert warning is not None and "after 6 frames of the 12" in warning and "img7.png" in warning, warning


def test_flip_rotates_like_nvvidconv(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "frames", 2, size=(64, 48))
    with open_source(str(folder)) as plain, open_source(str(folder), flip=1) as rotated:
        assert rotated.size == (48, 64) and rotated.shape == (64, 48, 3)
        assert "rotate-90-ccw" in rotated.describe()
        ok, a = plain.read()
        ok2, b = rotated.read()
        assert ok and ok2 and a is not None
        np.testing.assert_array_equal(b, np.rot90(a))
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    expected = [img, np.rot90(img, 1), np.rot90(img, 2), np.rot90(img, -1), img[:, ::-1],
                np.rot90(img, 2).swapaxes(0, 1), img[::-1], img.swapaxes(0, 1)]
    for flip, want in enumerate(expected):
        np.testing.assert_array_equal(orient(img, flip), want, err_msg=FLIP_METHODS[flip])


def test_missing_path_is_one_line(tmp_path: Path) -> None:
    message = one_line_error(lambda: open_source(str(tmp_path / "nope.mp4")))
    assert "no such video file or frame folder" in message and "nope.mp4" in message


def test_corrupt_video_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    message = one_line_error(lambda: open_source(str(bad)))
    assert "bad.mp4" in message and "corrupt" in message


def test_empty_or_broken_frame_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no frames in" in one_line_error(lambda: open_source(str(tmp_path / "empty")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "frame_000000.jpg").write_bytes(b"not a jpeg")
    assert "cannot read the first frame" in one_line_error(lambda: open_source(str(broken)))


def test_bad_options_and_unknown_schemes_are_one_line() -> None:
    assert "--flip must be 0..7" in one_line_error(lambda: open_source("demo://", flip=8))
    assert "--fps must be positive" in one_line_error(lambda: open_source("demo://", fps=0))
    assert "unknown source" in one_line_error(lambda: open_source("gopher://cam"))


# demo://


@functools.lru_cache(maxsize=1)
def _written_demo(folder: str) -> tuple[list[dict[str, str]], list[Path]]:
    from edge_mer.synth.video import VideoConfig, write_video

    cfg = VideoConfig(seconds=12, fps=30, size=(96, 72), seed=3, subject=1)
    out = Path(folder) / "frames"
    write_video(cfg, out, truth=Path(folder) / "truth.csv", progress=False)
    with open(Path(folder) / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, sorted(out.glob("frame_*.jpg"))


def test_demo_plays_the_generator_video_with_its_truth(tmp_path: Path) -> None:
    rows, written = _written_demo(str(tmp_path))
    with open_source("demo://?seconds=12&fps=30&size=96x72&seed=3&subject=1", realtime=False) as src:
        assert isinstance(src, DemoSource) and not src.live and src.length == 360 == len(written)
        assert src.size == (96, 72) and src.fps == 30.0
        truth = src.truth
        frames = read_all(src)
    assert len(rows) >= 3 and {t.kind for t in truth} <= {"micro", "macro", "blink"}
    assert [[str(v) for v in (t.onset, t.apex, t.offset, t.kind, t.label)] for t in truth] == \
        [[r[k] for k in ("onset", "apex", "offset", "type", "label")] for r in rows]  # the truth CSV's rows
    assert all(isinstance(t.onset, int) and t.onset < t.apex < t.offset for t in truth)
    assert len(frames) == 360
    for i in (0, 100, 359):  # write_video's frames exactly, once through the same JPEG encoder
        ok, jpeg = cv2.imencode(".jpg", frames[i], [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        np.testing.assert_array_equal(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.imread(str(written[i])))


def test_demo_defaults_and_overrides() -> None:
    with open_source("demo://?seconds=1") as src:
        assert src.realtime and src.size == (640, 480) and src.fps == 30.0 and src.length == 30
    with open_source("demo://?seconds=1", width=160, height=120, fps=10) as src:
        assert src.size == (160, 120) and src.fps == 10.0 and src.length == 10
    with open_source("demo://?seconds=1&size=96x64", width=160, height=120, flip=3) as src:
        assert src.size == (64, 96)
        ok, frame = src.read()
        assert ok and frame is not None and frame.shape == (96, 64, 3)


def test_demo_realtime_paces_to_the_frame_rate() -> None:
    with open_source("demo://?seconds=0.5&fps=20&size=64x48") as src:
        start = time.monotonic()
        assert len(read_all(src)) == 10
        assert time.monotonic() - start >= 9 / 20 * 0.9  # nine frame periods after the first frame


def test_bad_demo_query_is_one_line() -> None:
    assert "unknown demo:// option colour" in one_line_error(lambda: open_source("demo://?colour=red"))
    assert "size is WxH" in one_line_error(lambda: open_source("demo://?size=big"))
    assert "at least 32x32" in one_line_error(lambda: open_source("demo://?size=16x16"))


# cameras and streams


def test_missing_v4l2_camera_lists_the_cameras_that_exist() -> None:
    cameras = sorted(glob.glob("/dev/video*"))
    missing = next(i for i in range(64, 1000) if not os.path.exists(f"/dev/video{i}"))
    for uri in (str(missing), f"v4l2:///dev/video{missing}", f"/dev/video{missing}"):
        message = one_line_error(functools.partial(open_source, uri))
        assert f"/dev/video{missing}" in message
        if cameras:
            assert all(c in message for c in cameras)
        else:
            assert "no cameras found" in message


@pytest.mark.camera
def test_first_camera_gives_frames() -> None:
    with open_source("0", width=640, height=480) as src:
        assert src.live
        ok, frame = src.read()
        assert ok and frame is not None and frame.shape == src.shape


def test_csi_without_gstreamer_says_what_to_install() -> None:
    if opencv_facts(cv2)["gstreamer"]:
        pytest.skip("this OpenCV has GStreamer: csi:// opens the camera instead")
    message = one_line_error(lambda: open_source("csi://0"))
    assert "GStreamer" in message and "JetPack" in message and "pip uninstall opencv-python" in message


def test_csi_pipeline_string() -> None:
    p = csi_pipeline(1, 1280, 720, 30, 0)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1280, height=(int)720, framerate=(fraction)30/1" in p
    assert "nvvidconv flip-method=0 ! video/x-raw, width=(int)1280, height=(int)720, format=(string)BGRx" in p
    assert p.endswith("format=(string)BGR ! appsink drop=true max-buffers=1")
    rotated = csi_pipeline(0, 1280, 720, 29.97, 3)
    assert "framerate=(fraction)2997/100" in rotated
    assert "nvvidconv flip-method=3 ! video/x-raw, width=(int)720, height=(int)1280" in rotated
    assert "flip-method=2 ! video/x-raw, width=(int)1280, height=(int)720" in csi_pipeline(0, 1280, 720, 60, 2)
    with pytest.raises(ValueError, match="flip"):
        csi_pipeline(0, 1280, 720, 30, 8)


def test_picam_without_picamera2_says_what_to_install() -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here")
    message = one_line_error(lambda: open_source("picam://0"))
    assert "sudo apt install python3-picamera2" in message


@pytest.mark.parametrize("secret_part", ["admin:secret@{host}/stream", "{host}/stream?user=admin&password=secret",
                                         "{host}/stream?channel=1&token=secret"])
def test_rtsp_to_a_closed_port_fails_fast_without_leaking_the_password(secret_part: str) -> None:
    """Credentials in the address, or in the query string as many cameras take them."""
    uri = "rtsp://" + secret_part.format(host=f"127.0.0.1:{closed_port()}")
    start = time.monotonic()
    message = one_line_error(lambda: open_source(uri))
    assert time.monotonic() - start < 10
    assert "127.0.0.1" in message and "secret" not in message
    assert "cannot open stream" in message or "FFmpeg" in message


# the capture thread


def test_capture_reads_a_file_to_the_end_with_monotonic_stamps(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mp4", 30)
    src = open_source(str(path))
    ring = FrameRing(64, src.shape)
    start = time.monotonic()
    capture = CaptureThread(src, ring).start()
    assert capture.wait(20)
    assert capture.finished and capture.frames == 30 and capture.failures == 0 and capture.error is None
    stats = ring.stats()
    assert stats.pushed == 30 and stats.closed
    stamps = [f.ts for f in ring.window(30)]
    assert stamps[0] >= start and all(b >= a for a, b in zip(stamps, stamps[1:]))
    assert ring.wait_newer(29, timeout=5.0) is None  # the stream ended: no waiting
    assert capture.stop()


def test_capture_retries_until_the_source_appears(tmp_path: Path) -> None:
    """The open fails while the file does not exist, backs off, and succeeds once it is there."""
    path = tmp_path / "late.avi"
    ring = FrameRing(32, (48, 64, 3))
    capture = CaptureThread(lambda: open_source(str(path)), ring, backoff=(0.02, 0.08)).start()
    try:
        assert wait_until(lambda: capture.failures >= 3)
        assert not capture.finished and capture.frames == 0
        assert capture.error is not None and "late.avi" in capture.error
        write_clip(tmp_path / "writing.avi", 12)
        os.replace(tmp_path / "writing.avi", path)
        assert capture.wait(20)
    finally:
        capture.stop()
    assert capture.frames == 12 and capture.reconnects == 1 and capture.exception is None
    assert ring.stats().pushed == 12


def test_capture_without_reconnect_gives_up_at_once(tmp_path: Path) -> None:
    capture = CaptureThread(lambda: open_source(str(tmp_path / "nope.mp4")), FrameRing(2, (4, 4, 3)),
                            reconnect=False).start()
    assert capture.wait(10)
    assert capture.failures == 1 and capture.frames == 0 and "nope.mp4" in str(capture.error)


def test_capture_reports_a_source_that_changes_resolution(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "frames", 3)
    cv2.imwrite(str(folder / "img4.png"), frame_of(3, size=(32, 24)))
    src = open_source(str(folder))
    ring = FrameRing(8, src.shape)
    capture = CaptureThread(src, ring).start()
    assert capture.wait(10)
    assert capture.frames == 3 and isinstance(capture.exception, ValueError)
    assert "resolution" in str(capture.error)


@pytest.fixture
def http_clip(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A clip served over HTTP (a live stream that ends and can go away), with stop and restart switches."""
    write_clip(tmp_path / "clip.avi", 10)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    servers: list[ThreadingHTTPServer] = []

    def start(port: int = 0) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    def stop() -> None:
        servers[-1].shutdown()
        servers[-1].server_close()

    start()
    port = servers[0].server_address[1]
    yield f"http://127.0.0.1:{port}/clip.avi", stop, lambda: start(port)
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.skipif(not opencv_facts(cv2)["ffmpeg"], reason="this OpenCV has no FFmpeg to read HTTP streams")
def test_capture_reconnects_a_live_stream_that_ends_goes_away_and_comes_back(
        http_clip: tuple[str, Callable[[], None], Callable[[], None]]) -> None:
    url, stop_server, restart_server = http_clip
    src = open_source(url)
    assert src.live and src.kind == "stream"
    ring = FrameRing(16, src.shape)
    capture = CaptureThread(src, ring, backoff=(0.02, 0.1)).start()
    try:
        assert wait_until(lambda: capture.reconnects >= 1 and capture.frames >= 15)  # played, lost, reopened
        stop_server()
        failures = capture.failures
        assert wait_until(lambda: capture.failures >= failures + 3)  # keeps trying while the camera is away
        assert not capture.finished
        frames, reconnects = capture.frames, capture.reconnects
        restart_server()
        assert wait_until(lambda: capture.reconnects > reconnects and capture.frames >= frames + 5)
    finally:
        assert capture.stop()
    assert capture.finished and capture.exception is None and ring.stats().closed


# no torch on a device


def test_ring_sources_and_capture_run_on_demo_without_torch() -> None:
    code = """
import sys
sys.modules["torch"] = None
import edge_mer.runtime.capture, edge_mer.runtime.ring, edge_mer.runtime.sources
assert "cv2" not in sys.modules, "cv2 imported at module import"
from edge_mer.runtime.capture import CaptureThread
from edge_mer.runtime.ring import FrameRing
from edge_mer.runtime.sources import open_source
src = open_source("demo://?seconds=1&fps=10&size=96x72", realtime=False)
ring = FrameRing(16, src.shape)
capture = CaptureThread(src, ring).start()
assert capture.wait(60)
print(capture.frames, ring.stats().pushed, len(src.truth) >= 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10", "10", "True"]
