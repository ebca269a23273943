"""The ring buffer between the capture thread and the loop: fixed memory, drop-oldest, named reads.

One producer (the capture thread) pushes frames; readers ask for what they need
by name: the ``latest`` frame, a ``window`` of the last n frames, one frame by
number (``get``), or the next frame after one they already have
(``wait_newer``, which blocks on a condition variable instead of polling).

Memory is allocated once: ``capacity`` images of one shape, plus a timestamp
and a frame number per slot. A full ring overwrites its oldest frame; the
producer never waits for a reader.

Readers get copies. A view into the ring would be overwritten in place
``capacity`` pushes later with nothing to tell the reader, so a spot classified
from a window could silently mix frames of different times. A copy of a
640x480 BGR frame costs about 0.1 ms, little next to a 33 ms frame period.

Counters (see :class:`RingStats`):

* ``overwritten``: frames that left the ring to make room; normal once the ring
  is full, since the ring is a window of history, not a queue.
* ``dropped``: frames that left the ring before any reader received them. A
  consumer that takes every frame with ``wait_newer(last_number)`` keeps
  ``dropped`` at 0 exactly as long as it never falls ``capacity`` frames behind,
  so ``dropped == 0`` means no frame was lost unread. A consumer that only reads
  ``latest()`` skips frames on purpose and sees them counted here.
* ``lag``: how many frames are newer than the newest frame any reader has
  received: the backlog now.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numpy.typing came in numpy 1.20; JetPack 5 has 1.17
    from numpy.typing import DTypeLike


@dataclass(frozen=True)
class Frame:
    """One frame out of the ring: its 0-based number, arrival time (``time.monotonic()``) and image (a copy)."""

    number: int
    ts: float
    image: np.ndarray


@dataclass(frozen=True)
class RingStats:
    capacity: int
    pushed: int  # frames pushed so far; the next frame number
    stored: int  # frames in the ring now
    overwritten: int  # frames that left the ring
    dropped: int  # frames that left the ring unread
    lag: int  # frames newer than the newest frame a reader received
    closed: bool


class FrameRing:
    """``capacity`` frames of one ``shape`` and ``dtype`` in preallocated memory; thread-safe."""

    def __init__(self, capacity: int, shape: tuple[int, ...], dtype: DTypeLike = np.uint8) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._images = np.empty((self.capacity, *self.shape), self.dtype)
        self._images.fill(0)  # touch every page now: a device short of memory fails here, not mid-run
        self._ts = np.zeros(self.capacity, np.float64)
        self._read = np.zeros(self.capacity, bool)
        self._next = 0  # number of the next frame pushed
        self._newest_read = -1
        self._overwritten = 0
        self._dropped = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    @property
    def nbytes(self) -> int:
        return int(self._images.nbytes)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return min(self._next, self.capacity)

    def push(self, frame: np.ndarray, ts: float) -> int:
        """Store a copy of ``frame`` taken at ``ts``, overwriting the oldest frame when full; its number."""
        if frame.shape != self.shape or frame.dtype != self.dtype:
            raise ValueError(f"frame of shape {frame.shape} {frame.dtype} does not fit a ring of {self.shape} "
                             f"{self.dtype}: the source changed its resolution or format mid-stream")
        with self._cond:
            if self._closed:
                raise RuntimeError("push to a closed ring")
            number = self._next
            slot = number % self.capacity
            if number >= self.capacity:
                self._overwritten += 1
                if not self._read[slot]:
                    self._dropped += 1
            np.copyto(self._images[slot], frame)
            self._ts[slot] = ts
            self._read[slot] = False
            self._next = number + 1
            self._cond.notify_all()
        return number

    def close(self) -> None:
        """End of stream: waiting readers wake up, and ``wait_newer`` stops waiting once the ring is drained."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _oldest(self) -> int:
        return max(0, self._next - self.capacity)

    def _take(self, number: int) -> Frame:
        """A copy of a frame known to be in the ring, marked as read; call with the lock held."""
        slot = number % self.capacity
        self._read[slot] = True
        if number > self._newest_read:
            self._newest_read = number
            self._cond.notify_all()  # a producer waiting for room (wait_for_room) may go on
        return Frame(number, float(self._ts[slot]), self._images[slot].copy())

    def latest(self) -> Frame | None:
        """The most recent frame, or None before the first push."""
        with self._cond:
            return self._take(self._next - 1) if self._next else None

    def window(self, n: int) -> list[Frame]:
        """The last ``n`` frames, oldest first; fewer when the ring holds fewer."""
        with self._cond:
            first = max(self._oldest(), self._next - max(n, 0))
            return [self._take(i) for i in range(first, self._next)]

    def get(self, number: int) -> Frame | None:
        """Frame ``number``, or None when it already left the ring or was never pushed."""
        with self._cond:
            if self._oldest() <= number < self._next:
                return self._take(number)
            return None

    def wait_newer(self, number: int, timeout: float | None = None) -> Frame | None:
        """The frame after ``number``, waiting up to ``timeout`` seconds (None: forever) for it to arrive.

        When frame ``number + 1`` already left the ring, the oldest frame still
        in it comes back: the gap in numbers is what the consumer lost (and
        ``dropped`` counts it). ``number = -1`` asks for the oldest frame held.
        None on timeout, or at once when the ring is closed and has nothing newer.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._next - 1 > number or self._closed, timeout)
            if self._next - 1 <= number:
                return None
            return self._take(max(number + 1, self._oldest()))

    def wait_for_room(self, timeout: float | None = None, keep: int = 0) -> bool:
        """Block until the next push would overwrite neither an unread frame nor one of the ``keep`` frames read
        last (False on timeout).

        For sources that must not lose frames (a file played as fast as possible): the
        producer waits for the consumer instead of dropping, and leaves it the history it
        looks back into (a spot's onset and apex). Live sources never call it.
        """
        room = max(1, self.capacity - 1 - keep)
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or self._next - self._newest_read - 1 < room, timeout)

    def stats(self) -> RingStats:
        with self._cond:
            return RingStats(self.capacity, self._next, min(self._next, self.capacity), self._overwritten,
                             self._dropped, self._next - 1 - self._newest_read, self._closed)
