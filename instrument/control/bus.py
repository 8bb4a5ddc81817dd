"""The control bus: the one way a change from any input reaches the engine.

Every input (OSC, MIDI notes and controls, MIDI clock, presets, learn, actions) hands the bus a
`Job`: a function of the engine that applies one message's worth of changes and reports its own
refusals. The bus keeps them in one arrival order and owns the engine lock for them, so no input
module takes `engine.lock` itself:

- `submit(job)` (any thread) queues the job. If the job may run where it arrived (`immediate`:
  parameter changes, clock; nothing that reads or writes files) and the engine is free (the
  control loop is asleep, nearly always), the submitting thread runs the queue itself, oldest
  first, up to the first job that must wait for the control thread. That saves a thread hand-off
  between a fader and the sound (`python benchmarks/bench_control.py`). Otherwise it sets `wake`.
- `drain()` (the control thread, holding `engine.lock` for its tick) runs everything waiting.

The audio thread never sees any of this: a job's changes reach it as commands in the mixer's
ring (`instrument/rt/`), written only by whoever holds the engine lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instrument.errors import EndlessError

if TYPE_CHECKING:
    from instrument.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4096


@dataclass(frozen=True, slots=True)
class Job:
    """One message's worth of work. `run(engine)` is called holding the engine lock; an
    EndlessError it raises is passed to `refused` (the input says so to its sender), anything else
    is a bug: logged, counted, and the bus goes on."""

    run: Callable[[Engine], object]
    source: str  # "osc", "midi", ...: named when the job raises
    immediate: bool = True  # may run on the submitting thread: changes values only, touches no file
    refused: Callable[[EndlessError], None] | None = None
    t_ns: int = 0  # when the message arrived (time.perf_counter_ns), for the hand-off delay


@dataclass
class BusStats:
    submitted: int = 0
    run_on_arrival: int = 0  # jobs the submitting thread ran itself
    dropped: int = 0  # refused because `capacity` jobs were waiting
    refused: int = 0  # jobs that raised an EndlessError
    errors: int = 0  # jobs that raised anything else (bugs)


class ControlBus:
    """One queue of jobs for one engine; see the module's docstring."""

    def __init__(self, engine: Engine, immediate: bool = True, capacity: int = DEFAULT_CAPACITY) -> None:
        self.engine = engine
        self.immediate = immediate
        self.capacity = capacity
        self.wake = threading.Event()  # set when a job waits for the control thread
        self.stats = BusStats()
        self.delays: deque[int] = deque(maxlen=4096)  # arrival -> run, ns (diagnostics, benchmarks)
        self._queue: deque[Job] = deque()
        self._mutex = threading.Lock()  # the queue and `_waiting`; never held while a job runs
        self._waiting = 0  # queued jobs that must run on the control thread

    def submit(self, job: Job) -> bool:
        """Queue `job`, then run the queue here if allowed and the engine is free, else wake the
        control thread. False (and counted) when `capacity` jobs are waiting already."""
        with self._mutex:
            if len(self._queue) >= self.capacity:
                self.stats.dropped += 1
                return False
            self._queue.append(job)
            self.stats.submitted += 1
            if not job.immediate:
                self._waiting += 1
            try_here = self.immediate and self._waiting == 0
        lock = self.engine.lock
        if try_here and lock.acquire(blocking=False):
            try:
                ran = self._run_queue(only_immediate=True)
                with self._mutex:
                    self.stats.run_on_arrival += ran
                    empty = not self._queue
            finally:
                lock.release()
            if empty:
                return True
        self.wake.set()
        return True

    def drain(self, limit: int | None = None) -> int:
        """Run what is waiting, in order (at most `limit` jobs, so a flood cannot stall the control
        loop: the rest wait for the next tick, which `wake` brings at once). The caller holds the
        engine lock. Returns the jobs run."""
        n = self._run_queue(only_immediate=False, limit=limit)
        with self._mutex:
            if self._queue:
                self.wake.set()
        return n

    def wait(self, timeout: float) -> bool:
        """Sleep until a job waits for the control thread (True) or `timeout` seconds pass."""
        hit = self.wake.wait(timeout)
        self.wake.clear()  # before draining: a job arriving from here on sets it again
        return hit

    def pending(self) -> int:
        with self._mutex:
            return len(self._queue)

    def _run_queue(self, only_immediate: bool, limit: int | None = None) -> int:
        n = 0
        while limit is None or n < limit:
            with self._mutex:
                if not self._queue or (only_immediate and not self._queue[0].immediate):
                    break
                job = self._queue.popleft()
                if not job.immediate:
                    self._waiting -= 1
            self._run(job)
            n += 1
        return n

    def _run(self, job: Job) -> None:
        try:
            job.run(self.engine)
        except EndlessError as e:
            self.stats.refused += 1
            if job.refused is not None:
                job.refused(e)
            else:
                log.warning("%s: %s", job.source, e)
        except Exception as e:  # a bug: say so, keep the instrument playing
            self.stats.errors += 1
            log.exception("%s: internal error (please report it): %r", job.source, e)
        if job.t_ns:
            self.delays.append(time.perf_counter_ns() - job.t_ns)
