"""The capture thread: reads a source, stamps each frame on arrival and pushes it into the ring.

The consumer never waits for the camera: it reads the ring (``wait_newer``,
``latest``, ``window``), and the thread never waits for the consumer: a full
ring drops its oldest frame.

A live source that fails (camera unplugged, stream down) is closed and opened
again with exponential backoff (0.5 s doubling to 8 s) until it comes back or
``stop()`` is called; the process keeps running and the counters say what
happened. A file, folder or demo ends the thread at its last frame. When the
thread ends it closes the ring, so a consumer blocked in ``wait_newer`` wakes
up, drains what is left and then gets None.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

import numpy as np

from edge_mer.runtime.ring import FrameRing
from edge_mer.runtime.sources import Source

BACKOFF = (0.5, 8.0)


class CaptureThread:
    """A daemon thread from ``source`` into ``ring``; it owns the source and closes it when it ends.

    ``source`` is an open :class:`Source` (reopened with ``source.reopen()``
    after a failure) or a callable that opens one, called in the thread; with
    ``reconnect`` a failed open is retried with the same backoff as a lost source.

    Counters: ``frames`` pushed, ``failures`` (failed opens and failed reads),
    ``reconnects`` (successful opens after a failure), ``error`` (the last
    failure, one line), ``exception`` (what ended the thread when it was not a
    source failure, e.g. a frame of another shape than the ring's: the loop
    should raise it), ``finished`` (the thread has ended: end of file, stop()
    or a failure it does not retry).
    """

    def __init__(self, source: Source | Callable[[], Source], ring: FrameRing, reconnect: bool = True, *,
                 backoff: tuple[float, float] = BACKOFF, keep: int = 0) -> None:
        if isinstance(source, Source):
            self.source: Source | None = source
            self._open: Callable[[], Source] = source.reopen
        else:
            self.source = None
            self._open = source
        self.ring = ring
        self.reconnect = reconnect
        self.backoff = backoff
        self.keep = keep  # a file played as fast as possible leaves the consumer this many frames of history
        self.frames = 0
        self.failures = 0
        self.reconnects = 0
        self.error: str | None = None
        self.exception: BaseException | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-mer-capture", daemon=True)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to end and join it; False when it is still stuck in a read after ``timeout`` s."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread has ended (a file played to its end); False on timeout."""
        return self._done.wait(timeout)

    def __enter__(self) -> CaptureThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # not a source failure: recorded here for the consumer to raise
            self.exception = exc
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.source is not None:
                self.source.close()
            self._done.set()
            self.ring.close()

    def _fail(self, message: str) -> None:
        self.failures += 1
        self.error = message

    def _read(self, source: Source) -> tuple[np.ndarray | None, str | None]:
        """The next frame, or None with why (None at a plain end of stream)."""
        try:
            ok, frame = source.read()
        except Exception as exc:  # a vanished device raises whatever its driver binding raises
            return None, f"{source.describe()}: {type(exc).__name__}: {exc}"
        if ok and frame is not None:
            return frame, None
        return None, source.error

    def _loop(self) -> None:
        delay = self.backoff[0]
        lost = False
        while not self._stop.is_set():
            source = self.source
            if source is None:
                try:
                    source = self.source = self._open()
                except Exception as exc:  # UserError from open_source, or a driver error
                    self._fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    lost = True
                    if not self.reconnect or self._stop.wait(delay):
                        return
                    delay = min(delay * 2, self.backoff[1])
                    continue
                if lost:
                    self.reconnects += 1
                    lost = False
            if not source.live and not source.realtime:
                # a file played as fast as possible: wait for the consumer rather than lose frames
                while not self.ring.wait_for_room(0.2, keep=self.keep):
                    if self._stop.is_set():
                        return
            frame, why = self._read(source)
            if frame is not None:
                self.ring.push(frame, time.monotonic())
                self.frames += 1
                delay = self.backoff[0]
                continue
            if not source.live:
                if why:
                    self._fail(why)
                return
            self._fail(why or f"{source.describe()}: no frame (disconnected?)")
            source.close()
            self.source = None
            lost = True
            if not self.reconnect or self._stop.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])
