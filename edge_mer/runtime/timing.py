"""Per-stage timers of the device loop: percentiles, throughput, CPU share, peak memory."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def percentiles(values: Any, qs: tuple[int, ...] = (50, 95, 99), digits: int = 3) -> dict[str, float]:
    """{"p50": ..., "p95": ..., "p99": ...} of ``values``, rounded: the one way timings are summarised."""
    a = np.asarray(values, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(a, q)), digits) for q in qs}


class StageTimer:
    """Durations per named stage, in a bounded buffer (fixed memory over hours)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.keep = keep
        self.samples: dict[str, list[float]] = {}
        self.totals: dict[str, float] = {}  # seconds per stage over the whole run (the samples keep the recent)
        self.counts: dict[str, int] = {}
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def add(self, stage: str, seconds: float) -> None:
        buf = self.samples.setdefault(stage, [])
        if len(buf) >= self.keep:
            del buf[: self.keep // 2]  # keep the recent half; percentiles of a long run stay representative
        buf.append(seconds)
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds
        self.counts[stage] = self.counts.get(stage, 0) + 1

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    def summary(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        out: dict[str, Any] = {"stages_ms": {}, "wall_s": round(wall, 3),
                               "cpu_share": round((time.process_time() - self.cpu_started) / max(wall, 1e-9)
                                                  / (os.cpu_count() or 1), 4),
                               "peak_rss_mb": round(peak_rss_mb(), 1)}
        for stage, vals in self.samples.items():
            a = np.asarray(vals) * 1e3
            out["stages_ms"][stage] = {"n": len(vals), **percentiles(a), "mean": round(float(a.mean()), 3)}
        return out


def call_times_ms(fn: Callable[[], object], runs: int, warmup: int = 5) -> np.ndarray:
    """Milliseconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    return interleaved_times_ms({"": fn}, runs, warmup)[""]


def interleaved_times_ms(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 5,
                         block: int = 1) -> dict[str, np.ndarray]:
    """Milliseconds of each of ``runs`` calls of each named call after ``warmup`` untimed ones, timed in turns
    (``block`` calls of each per turn), so that load which comes and goes while they are timed falls on all of
    them alike rather than on whichever ran then. With several calls, each turn starts with one untimed call:
    a call right after another one's pays for the handover (ONNX Runtime's threads of the other session may
    still be spinning, its data fill the caches), which a session running alone never does."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: np.empty(runs) for name in fns}
    for start in range(0, runs, block):
        for name, fn in fns.items():
            if len(fns) > 1:
                fn()  # takes over from the other call's turn: not timed
            for i in range(start, min(start + block, runs)):
                t = time.perf_counter()
                fn()
                times[name][i] = time.perf_counter() - t
    return {name: v * 1e3 for name, v in times.items()}


def other_load() -> float | None:
    """Runnable tasks per core besides this process (the 1-minute load average less the one this process
    adds), or None where the system keeps no load average: how busy the machine was with other work."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    return max(0.0, load - 1.0) / (os.cpu_count() or 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if os.uname().sysname == "Linux" else peak / 1e6


def rss_mb() -> float:
    """Current resident memory in MB (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return peak_rss_mb()
