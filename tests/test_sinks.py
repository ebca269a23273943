"""Event sinks: files, a real Mosquitto broker and a real HTTP receiver on loopback, with the spool between.

What a user of a headless device relies on: every event reaches the broker or the endpoint once, in order,
also when it was down for a while or the run was killed meanwhile, and no credential is ever printed.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_mer.errors import UserError
from edge_mer.runtime.events import Event
from edge_mer.runtime.sinks import EventSinks, Spool, SpoolBusy, parse_sink

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="needs Debian's mosquitto (apt install mosquitto)")
SECRET = "s3cr3t-Pa55"


def event(n: int) -> Event:
    return Event(float(n), n + 0.1, n + 0.2, 30 * n, 30 * n + 3, 30 * n + 6, "surprise", {"surprise": 1.0}, 5.0)


def deliver(uri: str, spool: Path, numbers: range, close_wait: float) -> tuple[list[dict], list[str]]:
    """Events ``numbers`` to the sink ``uri`` through ``EventSinks``, closed with ``close_wait``: its report."""
    sinks = EventSinks([parse_sink(uri)], spool=spool, stdout=False, close_wait=close_wait)
    for n in numbers:
        sinks.write(event(n))
    sinks.close()
    return sinks.report()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- URIs -----------------------------------------------------------------------------------------------------

def test_sink_uris_are_checked_and_never_shown_with_their_secrets():
    mqtt = parse_sink(f"mqtts://cam:{SECRET}@broker.example:8884/site/cam1?ca=/etc/ssl/ca.pem")
    assert mqtt.kind == "mqtt" and SECRET not in mqtt.shown and "broker.example:8884/site/cam1" in mqtt.shown
    assert SECRET not in mqtt.folder_name() and "cam1" in mqtt.folder_name()
    hook = parse_sink("https://hooks.example.org/services/T0A1B2C3D4/B0123456789/8f3eAbC9d2E7f1G6h5?token=abc")
    assert hook.kind == "http" and "8f3eAbC9d2E7f1G6h5" not in hook.shown and "abc" not in hook.shown
    assert hook.shown.startswith("https://hooks.example.org/services/")
    assert parse_sink("events.jsonl").kind == "file"
    for bad, says in (("mqtt://broker", "needs a topic"), ("mqtt://broker/site/#", "without wildcards"),
                      ("ftp://host/x", "not a sink"), ("mqtt://broker:port/t", "not a valid URI"),
                      ("mqtt://broker/t?qos=2", "unknown option"), ("http:///x", "no host")):
        with pytest.raises(UserError, match=says):
            parse_sink(bad)


def test_a_bad_sink_is_one_line_before_the_run_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_mer", "run", "--demo", "--events",
                           f"mqtt://u:{SECRET}@localhost"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "needs a topic" in proc.stderr and SECRET not in proc.stderr


# --- the spool ------------------------------------------------------------------------------------------------

def test_the_spool_keeps_events_in_order_across_reopening_and_refuses_a_second_user(tmp_path):
    spool = Spool(tmp_path / "s")
    for n in range(3):
        assert spool.put(f"event {n}".encode()) is None
    with pytest.raises(SpoolBusy, match="in use by another edge-mer run"):
        Spool(tmp_path / "s")
    number, data = spool.oldest()
    assert data == b"event 0"
    spool.remove(number)
    spool.close()
    (tmp_path / "s" / ".000000000007.part").write_bytes(b"half")  # a write a kill cut short: never taken
    again = Spool(tmp_path / "s")
    assert len(again) == 2 and again.oldest()[1] == b"event 1"
    assert again.put(b"event 3") is None and not list((tmp_path / "s").glob(".*.part"))
    seen = []
    while (head := again.oldest()) is not None:
        seen.append(head[1])
        again.remove(head[0])
    assert seen == [b"event 1", b"event 2", b"event 3"] and not list((tmp_path / "s").glob("*.json"))


# --- HTTP -----------------------------------------------------------------------------------------------------

class Receiver:
    """A webhook endpoint on loopback: answers 500 to the first ``fail`` POSTs, then 204; keeps what it took."""

    def __init__(self, port: int = 0, fail: int = 0) -> None:
        receiver = self
        self.fail = fail
        self.taken: list[dict] = []
        self.auth: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.auth.append(self.headers.get("Authorization"))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                else:
                    receiver.taken.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_webhook_that_fails_then_recovers_gets_every_event_once_in_order(tmp_path):
    receiver = Receiver(fail=3)
    try:
        rows, warnings = deliver(f"http://edge:{SECRET}@127.0.0.1:{receiver.port}/mer", tmp_path / "spool", range(6),
                                 close_wait=20.0)
    finally:
        receiver.close()
    assert [e["onset"] for e in receiver.taken] == [30 * n for n in range(6)]
    assert rows[0]["delivered"] == 6 and rows[0]["backlog"] == 0 and rows[0]["failed_attempts"] == 3
    assert rows[0]["last_error"].startswith("HTTP 500") and not warnings
    assert receiver.auth[-1].startswith("Basic ") and SECRET not in json.dumps(rows)


def test_a_webhook_down_at_the_end_gets_its_events_on_the_next_start(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}/mer"
    rows, warnings = deliver(uri, tmp_path / "spool", range(3), close_wait=1.0)
    assert rows[0]["backlog"] == 3 and rows[0]["delivered"] == 0
    assert "3 event(s) wait in" in warnings[0] and "next run" in warnings[0]
    receiver = Receiver(port=port)
    try:
        rows, _ = deliver(uri, tmp_path / "spool", range(3, 4), close_wait=20.0)
    finally:
        receiver.close()
    assert [e["onset"] for e in receiver.taken] == [0, 30, 60, 90]  # the earlier run's first, then the new one
    assert rows[0]["from_earlier_runs"] == 3 and rows[0]["delivered"] == 4 and rows[0]["backlog"] == 0


# --- MQTT with a real broker ----------------------------------------------------------------------------------

class Broker:
    """Mosquitto on a loopback port, persistent (so that a subscriber's session outlives a broker restart);
    ``tls``: also a TLS listener (``tls_port``) with a certificate for 127.0.0.1 from a CA made here."""

    def __init__(self, folder: Path, tls: bool = False) -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        conf = (f"per_listener_settings false\nallow_anonymous true\npersistence true\n"
                f"persistence_location {folder}/\nautosave_interval 1\n"
                f"user {getpass.getuser()}\n"  # started as root, it would drop to 'mosquitto'
                f"listener {self.port} 127.0.0.1\n")
        if tls:
            self.tls_port = free_port()
            self.ca = make_certificates(folder)
            conf += (f"listener {self.tls_port} 127.0.0.1\ncafile {self.ca}\ncertfile {folder}/server.pem\n"
                     f"keyfile {folder}/server.key\n")
        self.conf.write_text(conf)

        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-500:]}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def make_certificates(folder: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl); the CA's file."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edge-mer test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "san.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")
    return folder / "ca.pem"


class Subscriber:
    """A persistent MQTT session at QoS 1 that records every payload it is given."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.got: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-mer-test-{port}",
                                  clean_session=False)
        self.client.on_message = lambda c, u, m: self.got.append(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        time.sleep(1.5)  # subscribed, and the broker's autosave has the session

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate would arrive now
        return self.got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    yield b
    b.kill()


def run_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "edge_mer", "run", "--demo", "--quiet", *extra]


