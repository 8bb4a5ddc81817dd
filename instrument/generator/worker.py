"""The generator worker's supervisor in the instrument: it spawns the process (`child.py`) that
owns the model, and talks to it through the messages in `protocol.py`, over a `Link` (`link.py`:
a reader and a sender thread, so neither side ever blocks on the other's pipe).

`GeneratorClient` is a small state machine driven from the control thread by `poll()`:
starting -> loading -> ready <-> busy. The child is killed and restarted with backoff when it
dies, when its heartbeats stop for `spec.heartbeat_timeout` s (stopped, frozen: its heartbeat
thread beats through long work, a model load or a compile included), or when it makes no
progress for `hang_timeout` s; the requests it held are sent again (same seeds, so the same
clips). A fatal load error (no weights) stops restarts and is reported once.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

from instrument.generator.child import worker_main
from instrument.generator.link import Link
from instrument.generator.protocol import (
    Cancel,
    ClipReady,
    Compiled,
    Dropped,
    Failed,
    FromWorker,
    Heartbeat,
    Progress,
    Ready,
    Request,
    Shutdown,
    ToWorker,
    WorkerSpec,
    WorkerState,
)

__all__ = ["GeneratorClient", "WorkerSpec"]  # WorkerSpec: what a client is made from

log = logging.getLogger(__name__)


class GeneratorClient:
    """Owns the worker process. Not thread-safe: call everything from the control thread."""

    def __init__(self, spec: WorkerSpec, hang_timeout: float = 120.0, load_timeout: float = 600.0,
                 backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)) -> None:
        """`hang_timeout`: longest wait for any message while ready or busy (a step that never ends);
        `load_timeout`: the same while loading, and until the first heartbeat after a spawn."""
        self.spec = spec
        self.hang_timeout = hang_timeout
        self.load_timeout = load_timeout
        self.backoff = backoff
        self.state: WorkerState = "stopped"
        self.ready: Ready | None = None
        self.error: str | None = None
        self.restarts = 0
        self.progress: Progress | None = None
        self.outstanding: dict[int, Request] = {}  # sent and not yet answered
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._link: Link | None = None
        self._beat: Any = None  # the child's heartbeat counter (shared memory: no pipe, no lock)
        self._beat_seen = 0
        self._beat_at = 0.0
        self._last_msg = 0.0
        self._restart_at = 0.0
        self._failures = 0
        self.on_event: Callable[[str], None] = lambda text: log.warning("%s", text)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        child_in, to_child = self._ctx.Pipe(duplex=False)
        from_child, child_out = self._ctx.Pipe(duplex=False)
        self._beat = self._ctx.RawValue("Q", 0)
        self._beat_seen = 0
        self._proc = self._ctx.Process(target=worker_main, args=(self.spec, child_in, child_out, self._beat),
                                       name="endless-generator", daemon=True)
        self._proc.start()
        child_in.close()
        child_out.close()
        self._link = Link(to_child, from_child)
        self.state = "loading"
        self._last_msg = self._beat_at = time.monotonic()

    def stop(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        if self._link is not None:
            self._link.send(Shutdown())
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(2)
        self._close_link()
        self._proc = None
        self.state = "stopped"

    def kill(self) -> None:
        """Kill the child abruptly (tests; a hang). The next poll() restarts it."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _close_link(self) -> list[FromWorker]:
        """Close the link to a child that is gone; what it had sent and nobody took, tracked."""
        left = self._link.close() if self._link is not None else []
        self._link = None
        for msg in left:
            self._track(msg)
        return left

    def _restart(self, why: str) -> list[FromWorker]:
        """Kill the child and restart it after the backoff; returns the whole messages it had sent
        before it went, so a clip it finished is delivered, not made twice."""
        self.kill()
        left = self._close_link()
        self._proc = None
        if self.state == "failed":  # its last word was a fatal error: no restart
            return left
        delay = self.backoff[min(self._failures, len(self.backoff) - 1)]
        self._failures += 1
        self.restarts += 1
        self.state = "restarting"
        self._restart_at = time.monotonic() + delay
        self.on_event(f"generator {why}; restarting in {delay:g} s (the instrument keeps playing)")
        return left

    # -- requests --------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        self.outstanding[req.id] = req
        self._send(req)

    def cancel(self, ids: tuple[int, ...]) -> None:
        for i in ids:
            self.outstanding.pop(i, None)
        if ids:
            self._send(Cancel(ids))

    def _send(self, msg: ToWorker) -> None:
        if self._link is None or self.state in ("restarting", "failed", "stopped"):
            return  # resent after the restart
        self._link.send(msg)  # never blocks: a dead or stopped child is found by poll()

    # -- the pump --------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> list[FromWorker]:
        """Messages that arrived (waiting up to `timeout` for the first); health checks; restarts."""
        now = time.monotonic()
        if self.state == "restarting" and now >= self._restart_at:
            self.start()
            for req in sorted(self.outstanding.values(), key=lambda r: (not r.priority, r.id)):
                self._send(req)
        if self._link is None or self.state in ("failed", "stopped", "restarting"):
            if timeout:
                time.sleep(min(timeout, 0.05))
            return []
        out = self._link.take(timeout)
        now = time.monotonic()
        if out:
            self._last_msg = now
        for msg in out:
            self._track(msg)
        if self.state in ("failed", "stopped"):
            return out
        why = self._trouble(now)
        if why:
            out += self._restart(why)
        return out

    def _trouble(self, now: float) -> str:
        """Why the child must be restarted now, or "" if it is well."""
        if not self._proc.is_alive():
            return f"process died (exit code {self._proc.exitcode})"
        beat = self._beat.value
        if beat != self._beat_seen:
            self._beat_seen, self._beat_at = beat, now
        elif beat and now - self._beat_at > self.spec.heartbeat_timeout:  # before the first: still starting
            return (f"worker missed its heartbeats for {now - self._beat_at:.1f} s (stopped or frozen), "
                    f"killed it")
        limit = self.load_timeout if self.state == "loading" or not beat else self.hang_timeout
        if now - self._last_msg > limit:
            return f"silent for {now - self._last_msg:.0f} s (hung)"
        return ""

    def _track(self, msg: FromWorker) -> None:
        if isinstance(msg, Ready):
            self.ready = msg
            self.state = "busy" if self.outstanding else "ready"
        elif isinstance(msg, Compiled):
            log.info("generator: compiled in %.1f s (%d artifacts from the compile cache): full speed from here",
                     msg.seconds, msg.reused)
        elif isinstance(msg, Progress):
            self.progress = msg
            self.state = "busy"
        elif isinstance(msg, (ClipReady, Dropped)):
            self.outstanding.pop(msg.id, None)
            if isinstance(msg, ClipReady):
                self._failures = 0
            if not self.outstanding:
                self.state = "ready"
                self.progress = None
        elif isinstance(msg, Failed):
            for i in msg.ids:
                self.outstanding.pop(i, None)
            if msg.fatal:
                self.state = "failed"
                self.error = msg.message
                self.on_event(f"generator failed: {msg.message}")
            else:
                self.on_event(msg.message)
        elif isinstance(msg, Heartbeat) and self.state not in ("busy", "failed"):
            self.state = msg.state
