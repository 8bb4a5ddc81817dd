"""The instrument's end of the worker's two pipes, made so that neither side can block the other.

A pipe holds 64 KB. Before this, the control thread wrote requests straight into the child's pipe
while the child wrote clips (megabytes) into ours: with both full, each waited on the other for
good (issue 12, finding 1: one 60 KB prompt did it). Now:

- a reader thread always drains the child's pipe into a queue, so the child's writes never wait
  on the control thread, and `take` never blocks longer than asked;
- a sender thread writes to the child's pipe, so `send` never blocks; the child reads its pipe
  between steps, and when it is stopped or hung only the sender waits (the watchdog kills it).

What waits to be written stays bounded: the client sends a request only for a slot with nothing
in flight, and a cancel takes back the requests still waiting here instead of queueing behind
them, so the queue holds at most the requests outstanding and one cancel for each.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from multiprocessing.connection import Connection

from instrument.generator.protocol import Cancel, FromWorker, Request, ToWorker


class Link:
    def __init__(self, to_child: Connection, from_child: Connection, name: str = "endless-generator") -> None:
        self._to = to_child
        self._from = from_child
        self._inbox: queue.SimpleQueue[FromWorker] = queue.SimpleQueue()
        self._pending: deque[ToWorker] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._sender = threading.Thread(target=self._write, name=f"{name}-sender", daemon=True)
        self._reader.start()
        self._sender.start()

    @property
    def waiting(self) -> int:
        """Messages not yet written to the child."""
        with self._cond:
            return len(self._pending)

    def send(self, msg: ToWorker) -> None:
        """Queue a message for the child; never blocks."""
        with self._cond:
            if self._closing:
                return
            if isinstance(msg, Cancel):
                unsent = {m.id for m in self._pending if isinstance(m, Request) and m.id in msg.ids}
                if unsent:  # never written: take them back, the child need not hear of them
                    self._pending = deque(m for m in self._pending if not (isinstance(m, Request) and m.id in unsent))
                    rest = tuple(i for i in msg.ids if i not in unsent)
                    if not rest:
                        return
                    msg = Cancel(rest)
            self._pending.append(msg)
            self._cond.notify()

    def take(self, timeout: float = 0.0) -> list[FromWorker]:
        """Everything the child has sent, waiting up to `timeout` s for the first message."""
        out: list[FromWorker] = []
        try:
            out.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            while True:
                out.append(self._inbox.get_nowait())
        except queue.Empty:
            return out

    def close(self, timeout: float = 2.0) -> list[FromWorker]:
        """Stop both threads (call it once the child is gone: its end of the pipe closes) and return
        what it had sent that nobody took yet: whole messages only, a half-written one is dropped."""
        with self._cond:
            self._closing = True
            self._pending.clear()
            self._cond.notify()
        self._sender.join(timeout)
        self._reader.join(timeout)
        for c, t in ((self._to, self._sender), (self._from, self._reader)):
            if not t.is_alive():  # a thread still inside the pipe keeps it open (a grandchild holds it)
                c.close()
        return self.take()

    # -- the threads ----------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                if self._from.poll(0.2):  # true at the end of the pipe, too: recv raises then
                    self._inbox.put(self._from.recv())
                elif self._closing:
                    return
            except (EOFError, OSError):
                return  # the child is gone (a message cut short by kill -9 ends here, unread)
            except Exception:  # noqa: BLE001  (a message that does not unpickle: the child is broken)
                return

    def _write(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                msg = self._pending.popleft()
            with contextlib.suppress(OSError, ValueError):  # the child is gone: the client restarts it
                self._to.send(msg)