def first_arrivals(got: list[dict]) -> list[dict]:
    """The messages a subscriber got, each event once (a QoS 1 redelivery dropped), in arrival order."""
    seen: list[dict] = []
    for event in got:
        if event not in seen:
            seen.append(event)
    return seen


def events_in(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@needs_broker
def test_events_reach_the_broker_once_in_order_when_it_is_killed_mid_run_and_restarted(tmp_path, broker):
    sub = Subscriber(broker.port, "site/cam1")
    file = tmp_path / "events.jsonl"
    try:
        run = subprocess.Popen(run_cmd("--demo-seconds", "40", "--events", f"mqtt://cam:{SECRET}@127.0.0.1:"
                                       f"{broker.port}/site/cam1", "--events", str(file), "--spool",
                                       str(tmp_path / "spool"), "--json-summary", str(tmp_path / "s.json")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not sub.got and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.1)
        assert sub.got, "no event reached the broker before it was killed"
        broker.kill()
        down_from = len(events_in(file))
        while len(events_in(file)) == down_from and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)  # at least one event is spotted while the broker is down
        time.sleep(1.0)
        broker.start()
        _, stderr = run.communicate(timeout=180)
        assert run.returncode == 0, stderr[-2000:]
        written = events_in(file)
        got = sub.wait_for(len(written), timeout=30)
    finally:
        sub.close()
    assert len(written) > down_from >= 1
    summary = json.loads((tmp_path / "s.json").read_text())
    row = next(r for r in summary["sinks"] if r["kind"] == "mqtt")
    assert row["delivered"] == len(written) and row["backlog"] == 0 and row["failed_attempts"] >= 1, row
    # every event, in order, the ones made while the broker was down included; QoS 1 is at least once: a broker
    # SIGKILLed between its last autosave and an acknowledgement hands that message out again after its
    # restart, so a repeat of an event already received is allowed, nothing else
    assert first_arrivals(got) == written, {"written": len(written), "got": len(got)}
    assert SECRET not in stderr and SECRET not in (tmp_path / "s.json").read_text()
    assert not list((tmp_path / "spool").rglob("*.json"))  # delivered events leave the spool


@needs_broker
def test_a_run_killed_while_the_broker_is_down_delivers_its_spool_on_the_next_start(tmp_path, broker):
    broker.kill()
    file = tmp_path / "events.jsonl"
    uri = f"mqtt://127.0.0.1:{broker.port}/site/cam2"
    spool = tmp_path / "spool"
    run = subprocess.Popen(run_cmd("--demo-seconds", "60", "--no-realtime", "--events", uri, "--events",
                                   str(file), "--spool", str(spool)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(events_in(file)) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)  # the sink's thread has spooled what the loop handed it
    run.send_signal(signal.SIGKILL)
    run.wait()
    written = events_in(file)
    assert len(written) >= 2 and len(list(spool.rglob("*.json"))) == len(written)
    broker.start()
    sub = Subscriber(broker.port, "site/cam2")
    try:
        again = subprocess.run(run_cmd("--max-frames", "20", "--events", uri, "--spool", str(spool)),
                               capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stderr[-2000:]
        got = sub.wait_for(len(written), timeout=30)
    finally:
        sub.close()
    assert f"{len(written)} event(s) an earlier run could not deliver" in again.stderr
    assert first_arrivals(got) == written and not list(spool.rglob("*.json"))


@needs_broker
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make the test certificates")
def test_mqtts_checks_the_brokers_certificate_and_delivers(tmp_path):
    broker = Broker(tmp_path / "broker", tls=True)
    sub = Subscriber(broker.port, "site/tls")
    try:
        deliver(f"mqtts://cam:{SECRET}@127.0.0.1:{broker.tls_port}/site/tls?ca={broker.ca}", tmp_path / "spool",
                range(3), close_wait=15.0)
        got = sub.wait_for(3, timeout=20)
        # without the CA the broker's certificate is not trusted: nothing goes out, the events wait
        rows, _ = deliver(f"mqtts://127.0.0.1:{broker.tls_port}/site/tls2", tmp_path / "spool2", range(9, 10),
                          close_wait=2.0)
    finally:
        sub.close()
        broker.kill()
    assert [e["onset"] for e in got] == [0, 30, 60]
    assert rows[0]["delivered"] == 0 and rows[0]["backlog"] == 1
    assert "certificate verify failed" in rows[0]["last_error"]
