from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_mer.runtime.ring import Frame, FrameRing

SHAPE = (6, 8, 3)


def image(number: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A frame whose every pixel says which frame it is (a torn copy would mix two values)."""
    return np.full(shape, number % 251, np.uint8)


def filled(ring: FrameRing, count: int) -> FrameRing:
    for i in range(count):
        assert ring.push(image(i), 100.0 + i) == i
    return ring


def test_empty_ring_reads_nothing() -> None:
    ring = FrameRing(4, SHAPE)
    assert ring.latest() is None
    assert ring.window(3) == []
    assert ring.get(0) is None
    assert ring.wait_newer(-1, timeout=0.01) is None
    s = ring.stats()
    assert (s.pushed, s.stored, s.overwritten, s.dropped, s.lag) == (0, 0, 0, 0, 0)
    assert ring.nbytes == 4 * 6 * 8 * 3


def test_drop_oldest_keeps_the_last_capacity_frames() -> None:
    ring = filled(FrameRing(4, SHAPE), 10)
    assert len(ring) == 4
    window = ring.window(10)
    assert [f.number for f in window] == [6, 7, 8, 9]  # fewer than asked, oldest first
    assert [f.ts for f in window] == [106.0, 107.0, 108.0, 109.0]
    assert all(int(f.image[0, 0, 0]) == f.number for f in window)
    assert [f.number for f in ring.window(2)] == [8, 9]
    assert ring.window(0) == []
    latest = ring.latest()
    assert latest is not None and latest.number == 9 and latest.ts == 109.0


def test_get_of_a_frame_that_left_the_ring_is_none() -> None:
    ring = filled(FrameRing(4, SHAPE), 10)
    assert ring.get(5) is None
    assert ring.get(10) is None  # not pushed yet
    assert ring.get(-1) is None
    frame = ring.get(6)
    assert isinstance(frame, Frame) and frame.number == 6 and int(frame.image[0, 0, 0]) == 6


def test_overwritten_counts_every_eviction_and_dropped_only_unread_ones() -> None:
    ring = FrameRing(4, SHAPE)
    last = -1
    for i in range(10):  # a consumer that keeps up: nothing is lost unread
        ring.push(image(i), float(i))
        frame = ring.wait_newer(last, timeout=1.0)
        assert frame is not None and frame.number == i
        last = frame.number
    s = ring.stats()
    assert (s.pushed, s.stored, s.overwritten, s.dropped, s.lag) == (10, 4, 6, 0, 0)

    filled_late = filled(FrameRing(4, SHAPE), 10)  # nobody read: every eviction is a drop
    s = filled_late.stats()
    assert (s.overwritten, s.dropped, s.lag) == (6, 6, 10)


def test_wait_newer_after_falling_behind_returns_the_oldest_held_frame() -> None:
    ring = filled(FrameRing(4, SHAPE), 10)
    frame = ring.wait_newer(2, timeout=0.01)
    assert frame is not None and frame.number == 6  # frames 3..5 are gone; the gap shows it
    nxt = ring.wait_newer(frame.number, timeout=0.01)
    assert nxt is not None and nxt.number == 7
    assert ring.stats().lag == 2


def test_reads_are_copies_that_later_pushes_do_not_change() -> None:
    ring = FrameRing(2, SHAPE)
    ring.push(image(1), 0.0)
    held = ring.latest()
    assert held is not None
    for i in range(2, 6):
        ring.push(image(i), float(i))
    assert int(held.image.max()) == 1 and int(held.image.min()) == 1
    held.image[:] = 77  # the reader owns its copy
    assert int(ring.window(2)[0].image[0, 0, 0]) == 4


def test_wait_newer_times_out_without_a_newer_frame() -> None:
    ring = filled(FrameRing(4, SHAPE), 1)
    assert ring.wait_newer(0, timeout=0.05) is None


def test_wait_newer_wakes_when_a_frame_is_pushed() -> None:
    ring = filled(FrameRing(4, SHAPE), 1)
    got: list[Frame | None] = []
    waiter = threading.Thread(target=lambda: got.append(ring.wait_newer(0, timeout=30.0)))
    waiter.start()
    time.sleep(0.05)
    ring.push(image(1), 1.0)
    waiter.join(10.0)  # far below the 30 s timeout: the push woke the waiter
    assert not waiter.is_alive()
    assert got[0] is not None and got[0].number == 1


def test_close_wakes_waiters_and_ends_the_stream_after_draining() -> None:
    ring = filled(FrameRing(4, SHAPE), 2)
    got: list[Frame | None] = []
    waiter = threading.Thread(target=lambda: got.append(ring.wait_newer(1, timeout=30.0)))
    waiter.start()
    time.sleep(0.05)
    ring.close()
    waiter.join(10.0)
    assert not waiter.is_alive() and got == [None]
    drained = ring.wait_newer(0, timeout=30.0)  # frames still held come out before the end
    assert drained is not None and drained.number == 1
    assert ring.stats().closed
    with pytest.raises(RuntimeError, match="closed"):
        ring.push(image(2), 2.0)


def test_a_frame_of_another_shape_is_refused_with_both_shapes_named() -> None:
    ring = FrameRing(4, (48, 64, 3))
    with pytest.raises(ValueError, match=r"\(24, 32, 3\).*\(48, 64, 3\).*resolution"):
        ring.push(np.zeros((24, 32, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="float32"):
        ring.push(np.zeros((48, 64, 3), np.float32), 0.0)
    assert ring.stats().pushed == 0
    with pytest.raises(ValueError, match="capacity"):
        FrameRing(0, (4, 4))


def test_gray_and_float_rings() -> None:
    ring = FrameRing(3, (5, 7), np.float32)
    ring.push(np.full((5, 7), 0.5, np.float32), 1.5)
    frame = ring.latest()
    assert frame is not None and frame.image.dtype == np.float32 and frame.image.shape == (5, 7)
    assert float(frame.image[0, 0]) == 0.5


def test_concurrent_producer_and_consumer_lose_nothing_unaccounted() -> None:
    """Every pushed frame is either received intact, in order, or counted as dropped."""
    shape = (64, 64, 3)
    ring = FrameRing(8, shape)
    total = 3000
    received: list[int] = []
    torn: list[int] = []

    def consume() -> None:
        last = -1
        while True:
            frame = ring.wait_newer(last, timeout=10.0)
            if frame is None:
                return
            if int(frame.image.min()) != int(frame.image.max()) or int(frame.image[0, 0, 0]) != frame.number % 251:
                torn.append(frame.number)
            received.append(frame.number)
            last = frame.number
            if frame.number % 7 == 0:
                time.sleep(0.0005)  # a consumer slower than the producer now and then

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(total):
        ring.push(image(i, shape), float(i))
    ring.close()
    consumer.join(30.0)
    assert not consumer.is_alive()
    assert torn == []
    assert received == sorted(set(received))
    assert received[-1] == total - 1
    s = ring.stats()
    assert s.pushed == total
    assert len(received) + s.dropped == total
    assert s.lag == 0
