"""The live view of a headless device in the browser, and its metrics (``edge-mer run --serve [HOST:]PORT``).

    /             the page: the camera with the face box and landmarks, the spotting signal and its
                  threshold as a moving plot, the last events with their labels and probabilities
    /stream.mjpg  the camera as MJPEG (multipart/x-mixed-replace)
    /events       Server-Sent Events: each event as it is written (unnamed messages), and the signal
                  (``event: signal``, batches of [seconds, value, threshold] four times a second)
    /metrics      Prometheus text format
    /healthz      {"status": "ok" | "starting" | "stalled" | "stopped", ...}; 503 unless ok (stalled:
                  no frame for 5 s)

Serving costs the loop one look at the clock per frame and, only while someone watches the stream,
a copy of a frame at most ``fps`` times a second; drawing and JPEG encoding happen on a thread of
their own, and each client has its own thread that sends the newest picture (a slow client misses
pictures, and one whose socket stays full for 2 s is dropped). With a token, every path but
``/healthz`` wants ``?token=`` or ``Authorization: Bearer``; the address is 127.0.0.1 unless told.
"""

from __future__ import annotations

import hmac
import json
import math
import socket
import threading
import time
import urllib.parse
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_mer.errors import UserError
from edge_mer.face.align import FaceAlignment
from edge_mer.face.show import draw
from edge_mer.runtime.events import Event
from edge_mer.runtime.timing import percentiles, rss_mb

if TYPE_CHECKING:
    from edge_mer.runtime.sinks import EventSinks

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SEND_TIMEOUT_S = 2.0  # a client whose socket takes no data for this long is dropped
STREAM_SNDBUF = 256 * 1024  # bytes the kernel holds for one stream client (a few pictures)
STALLED_S = 5.0  # /healthz: no frame for this long is a stalled loop
SIGNAL_KEEP = 600  # signal points kept for a page that opens (20 s at 30 fps)
EVENTS_KEPT = 100  # events kept for the SSE clients (memory stays flat over a run of days)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """The loop's counters in the Prometheus text format, read from the loop when scraped (nothing kept twice)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def render(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{labels} {value:.9g}" if math.isfinite(value) else f"{name}{labels} NaN")

        view = self.view
        loop = view.loop
        if loop is None:
            return ""
        stats = loop.stats
        ring = loop.ring.stats()
        metric("edge_mer_frames_read_total", "counter", "Frames the source gave.",
               [("", loop.source.frames_read)])
        metric("edge_mer_frames_processed_total", "counter", "Frames the loop processed.", [("", stats.frames)])
        metric("edge_mer_ring_dropped_frames_total", "counter", "Frames that left the ring buffer unread.",
               [("", ring.dropped)])
        metric("edge_mer_fps", "gauge", "Frames processed per second over the last two seconds.", [("", view.fps())])
        metric("edge_mer_spots_total", "counter", "Spots the spotter reported.", [("", stats.spots)])
        labels = dict(view.labels)
        for name in getattr(loop.recognizer.backend, "class_names", []):
            labels.setdefault(name, 0)
        metric("edge_mer_events_total", "counter", "Events written, by label.",
               [(f'{{label="{_escape(k)}"}}', v) for k, v in sorted(labels.items())])
        lat = np.asarray(stats.latencies_ms, np.float64) / 1e3
        out.append("# HELP edge_mer_event_latency_seconds From a spot's offset frame to its event.")
        out.append("# TYPE edge_mer_event_latency_seconds histogram")
        for le in LATENCY_BUCKETS_S:
            out.append(f'edge_mer_event_latency_seconds_bucket{{le="{le:g}"}} {int((lat <= le).sum())}')
        out.append(f'edge_mer_event_latency_seconds_bucket{{le="+Inf"}} {len(lat)}')
        out.append(f"edge_mer_event_latency_seconds_sum {float(lat.sum()):.9g}")
        out.append(f"edge_mer_event_latency_seconds_count {len(lat)}")
        totals = dict(loop.timer.totals)
        metric("edge_mer_stage_seconds_total", "counter", "Time spent per stage of the loop.",
               [(f'{{stage="{_escape(k)}"}}', v) for k, v in sorted(totals.items())])
        metric("edge_mer_stage_runs_total", "counter", "Runs per stage of the loop.",
               [(f'{{stage="{_escape(k)}"}}', v) for k, v in sorted(dict(loop.timer.counts).items())])
        metric("edge_mer_face_lost_seconds_total", "counter", "Video time without a face.",
               [("", stats.no_face_frames / max(loop.fps, 1e-9))])
        metric("edge_mer_resident_memory_bytes", "gauge", "Resident memory of the process.", [("", rss_mb() * 1e6)])
        sinks = view.sinks
        if sinks is not None and sinks.remote:
            metric("edge_mer_sink_backlog_events", "gauge", "Events waiting to be delivered, per sink.",
                   [(f'{{sink="{_escape(r.sink.shown)}"}}', r.backlog) for r in sinks.remote])
            metric("edge_mer_sink_delivered_total", "counter", "Events delivered, per sink.",
                   [(f'{{sink="{_escape(r.sink.shown)}"}}', r.delivered) for r in sinks.remote])
        metric("edge_mer_serve_clients", "gauge", "Browsers and scrapers connected to the live view now.",
               [("", view.clients)])
        metric("edge_mer_serve_dropped_clients_total", "counter", "Clients dropped for not reading.",
               [("", view.dropped)])
        metric("edge_mer_serve_encoded_frames_total", "counter", "Frames drawn and encoded for the stream.",
               [("", view.encoded)])
        return "\n".join(out) + "\n"


