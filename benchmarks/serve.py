"""What the live view and the event sinks cost the device loop: `edge-mer run --demo` at 640x480, 30 fps, in real
time, once plain and once with `--serve` and a headless Chromium showing the page the whole time (and an MQTT
sink to a local Mosquitto where one is installed).

Each run is the real command (`python -m edge_mer run --demo --demo-seconds S --json-summary ...`); the browser is
Debian's chromium driven by Selenium through chromium-driver, opened on the page once the view is up. Reported:
frames, fps, frames skipped and ring drops (real time is kept when both are 0), the loop's per-frame total and
its `serve` and `sinks` stages, the stream's encoding time, the events, and the CPU share of the whole
machine taken by edge-mer and by the browser. Writes ``benchmarks/results/serve.md`` and ``.json``.

    python benchmarks/serve.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edge_mer.errors import script_main
from edge_mer.runtime.backends.onnxruntime import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children that have ended (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def browser_pids(driver_pid: int) -> list[int]:
    """chromedriver and every process under it (the browser's processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [driver_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def one_run(seconds: float, serve: bool, mqtt: str | None, folder: Path) -> dict[str, Any]:
    summary = folder / f"summary-{'serve' if serve else 'plain'}.json"
    cmd = [sys.executable, "-m", "edge_mer", "run", "--demo", "--demo-seconds", f"{seconds:g}", "--quiet",
           "--json-summary", str(summary), "--events", str(folder / "events.jsonl")]
    port = free_port()
    if serve:
        cmd += ["--serve", f"127.0.0.1:{port}"]
        if mqtt:
            cmd += ["--events", mqtt, "--spool", str(folder / "spool")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    browser = None
    browser_cpu = 0.0
    pids: list[int] = []
    started = time.monotonic()
    try:
        if serve:
            while proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            browser = open_browser(f"http://127.0.0.1:{port}/")
            pids = browser_pids(browser.service.process.pid)
            before = cpu_seconds(pids)
        while proc.poll() is None:
            time.sleep(0.5)
            if browser is not None:
                pids = sorted(set(pids) | set(browser_pids(browser.service.process.pid)))
                browser_cpu = cpu_seconds(pids) - before
        events_on_page = len(browser.find_elements("css selector", "#events li")) if browser is not None else None
    finally:
        if browser is not None:
            browser.quit()
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {stderr[-1500:]}")
    wall = time.monotonic() - started
    s = json.loads(summary.read_text())
    stages = s["timing"]["stages_ms"]
    return {"serve": serve, "frames": s["frames"], "fps": s["fps"], "skipped": s["skipped_frames"],
            "ring_drops": s["ring"].get("dropped", 0), "events": s["events"], "events_on_page": events_on_page,
            "total_ms": stages["total"], "serve_ms": stages.get("serve"), "sinks_ms": stages.get("sinks"),
            "encode_ms": (s.get("serve") or {}).get("encode_ms"),
            "frames_encoded": (s.get("serve") or {}).get("frames_encoded"),
            "edge_mer_cpu_share": s["timing"]["cpu_share"],
            "browser_cpu_share": round(browser_cpu / max(wall, 1e-9) / (os.cpu_count() or 1), 4) if serve else None,
            "sinks": s.get("sinks"), "peak_rss_mb": s["timing"]["peak_rss_mb"]}


def open_browser(url: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    browser.get(url)
    return browser


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        return None, None
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return broker, f"mqtt://127.0.0.1:{port}/edge-mer/bench"


def ms(v: dict[str, float] | None) -> str:
    return f"{v['p50']:.2f} / {v['p95']:.2f}" if v else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker, mqtt = start_broker(folder)
        try:
            rows = [one_run(args.seconds, False, None, folder), one_run(args.seconds, True, mqtt, folder)]
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait()
    doc = {"date": dt.date.today().isoformat(), "machine": f"{cpu_name()}, {os.cpu_count()} cores",
           "seconds": args.seconds, "mqtt_sink": mqtt is not None, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# The live view and the sinks: what they cost the loop ({doc['date']})", "",
             f"Machine: {doc['machine']}. `edge-mer run --demo`, 640x480 at 30 fps in real time for "
             f"{args.seconds:g} s, ONNX Runtime, OpenCV DIS; events to a file, and with `--serve` also "
             + ("to a local Mosquitto (MQTT, QoS 1), " if mqtt else "") +
             "with headless Chromium showing the page (stream, signal plot, events) the whole time.", "",
             "Command: `python benchmarks/serve.py`", "",
             "| run | frames | fps | skipped | ring drops | events (on the page) | loop total p50 / p95 ms | "
             "serve stage p50 / p95 ms | sinks stage p50 / p95 ms | encode p50 / p95 ms (frames) | edge-mer CPU | "
             "browser CPU |", "|---|---:|---:|---:|---:|---|---|---|---|---|---:|---:|"]
    for r in rows:
        page = f" ({r['events_on_page']})" if r["events_on_page"] is not None else ""
        enc = f"{ms(r['encode_ms'])} ({r['frames_encoded']})" if r["encode_ms"] else ""
        browser = f"{r['browser_cpu_share']:.0%}" if r["browser_cpu_share"] is not None else ""
        lines.append(f"| {'--serve + browser' if r['serve'] else 'plain'} | {r['frames']} | {r['fps']:.1f} | "
                     f"{r['skipped']} | {r['ring_drops']} | {r['events']}{page} | {ms(r['total_ms'])} | "
                     f"{ms(r['serve_ms'])} | {ms(r['sinks_ms'])} | {enc} | {r['edge_mer_cpu_share']:.0%} | "
                     f"{browser} |")
    lines += ["", "CPU shares are of the whole machine (all cores). The `serve` stage is the loop's own part "
              "(a signal point, and a frame copy at most 10 times a second while a stream is watched); drawing and "
              "JPEG encoding run on the view's thread, in the edge-mer CPU column but off the loop."]
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
