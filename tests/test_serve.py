"""The live view and the metrics of ``edge-mer run --serve``, against a real run of the demo.

One run serves every check here while it plays (40 s of the demo in real time): the page in Debian's headless
Chromium driven by Selenium, the MJPEG stream decoded by OpenCV, the Server-Sent Events against the events
file, /metrics through the Prometheus client's own text parser, the token, and a client that never reads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

TOKEN = "t0ken-for-the-view"
ARTIFACTS = Path(os.environ.get("EDGE_MER_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.events = folder / "events.jsonl"
        self.summary = folder / "summary.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_mer", "run", "--demo", "--demo-seconds", "40", "--quiet",
             "--serve", f"127.0.0.1:{self.port}", "--serve-token", TOKEN, "--events", str(self.events),
             "--json-summary", str(self.summary)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the live view did not come up")

    def get(self, path: str, token: bool = False, timeout: float = 10.0) -> tuple[int, bytes]:
        url = self.base + path + (("&" if "?" in path else "?") + f"token={TOKEN}" if token else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def written(self) -> list[dict]:
        return [json.loads(x) for x in self.events.read_text().splitlines()] if self.events.exists() else []

    def wait_for_events(self, count: int, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.written()) < count and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.2)
        return self.written()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("serve"))
    yield s
    if s.proc.poll() is None:
        s.proc.terminate()
        s.proc.wait(timeout=60)


def test_every_path_but_healthz_wants_the_token(served):
    assert served.get("/healthz")[0] == 200
    for path in ("/", "/metrics", "/events", "/stream.mjpg"):
        code, body = served.get(path, timeout=5)
        assert code == 401 and b"token" in body
    req = urllib.request.Request(served.base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        assert answer.status == 200
    code, page = served.get("/", token=True)
    assert code == 200 and b"stream.mjpg" in page and b"EventSource" in page


def test_healthz_says_the_loop_is_alive(served):
    code, body = served.get("/healthz")
    health = json.loads(body)
    assert code == 200 and health["status"] == "ok" and health["frames"] > 0 and health["last_frame_age_s"] < 5


def test_the_stream_is_mjpeg_of_the_camera(served):
    with urllib.request.urlopen(f"{served.base}/stream.mjpg?token={TOKEN}", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=frame")
        pictures = []
        while len(pictures) < 2:
            assert answer.readline().strip() == b"--frame"
            headers = {}
            while (line := answer.readline().strip()):
                key, _, value = line.decode().partition(":")
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            jpeg = answer.read(int(headers["content-length"]))
            answer.readline()
            pictures.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    assert all(p is not None and p.shape == (480, 640, 3) for p in pictures)
    assert not np.array_equal(pictures[0], pictures[1])  # it moves


def test_server_sent_events_carry_the_events_as_written(served):
    written = served.wait_for_events(1)
    assert written, "no event in the first seconds of the demo"
    with urllib.request.urlopen(f"{served.base}/events?token={TOKEN}", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/event-stream"
        got, signal, name = [], [], "message"
        deadline = time.monotonic() + 30
        while (not got or not signal) and time.monotonic() < deadline:
            line = answer.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                (signal if name == "signal" else got).append(json.loads(line[6:]))
            elif not line:
                name = "message"
    assert got[0] == written[0]  # the page that opens gets the events so far, exactly as written
    points = [p for batch in signal for p in batch]
    assert len(points) > 5 and all(len(p) == 3 for p in points)
    assert any(p[1] is not None for p in points) and all(p[2] is None or p[2] > 0 for p in points)


def test_metrics_parse_as_prometheus_text_and_count_what_the_loop_did(served):
    from prometheus_client.parser import text_string_to_metric_families

    served.wait_for_events(1)
    first = {f.name: f for f in text_string_to_metric_families(served.get("/metrics", token=True)[1].decode())}
    time.sleep(1.0)
    later = {f.name: f for f in text_string_to_metric_families(served.get("/metrics", token=True)[1].decode())}

    def value(families, name, **labels):
        family = families[next(f for f in (name, name.removesuffix("_total"), name.rsplit("_", 1)[0])
                               if f in families)]
        return next(s.value for s in family.samples
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    for name in ("edge_mer_frames_read", "edge_mer_frames_processed", "edge_mer_ring_dropped_frames",
                 "edge_mer_spots", "edge_mer_events", "edge_mer_stage_seconds", "edge_mer_face_lost_seconds"):
        assert first[name].type == "counter", name  # the parser names a counter without its _total
    assert first["edge_mer_event_latency_seconds"].type == "histogram"
    assert value(later, "edge_mer_frames_processed_total") > value(first, "edge_mer_frames_processed_total")
    assert 0 < value(later, "edge_mer_fps") < 40  # a 30 fps source in real time is never processed faster
    events = sum(s.value for s in later["edge_mer_events"].samples if s.name == "edge_mer_events_total")
    assert events == value(later, "edge_mer_event_latency_seconds_count") >= 1
    labels = {s.labels["label"] for s in later["edge_mer_events"].samples}
    assert labels == {"negative", "positive", "surprise"}
    assert value(later, "edge_mer_stage_seconds_total", stage="signal") > 0
    assert value(later, "edge_mer_resident_memory_bytes") > 50e6


def test_a_client_that_never_reads_is_dropped_and_holds_nothing_up(served):
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", served.port))
    slow.sendall(f"GET /stream.mjpg?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    dropped = "edge_mer_serve_dropped_clients_total"
    try:
        before = json.loads(served.get("/healthz")[1])["frames"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # its socket fills up; the loop and the other clients go on
            metrics = served.get("/metrics", token=True)[1].decode()
            if f"{dropped} 0" not in metrics.splitlines():
                break
            time.sleep(0.5)
        after = json.loads(served.get("/healthz")[1])["frames"]
    finally:
        slow.close()
    assert f"{dropped} 1" in metrics.splitlines()
    assert after > before


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
def test_the_page_in_a_browser_shows_the_camera_the_signal_and_an_event(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        browser.get(f"{served.base}/?token={TOKEN}")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.execute_script("const v = document.getElementById('video');"
                                              "return v.complete && v.naturalWidth;") == 640)
        wait.until(lambda b: b.execute_script("return points.length") > 30)
        wait.until(lambda b: len(b.find_elements("css selector", "#events li")) >= 1)
        first = browser.find_element("css selector", "#events li .label").text
        state = browser.find_element("id", "state").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "live-view.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    assert first in {"negative", "positive", "surprise"} and state == "connected"
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[1] == 1280 and picture.std() > 10


def test_the_summary_reports_what_serving_cost(served):
    _, stderr = served.proc.communicate(timeout=120)
    assert served.proc.returncode == 0, stderr[-2000:]
    summary = json.loads(served.summary.read_text())
    serve = summary["serve"]
    assert serve["address"] == f"{served.base}/" and serve["frames_encoded"] > 10
    assert serve["clients_dropped"] >= 1 and serve["encode_ms"]["p50"] > 0
    assert summary["timing"]["stages_ms"]["serve"]["n"] == summary["frames"]
    assert TOKEN not in stderr and TOKEN not in served.summary.read_text()


def test_a_port_in_use_is_one_line_before_the_run(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "edge_mer", "run", "--demo", "--serve", f"127.0.0.1:{port}",
                               "--events", str(tmp_path / "e.jsonl")], capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0 and f"--serve 127.0.0.1:{port}: cannot listen there" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("edge-mer: error:") and not (tmp_path / "e.jsonl").exists()