class LiveView:
    """The HTTP server, the stream's encoder thread and what the page shows; fed by the loop."""

    def __init__(self, address: tuple[str, int], token: str | None = None, fps: float = 10.0,
                 sinks: EventSinks | None = None) -> None:
        self.address = address
        self.token = token
        self.interval = 1.0 / fps
        self.sinks = sinks
        self.loop: Any = None  # the DeviceLoop shown, once it runs (loop.py imports this module, not back)
        self.metrics = Metrics(self)
        self.closed = False
        self.clients = 0  # connected now
        self.served = 0  # connections taken
        self.dropped = 0  # clients dropped for a full socket
        self.encoded = 0
        self.encode_s: deque[float] = deque(maxlen=2000)
        self.labels: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._viewers = 0  # stream clients: frames are copied only while there is one
        self._pending: tuple[np.ndarray, FaceAlignment | None, str] | None = None
        self._next_grab = 0.0
        self._frame_ts: deque[float] = deque(maxlen=64)
        self._last_frame = time.monotonic()
        self.events: deque[str] = deque(maxlen=EVENTS_KEPT)  # JSON of the last events (a page shows 20)
        self.events_total = 0  # events so far: the SSE clients' position
        self.signal: deque[tuple[int, list[float | None]]] = deque(maxlen=SIGNAL_KEEP)  # (seq, [t, value, thr])
        self._signal_seq = 0
        try:
            self.server = ThreadingHTTPServer(address, _handler(self))
        except OSError as exc:
            raise UserError(f"--serve {address[0]}:{address[1]}: cannot listen there ({exc.strerror})") from None
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._threads = [threading.Thread(target=self.server.serve_forever, name="serve", daemon=True),
                         threading.Thread(target=self._encode, name="serve-encoder", daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        host = self.address[0]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{shown}:{self.port}/"

    # --- fed by the loop (its thread) ----------------------------------------------------------------------
    def frame(self, image: np.ndarray, number: int, alignment: FaceAlignment | None,
              last: tuple[int, float, float] | None, fps: float) -> None:
        """One processed frame: its picture (only while a stream is watched), face and signal point."""
        now = time.monotonic()
        self._last_frame = now
        self._frame_ts.append(now)
        if last is not None:
            t, v, thr = last
            self._signal_seq += 1
            self.signal.append((self._signal_seq, [round(t / fps, 3), _finite(v), _finite(thr)]))
        if self._viewers and now >= self._next_grab:
            self._next_grab = now + self.interval
            with self._cond:
                self._pending = (image.copy(), alignment, f"frame {number}")
                self._cond.notify_all()

    def event(self, event: Event) -> None:
        self.labels[event.label] += 1
        with self._cond:
            self.events.append(event.to_json())
            self.events_total += 1
            self._cond.notify_all()

    def fps(self) -> float:
        ts = [t for t in list(self._frame_ts) if t >= time.monotonic() - 2.0]  # list(): copied at once
        return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

    # --- the encoder thread --------------------------------------------------------------------------------
    def _encode(self) -> None:
        while not self.closed:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self.closed, timeout=1.0)
                pending, self._pending = self._pending, None
            if pending is None:
                continue
            start = time.perf_counter()
            image, alignment, note = pending
            ok, jpeg = cv2.imencode(".jpg", draw(image, alignment, note=note), [cv2.IMWRITE_JPEG_QUALITY, 75])
            self.encode_s.append(time.perf_counter() - start)
            if ok:
                with self._cond:
                    self._jpeg, self._jpeg_seq = jpeg.tobytes(), self._jpeg_seq + 1
                    self.encoded += 1
                    self._cond.notify_all()

    # --- what the handlers wait on ---------------------------------------------------------------------------
    def watching(self, change: int) -> None:
        with self._cond:
            self._viewers += change

    def count(self, served: int = 0, clients: int = 0, dropped: int = 0) -> None:
        """The handlers' counters, changed under the lock (several handler threads at once)."""
        with self._cond:
            self.served += served
            self.clients += clients
            self.dropped += dropped

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._jpeg_seq > after or self.closed, timeout)
            return self._jpeg_seq, self._jpeg

    def wait(self, events_seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.events_total > events_seen or self.closed, timeout)

    def events_after(self, seen: int) -> tuple[list[str], int]:
        """The events after the first ``seen`` that are still kept, and how many there are in all now."""
        with self._cond:
            kept = list(self.events)
            return kept[max(0, seen - (self.events_total - len(kept))):], self.events_total

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 while frames come; 503 before the first (``starting``), after 5 s without one (``stalled``) and
        once the run ends (``stopped``)."""
        age = time.monotonic() - self._last_frame
        loop = self.loop
        frames = loop.stats.frames if loop is not None else 0
        status = ("stopped" if self.closed else "starting" if frames == 0 else "stalled" if age >= STALLED_S
                  else "ok")
        return (200 if status == "ok" else 503), {
            "status": status, "last_frame_age_s": round(age, 3) if frames else None, "frames": frames,
            "events": loop.stats.events if loop is not None else 0, "fps": round(self.fps(), 2)}

    def allowed(self, path: str, headers: Any) -> bool:
        if self.token is None or urllib.parse.urlsplit(path).path == "/healthz":
            return True
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        given = (query.get("token") or [""])[-1]
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            given = auth[7:]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def report(self) -> dict[str, Any]:
        enc = np.asarray(self.encode_s, np.float64) * 1e3
        return {"address": self.url, "clients_served": self.served, "clients_dropped": self.dropped,
                "frames_encoded": self.encoded,
                "encode_ms": percentiles(enc, (50, 95), digits=2) if len(enc) else None}


def _finite(x: float) -> float | None:
    return round(float(x), 5) if math.isfinite(x) else None


def _handler(view: LiveView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-mer"
        timeout = 30.0  # reading the request

        def log_message(self, *args: Any) -> None:  # no line per request on stderr
            pass

        def do_GET(self) -> None:
            if not view.allowed(self.path, self.headers):
                self._send(401, "text/plain; charset=utf-8", b"a token is needed: ?token=... or Authorization: "
                                                             b"Bearer ...\n")
                return
            route = urllib.parse.urlsplit(self.path).path
            view.count(served=1, clients=1)
            self.connection.settimeout(SEND_TIMEOUT_S)
            try:
                if route == "/":
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif route == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", view.metrics.render().encode())
                elif route == "/healthz":
                    code, body = view.health()
                    self._send(code, "application/json", json.dumps(body).encode())
                elif route == "/stream.mjpg":
                    self._stream()
                elif route == "/events":
                    self._events()
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            except TimeoutError:  # the client's socket stayed full: dropped, not waited for
                view.count(dropped=1)
            except OSError as exc:
                if "timed out" not in str(exc):  # Python 3.8's socket.timeout is not a TimeoutError
                    raise
                view.count(dropped=1)
            finally:
                view.count(clients=-1)

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            # a small send buffer: a client that stops reading is found within a few pictures, not megabytes
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seq = 0
            view.watching(+1)
            try:
                while not view.closed:
                    seq, jpeg = view.next_jpeg(seq, timeout=5.0)
                    if jpeg is None:
                        continue
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    self.wfile.flush()
            finally:
                view.watching(-1)

        def _events(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            sent_events = max(0, view.events_total - 20)  # a page that opens gets the last 20 events
            sent_signal = 0
            while not view.closed:
                events, sent_events = view.events_after(sent_events)
                chunks = [f"data: {e}\n\n" for e in events]
                fresh = [(seq, p) for seq, p in list(view.signal) if seq > sent_signal]  # the loop appends meanwhile
                if fresh:
                    sent_signal = fresh[-1][0]
                    chunks.append(f"event: signal\ndata: {json.dumps([p for _, p in fresh])}\n\n")
                self.wfile.write(("".join(chunks) or ": idle\n\n").encode())
                self.wfile.flush()
                view.wait(sent_events, timeout=0.25)

    return Handler


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-mer live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{padding:8px 14px;background:#222;font-weight:600}
main{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
#video{max-width:640px;width:100%;background:#000;border:1px solid #333}
section{flex:1;min-width:320px}
canvas{width:100%;height:180px;background:#1a1a1a;border:1px solid #333}
ol{list-style:none;padding:0;margin:0;font-size:14px}
li{padding:6px 8px;border-bottom:1px solid #2a2a2a}
.label{font-weight:700;color:#7fd97f}.p{color:#999}
</style></head><body>
<header>edge-mer live <span id="state" class="p"></span></header>
<main>
<img id="video" alt="camera" src="stream.mjpg">
<section>
<canvas id="plot" width="640" height="180"></canvas>
<div class="p">spotting signal (white) and its threshold (orange), last 20 s</div>
<h3>Events</h3><ol id="events"></ol>
</section></main>
<script>
const q = location.search;
document.getElementById("video").src = "stream.mjpg" + q;
const points = [], canvas = document.getElementById("plot"), ctx = canvas.getContext("2d");
function plot() {
  const w = canvas.width, h = canvas.height; ctx.clearRect(0, 0, w, h);
  if (points.length < 2) return;
  const t1 = points[points.length - 1][0], t0 = t1 - 20;
  let top = 1e-9;
  for (const p of points) if (p[0] >= t0) for (const v of [p[1], p[2]]) if (v !== null && v > top) top = v;
  for (const [k, colour] of [[1, "#eee"], [2, "#f90"]]) {
    ctx.strokeStyle = colour; ctx.beginPath(); let pen = false;
    for (const p of points) {
      if (p[k] === null || p[0] < t0) { pen = false; continue; }
      const x = (p[0] - t0) / 20 * w, y = h - 4 - p[k] / top * (h - 8);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y); pen = true;
    }
    ctx.stroke();
  }
}
const list = document.getElementById("events");
const source = new EventSource("events" + q);
source.onopen = () => document.getElementById("state").textContent = "connected";
source.onerror = () => document.getElementById("state").textContent = "reconnecting";
source.addEventListener("signal", m => {
  for (const p of JSON.parse(m.data)) points.push(p);
  while (points.length > 900) points.shift();
  plot();
});
source.onmessage = m => {
  const e = JSON.parse(m.data), li = document.createElement("li");
  const probs = Object.entries(e.probs).sort((a, b) => b[1] - a[1]).map(([k, v]) => k + " " + v.toFixed(2)).join(", ");
  li.innerHTML = '<span class="label"></span> at <span class="t"></span> s <span class="p"></span>';
  li.querySelector(".label").textContent = e.label;
  li.querySelector(".t").textContent = e.apex_ts.toFixed(2);
  li.querySelector(".p").textContent = "(" + probs + "; latency " + e.latency_ms.toFixed(0) + " ms)";
  list.prepend(li);
  while (list.children.length > 20) list.lastChild.remove();
};
</script></body></html>
"""
