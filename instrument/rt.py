"""Lock-free single-producer/single-consumer rings between the control side and the audio thread.

Under CPython a list-slot store and an int attribute store are each atomic, so a ring where only
the producer advances `_w` and only the consumer advances `_r` needs no lock. Neither side ever
blocks: `push` returns False when full, `pop` returns None when empty.

>>> r = SpscRing(2)
>>> r.push("a"), r.push("b"), r.push("c")
(True, True, False)
>>> r.pop(), r.pop(), r.pop()
('a', 'b', None)
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class SpscRing(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self._buf: list[T | None] = [None] * (capacity + 1)
        self._n = capacity + 1
        self._w = 0
        self._r = 0
        self.rejected = 0  # pushes refused because the ring was full

    def push(self, item: T) -> bool:
        w = self._w
        nxt = w + 1 if w + 1 < self._n else 0
        if nxt == self._r:
            self.rejected += 1
            return False
        self._buf[w] = item
        self._w = nxt  # publish after the store
        return True

    def peek(self) -> T | None:
        r = self._r
        return None if r == self._w else self._buf[r]

    def pop(self) -> T | None:
        r = self._r
        if r == self._w:
            return None
        item = self._buf[r]
        self._buf[r] = None
        self._r = r + 1 if r + 1 < self._n else 0
        return item


class FrameRing:
    """A preallocated SPSC ring of audio frames (the recorder's tap). The writer never blocks:
    frames that do not fit are counted in `overflows` and dropped."""

    def __init__(self, frames: int, channels: int = 2) -> None:
        self._buf = np.zeros((frames + 1, channels), np.float32)
        self._n = frames + 1
        self._w = 0
        self._r = 0
        self.overflows = 0

    def write(self, x: np.ndarray) -> None:
        n = x.shape[0]
        w, r, size = self._w, self._r, self._n
        free = (r - w - 1) % size
        if n > free:
            self.overflows += 1
            return
        first = min(n, size - w)
        self._buf[w:w + first] = x[:first]
        if n > first:
            self._buf[:n - first] = x[first:]
        self._w = (w + n) % size

    def read(self) -> np.ndarray:
        """All frames available now, as a new array (control side only)."""
        w, r, size = self._w, self._r, self._n
        n = (w - r) % size
        if n == 0:
            return np.zeros((0, self._buf.shape[1]), np.float32)
        idx = (np.arange(n) + r) % size
        out = self._buf[idx]
        self._r = w
        return out
