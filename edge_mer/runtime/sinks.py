"""Where the events go: stdout, JSON-lines files, MQTT brokers and HTTP endpoints, each named by a URI.

    edge-mer run --camera 0 --events events.jsonl --events mqtts://cam:secret@broker/site/cam1 \\
                 --events https://hooks.example.org/mer

A file gets every event at once (``EventWriter``). A remote sink (MQTT at QoS 1, an HTTP POST of the
event's JSON) never holds the loop up: it has a thread of its own, and every event it is given is first
kept in its spool folder (one fsynced file per event, under ``--spool``) and removed only once the other
side has taken it (the broker's PUBACK, a 2xx answer). A sink that is down is tried again after growing
pauses; its events wait in the spool and go out in order, oldest first, when it is back, and also on
the next start of ``edge-mer run`` with the same spool. One event is in flight at a time, so the order
holds, and an event is sent again only when its answer never came (MQTT's DUP resend after a lost
connection, or a run killed between the send and the answer).

A URI's credentials (``user:password@``, secret query values) are used and never shown: logs, messages
and the summary carry the redacted form.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import math
import os
import queue
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mer.errors import UserError
from edge_mer.runtime.events import Event, EventWriter
from edge_mer.runtime.sources import redact

try:
    import fcntl  # the spool's lock; POSIX only
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

SINK_HELP = ("where events go besides stdout, repeatable: a JSON-lines file, mqtt[s]://[user:pass@]host[:port]/topic "
             "(QoS 1) or http(s)://... (POST of each event's JSON)")
MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}
SEND_TIMEOUT_S = 5.0  # one delivery attempt waits this long for its answer
MAX_PAUSE_S = 30.0  # the longest pause between two attempts at an HTTP sink that is down
MQTT_RECONNECT_S = (1, 5)  # the MQTT client's pauses between reconnection attempts: first, longest
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# a webhook's secret often is a path segment (/hooks/T0A1B2C3/8f3e...): long segments of letters and digits
_TOKEN_SEGMENT = re.compile(r"/(?=[^/?#]*[0-9])(?=[^/?#]*[A-Za-z])[A-Za-z0-9_-]{16,}(?=[/?#]|$)")


def default_spool() -> Path:
    """Where remote sinks keep undelivered events: ``$XDG_STATE_HOME/edge-mer/spool`` (``~/.local/state/...``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edge-mer" / "spool"


@dataclass(frozen=True)
class SinkURI:
    """One ``--events`` value: ``kind`` is file, mqtt or http; ``shown`` the URI without its secrets."""

    kind: str
    uri: str
    shown: str

    @property
    def path(self) -> Path:
        assert self.kind == "file"
        return Path(self.uri)

    def folder_name(self) -> str:
        """A spool folder name of its own: readable (no secrets) and unique to the full URI."""
        parts = urllib.parse.urlsplit(self.uri)
        where = parts.path if self.kind == "mqtt" else ""  # a topic; an HTTP path may hold a secret
        readable = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{parts.hostname}-{parts.port or ''}-{where}").strip("-")
        return f"{parts.scheme}-{readable[:60]}-{hashlib.sha1(self.uri.encode()).hexdigest()[:10]}"


def parse_sink(text: str) -> SinkURI:
    """``text`` as a sink, or one line saying what is wrong with it (parse time, before anything opens)."""
    m = _SCHEME.match(text)
    if m is None:
        if not text.strip():
            raise UserError("--events: empty value")
        return SinkURI("file", text, text)
    scheme = m.group(1).lower()
    shown = redact(text)
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise UserError(f"--events {shown}: not a valid URI (a port that is not a number?)") from None
    if not parts.hostname:
        raise UserError(f"--events {shown}: no host")
    if scheme in MQTT_PORTS:
        topic = parts.path.lstrip("/")
        if not topic or "+" in topic or "#" in text:  # urlsplit reads a # as the start of a fragment
            raise UserError(f"--events {shown}: an MQTT sink needs a topic to publish to, without wildcards: "
                            f"{scheme}://[user:pass@]host[:port]/topic")
        unknown = set(urllib.parse.parse_qs(parts.query)) - {"ca", "client_id"}
        if unknown:
            raise UserError(f"--events {shown}: unknown option(s) {', '.join(sorted(unknown))} (ca=FILE, client_id=ID)")
        return SinkURI("mqtt", text, shown)
    if scheme in ("http", "https"):
        return SinkURI("http", text, _TOKEN_SEGMENT.sub(r"/***", shown))
    raise UserError(f"--events {shown}: {scheme}:// is not a sink; give a file, mqtt://, mqtts://, http:// or https://")


class SpoolBusy(UserError):
    pass


class Spool:
    """A sink's undelivered events, oldest first: one file per event (``<number>.json``), written whole and
    fsynced before the event counts as taken, removed once delivered. A lock keeps a second run off it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"--spool: cannot keep events in {folder}: {exc.strerror}") from None
        try:
            if fcntl is not None:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise SpoolBusy(f"the spool {folder} is in use by another edge-mer run; give each run a --spool of "
                            "its own") from None
        for stale in folder.glob(".*.part"):  # an event half written by a killed run was never taken
            stale.unlink()
        self._numbers: deque[int] = deque(sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()))
        self._next = (self._numbers[-1] + 1) if self._numbers else 0
        self._memory: dict[int, bytes] = {}  # events the disk refused (full, read-only): kept here instead

    def __len__(self) -> int:
        return len(self._numbers)

    def put(self, data: bytes) -> str | None:
        """Keep ``data`` as the newest event; the reason when only memory could take it (None: on disk)."""
        number = self._next
        self._next += 1
        self._numbers.append(number)
        tmp = self.folder / f".{number:012d}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.folder / f"{number:012d}.json")
            return None
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._memory[number] = data
            return exc.strerror or str(exc)

    def oldest(self) -> tuple[int, bytes] | None:
        while self._numbers:
            number = self._numbers[0]
            if number in self._memory:
                return number, self._memory[number]
            try:
                return number, (self.folder / f"{number:012d}.json").read_bytes()
            except OSError:  # removed by hand: nothing to deliver
                self._numbers.popleft()
        return None

    def remove(self, number: int) -> None:
        if self._numbers and self._numbers[0] == number:
            self._numbers.popleft()
        if self._memory.pop(number, None) is None:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{number:012d}.json").unlink()

    def close(self) -> None:
        os.close(self._lock)


class HttpTransport:
    """POST of each event's JSON; a 2xx answer takes it. Credentials in the URI go as HTTP basic auth."""

    max_pause = MAX_PAUSE_S

    def __init__(self, sink: SinkURI) -> None:
        parts = urllib.parse.urlsplit(sink.uri)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.headers = {"Content-Type": "application/json", "User-Agent": "edge-mer"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def send(self, number: int, data: bytes, timeout: float) -> str | None:
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read()
                return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return str(exc.reason)
        except (OSError, ssl.SSLError) as exc:  # timeouts, resets
            return str(exc) or type(exc).__name__

    def close(self) -> None:
        pass


class MqttTransport:
    """Publish at QoS 1 through paho-mqtt; the broker's PUBACK takes an event. The client reconnects on its own
    thread; an event published before a connection was lost is re-sent by the client (with MQTT's DUP flag)
    once it is back, and is not published a second time from here."""

    max_pause = 0.5  # a look at the connection's state: the client does the reconnecting

    def __init__(self, sink: SinkURI) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UserError(f"--events {sink.shown}: MQTT needs paho-mqtt: pip install 'edge-mer[mqtt]'") from None
        parts = urllib.parse.urlsplit(sink.uri)
        options = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        self.topic = urllib.parse.unquote(parts.path.lstrip("/"))
        self.reason: str | None = "not connected yet"
        self._acked: set[int] = set()
        self._pending: tuple[int, int] | None = None  # (spool number, message id) published, not yet acknowledged
        self._done = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=options.get("client_id", ""))
        if parts.username is not None:
            self.client.username_pw_set(urllib.parse.unquote(parts.username),
                                        urllib.parse.unquote(parts.password) if parts.password is not None else None)
        scheme = parts.scheme.lower()
        self._where = (parts.hostname or "", parts.port or MQTT_PORTS[scheme])
        self._tls: ssl.SSLContext | None = None
        self._diagnosed_at = -math.inf
        self._why: str | None = None
        if scheme == "mqtts":
            ca = options.get("ca")
            if ca is not None and not Path(ca).is_file():
                raise UserError(f"--events {sink.shown}: CA file not found: {ca}")
            self._tls = ssl.create_default_context(cafile=ca)
            self.client.tls_set_context(self._tls)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        self.client.reconnect_delay_set(*MQTT_RECONNECT_S)
        self.client.connect_async(*self._where, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.reason = f"the broker refused the connection: {reason}" if reason.is_failure else None

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.reason = "connection lost"

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # the client says only that it failed: one connection of our own, now and then, says why
        now = time.monotonic()
        if now >= self._diagnosed_at + 30.0:
            self._diagnosed_at = now
            self._why = self._diagnose()
        self.reason = f"broker unreachable ({self._why})" if self._why else "broker unreachable"

    def _diagnose(self) -> str | None:
        try:
            with socket.create_connection(self._where, timeout=3.0) as sock:
                if self._tls is not None:
                    with self._tls.wrap_socket(sock, server_hostname=self._where[0]):
                        pass
        except ssl.SSLError as exc:  # an untrusted certificate, a broker that does not speak TLS
            return str(exc)
        except OSError as exc:  # refused, no route, a name that does not resolve
            return exc.strerror or str(exc) or type(exc).__name__
        return None

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._done:
            self._acked.add(mid)
            self._done.notify_all()

    def send(self, number: int, data: bytes, timeout: float) -> str | None:
        if self._pending is None or self._pending[0] != number:
            if self.reason is not None:
                return self.reason
            info = self.client.publish(self.topic, data, qos=1)
            self._pending = (number, info.mid)
        mid = self._pending[1]
        with self._done:
            self._done.wait_for(lambda: mid in self._acked, timeout)
            if mid not in self._acked:
                return self.reason or "no PUBACK from the broker"
            self._acked.discard(mid)
        self._pending = None
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _transport(sink: SinkURI) -> Any:
    return MqttTransport(sink) if sink.kind == "mqtt" else HttpTransport(sink)


class RemoteSink:
    """One MQTT or HTTP sink: events handed over by ``put`` (never waits), spooled and delivered in order by a
    thread of its own, with growing pauses while the other side is down."""

    def __init__(self, sink: SinkURI, spool_root: Path) -> None:
        self.sink = sink
        self.spool = Spool(spool_root / sink.folder_name())
        self.earlier = len(self.spool)  # events an earlier run left undelivered
        try:
            self.transport = _transport(sink)
        except BaseException:
            self.spool.close()
            raise
        self.delivered = 0
        self.failures = 0  # attempts that failed
        self.last_error: str | None = None
        self.spool_error: str | None = None
        self.seconds = 0.0  # time this sink's thread spent spooling and sending
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._stop_by: float | None = None  # monotonic deadline of the final delivery, once closing
        self._thread = threading.Thread(target=self._run, name=f"sink {sink.shown}", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        self._queue.put(data)

    @property
    def backlog(self) -> int:
        return len(self.spool) + self._queue.qsize()

    def _spool_queued(self, wait: float) -> None:
        try:
            data = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            reason = self.spool.put(data)
            if reason is not None and self.spool_error is None:
                self.spool_error = reason
                print(f"warning: cannot keep events for {self.sink.shown} in {self.spool.folder} ({reason}); "
                      "they wait in memory until delivered", file=sys.stderr)
            try:
                data = self._queue.get_nowait()
            except queue.Empty:
                return

    def _run(self) -> None:
        retry_at = 0.0  # no attempt before this (monotonic), while the other side is down
        pause = 0.0
        while True:
            now = time.monotonic()
            if self._stop_by is not None and (self.backlog == 0 or now >= self._stop_by):
                self._spool_queued(0.0)
                return
            if not len(self.spool) or now < retry_at:  # wait for an event, or for the end of the pause
                self._spool_queued(0.2 if not len(self.spool) else min(0.2, retry_at - now))
                continue
            self._spool_queued(0.0)  # what came meanwhile is kept before the time goes into sending
            head = self.spool.oldest()  # read from disk only when it is sent
            if head is None:  # its file was removed by hand
                continue
            start = time.perf_counter()
            reason = self.transport.send(head[0], head[1], SEND_TIMEOUT_S)
            self.seconds += time.perf_counter() - start
            if reason is None:
                self.spool.remove(head[0])
                self.delivered += 1
                pause, retry_at = 0.0, 0.0
            else:
                self.failures += 1
                self.last_error = reason
                pause = min(self.transport.max_pause, max(0.5, 2 * pause))
                retry_at = time.monotonic() + pause

    def close(self, wait: float) -> None:
        """Deliver what is left for up to ``wait`` seconds, then stop; the rest stays in the spool."""
        self._stop_by = time.monotonic() + wait
        self._thread.join(wait + SEND_TIMEOUT_S + 1.0)
        self.transport.close()
        self.spool.close()

    def report(self) -> dict[str, Any]:
        return {"sink": self.sink.shown, "kind": self.sink.kind, "delivered": self.delivered,
                "backlog": self.backlog, "from_earlier_runs": self.earlier, "failed_attempts": self.failures,
                "last_error": self.last_error, "spool": str(self.spool.folder),
                "spool_error": self.spool_error, "seconds": round(self.seconds, 4)}


class EventSinks:
    """Every event to stdout (unless quiet), to each file at once and to each remote sink's thread."""

    def __init__(self, sinks: list[SinkURI], spool: Path | None = None, stdout: bool = True,
                 close_wait: float = 5.0) -> None:
        self.stdout = stdout
        self.close_wait = close_wait
        self.files: list[tuple[SinkURI, EventWriter]] = []
        self.remote: list[RemoteSink] = []
        try:
            for sink in sinks:
                if sink.kind == "file":
                    self.files.append((sink, EventWriter(sink.path, stdout=False)))
                else:
                    self.remote.append(RemoteSink(sink, spool or default_spool()))
        except BaseException:
            self.close(wait=0.0)
            raise
        for r in self.remote:
            if r.earlier:
                print(f"note: {r.earlier} event(s) an earlier run could not deliver to {r.sink.shown} go out first",
                      file=sys.stderr)

    def write(self, event: Event) -> None:
        line = event.to_json()  # made once for every sink
        for _, writer in self.files:
            writer.write_line(line)
        data = line.encode("utf-8")
        for r in self.remote:
            r.put(data)
        if self.stdout:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def close(self, wait: float | None = None) -> None:
        """Close the files; give the remote sinks ``wait`` seconds (default ``close_wait``) to deliver."""
        for _, writer in self.files:
            writer.close()
        wait = self.close_wait if wait is None else wait
        deadline = time.monotonic() + wait
        for r in self.remote:
            r.close(max(0.0, deadline - time.monotonic()))

    def report(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Per sink what reached it, and the warnings for the summary."""
        rows: list[dict[str, Any]] = []
        warnings: list[str] = []
        for sink, writer in self.files:
            rows.append({"sink": sink.shown, "kind": "file", "delivered": writer.count - writer.lost,
                         "lost": writer.lost, "failure": writer.failure})
            if writer.failure is not None:
                warnings.append(f"warning: {writer.lost} of {writer.count} events did not reach {sink.shown} "
                                f"({writer.failure})")
        for r in self.remote:
            row = r.report()
            rows.append(row)
            if row["backlog"]:
                warnings.append(f"warning: {row['backlog']} event(s) wait in {row['spool']} for {r.sink.shown} "
                                f"(last error: {row['last_error']}); they go out when it is back, also on the next "
                                "run with this spool")
        return rows, warnings
