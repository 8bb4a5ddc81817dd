"""The generator worker process (spawned; it owns the model) and its supervisor in the instrument.

Child: load the pipeline, then loop: take requests (priority first), batch those with equal steps,
generate with progress after every step, check for cancels between steps, post-process each clip
(finite check, trim, fades, loudness, resample) and send it back through the pipe.

Parent (`GeneratorClient`): a small state machine driven from the control thread by `poll()`:
starting -> loading -> ready <-> busy; if the child dies or goes silent for `hang_timeout` it is
killed and restarted with backoff, and the requests it held are sent again (same seeds, so the
same clips). A fatal load error (no weights) stops restarts and is reported once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from instrument.generator.protocol import (
    Cancel,
    ClipReady,
    Dropped,
    Failed,
    FromWorker,
    Heartbeat,
    Progress,
    Ready,
    Request,
    Shutdown,
    ToWorker,
    WorkerState,
)

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the child needs to build its pipeline (picklable)."""

    model: str = "tiny"  # "tiny", a checkpoint folder, or a hub id in the cache
    device: str = "cpu"
    dtype: str = "float32"  # the transformer's
    vae_dtype: str = "float32"
    sample_rate: int = 44100  # clips are resampled to this (the device rate)
    lufs: float = -20.0
    true_peak_db: float = -1.0
    max_batch: int = 4
    allow_download: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    nice: int = 0  # raise the worker's nice value by this much (>0: lower CPU priority than the audio and controls)
    coreml: bool = False  # macOS: the transformer through Core ML; falls back to `device` with the reason logged
    coreml_package: str | None = None  # None: the package `endless convert-coreml` wrote for `model`
    compute_units: str = "ALL"  # Core ML compute units: ALL, CPU_AND_GPU, CPU_AND_NE, CPU_ONLY
    compile: bool = True  # on cuda: torch.compile with CUDA graphs (README: bench_generate.py on an H200)
    test_delay: float = 0.0  # extra seconds per step, for tests of starvation and hangs


# ==================================================================================================
# child
# ==================================================================================================
class _Child:
    def __init__(self, spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
        self.spec = spec
        self.inbox = inbox
        self.outbox = outbox
        self.send_lock = threading.Lock()
        self.queue: list[Request] = []
        self.cancelled: set[int] = set()
        self.stop = False
        self.state: WorkerState = "loading"

    def send(self, msg: FromWorker) -> None:
        with self.send_lock:
            self.outbox.send(msg)

    def drain(self, timeout: float = 0.0) -> None:
        """Read everything waiting in the inbox (waiting up to `timeout` for the first message)."""
        while self.inbox.poll(timeout):
            timeout = 0.0
            msg: ToWorker = self.inbox.recv()
            if isinstance(msg, Request):
                self.queue.append(msg)
            elif isinstance(msg, Cancel):
                self.cancelled.update(msg.ids)
                kept = [r for r in self.queue if r.id not in self.cancelled]
                for r in self.queue:
                    if r.id in self.cancelled:
                        self.send(Dropped(r.id, r.slot, "cancelled"))
                self.queue = kept
            elif isinstance(msg, Shutdown):
                self.stop = True

    def batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes the worker runs: 1 and max_batch (others are padded up: one compiled graph each)."""
        return (1,) if self.spec.max_batch <= 1 else (1, self.spec.max_batch)

    def next_batch(self) -> list[Request]:
        self.queue.sort(key=lambda r: not r.priority)  # stable: priority first, then FIFO
        first = self.queue[0]
        batch = [r for r in self.queue if r.steps == first.steps][: self.spec.max_batch]
        ids = {r.id for r in batch}
        self.queue = [r for r in self.queue if r.id not in ids]
        return batch

    def run(self) -> None:
        import torch

        from instrument.generator.loading import load_pipeline
        from instrument.generator.post import NonFiniteAudio, postprocess

        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        beat = threading.Event()

        def heartbeat() -> None:  # only while loading: the main loop is busy in from_pretrained
            while not beat.wait(HEARTBEAT_SECONDS):
                self.send(Heartbeat("loading", time.time()))

        t0 = time.perf_counter()
        hb = threading.Thread(target=heartbeat, daemon=True)
        hb.start()
        try:
            pipe = load_pipeline(self.spec.model, device=self.spec.device, dtype=getattr(torch, self.spec.dtype),
                                 vae_dtype=getattr(torch, self.spec.vae_dtype),
                                 allow_download=self.spec.allow_download)
        except Exception as e:
            beat.set()
            from instrument.errors import EndlessError

            fatal = isinstance(e, EndlessError)
            self.send(Failed(str(e) if fatal else f"loading the model failed: {e!r}", fatal=True))
            return
        device = str(pipe.device)
        if self.spec.coreml:
            from pathlib import Path

            from instrument.coreml.runtime import make_coreml_transformer

            package = Path(self.spec.coreml_package) if self.spec.coreml_package else None
            coreml = make_coreml_transformer(package, self.spec.compute_units, pipe)  # runs the parity gate once
            if coreml is not None:
                pipe.model.transformer = coreml
                device = f"coreml {self.spec.compute_units} + {pipe.device}"
        sizes = self.batch_sizes()
        if self.spec.compile and pipe.device.type == "cuda":
            pipe.compile("reduce-overhead")
            from instrument.generator.pipeline import ClipRequest as _Warm

            for n in sizes:  # compile and capture each batch size now, not in the middle of a set
                pipe([_Warm("warm up", seed=0, duration=1.0)] * n, steps=2)
        beat.set()
        hb.join()
        self.send(Ready(pipe.name, device, str(pipe.dtype).replace("torch.", ""), self.spec.sample_rate,
                        time.perf_counter() - t0))
        from instrument.generator.errors import Cancelled
        from instrument.generator.pipeline import ClipRequest

        while not self.stop:
            self.drain(HEARTBEAT_SECONDS if not self.queue else 0.0)
            if self.stop:
                break
            if not self.queue:
                self.send(Heartbeat("ready", time.time()))
                continue
            batch = self.next_batch()
            ids = tuple(r.id for r in batch)

            def progress(step: int, total: int, ids: tuple[int, ...] = ids) -> None:
                self.send(Progress(ids, step, total))
                if self.spec.test_delay:
                    time.sleep(self.spec.test_delay)

            def should_cancel(batch: list[Request] = batch) -> bool:
                self.drain()
                return self.stop or all(r.id in self.cancelled for r in batch)

            t = time.perf_counter()
            reqs = [ClipRequest(r.prompt, seed=r.seed, duration=r.seconds, guidance=r.guidance) for r in batch]
            if pipe.device.type == "cuda" and len(reqs) not in self.batch_sizes():
                reqs += [reqs[0]] * (self.spec.max_batch - len(reqs))  # pad to a compiled size; extras dropped
            try:
                clips = pipe(reqs, steps=batch[0].steps, callback=progress, should_cancel=should_cancel)[:len(batch)]
            except Cancelled:
                for r in batch:
                    self.send(Dropped(r.id, r.slot, "cancelled"))
                continue
            except Exception as e:  # a bad prompt or a numerical failure: report, keep serving
                self.send(Failed(f"generation failed: {e!r}", ids))
                continue
            wall = time.perf_counter() - t
            for r, c in zip(batch, clips, strict=True):
                if r.id in self.cancelled:
                    self.send(Dropped(r.id, r.slot, "cancelled"))
                    continue
                try:
                    audio, lufs = postprocess(c.audio, c.sample_rate, self.spec.sample_rate, r.seconds,
                                              self.spec.lufs, self.spec.true_peak_db)
                except NonFiniteAudio as e:
                    self.send(Dropped(r.id, r.slot, f"non-finite audio: {e}"))
                    continue
                self.send(ClipReady(r.id, r.slot, r.generation, audio, self.spec.sample_rate, r.prompt, r.seed,
                                    pipe.name, wall, len(batch), lufs))


def _lower_priority(nice: int) -> None:
    """Nice the worker by `nice`, and on Linux put it in the idle scheduling class: a niced task
    still gets a share of a busy CPU and may run on while jackd and our audio thread wait; an
    idle-class one is preempted the moment they wake (benchmarks/bench_live.py). Linux keeps both
    per thread: every thread that exists now (the spawn start-up leaves one) is set, and torch's,
    started later, inherit them."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else []
    me = threading.get_native_id()
    for tid in tids:
        with contextlib.suppress(OSError):
            if tid != me:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, me))
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def worker_main(spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
    """Entry point of the spawned process."""
    child = _Child(spec, inbox, outbox)
    if spec.nice > 0 and hasattr(os, "nice"):  # the model may wait; the audio callback and a fader must not
        _lower_priority(spec.nice)
    try:
        child.run()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the instrument went away
    except Exception:
        with contextlib.suppress(OSError):  # the pipe may be gone too
            child.send(Failed("worker crashed: " + traceback.format_exc().strip().splitlines()[-1]))


# ==================================================================================================
# parent
# ==================================================================================================
class GeneratorClient:
    """Owns the worker process. Not thread-safe: call everything from the control thread."""

    def __init__(self, spec: WorkerSpec, hang_timeout: float = 120.0, load_timeout: float = 600.0,
                 backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)) -> None:
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
        self._to: Connection | None = None
        self._from: Connection | None = None
        self._last_msg = 0.0
        self._restart_at = 0.0
        self._failures = 0
        self.on_event: Callable[[str], None] = lambda text: log.warning("%s", text)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        child_in, self._to = self._ctx.Pipe(duplex=False)
        self._from, child_out = self._ctx.Pipe(duplex=False)
        self._proc = self._ctx.Process(target=worker_main, args=(self.spec, child_in, child_out),
                                       name="endless-generator", daemon=True)
        self._proc.start()
        child_in.close()
        child_out.close()
        self.state = "loading"
        self._last_msg = time.monotonic()

    def stop(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        if self._to is not None:
            with contextlib.suppress(OSError):
                self._to.send(Shutdown())
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(2)
        self._close_pipes()
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

    def _close_pipes(self) -> None:
        for c in (self._to, self._from):
            if c is not None:
                c.close()
        self._to = self._from = None

    def _restart(self, why: str) -> None:
        self.kill()
        self._close_pipes()
        self._proc = None
        delay = self.backoff[min(self._failures, len(self.backoff) - 1)]
        self._failures += 1
        self.restarts += 1
        self.state = "restarting"
        self._restart_at = time.monotonic() + delay
        self.on_event(f"generator {why}; restarting in {delay:g} s (the instrument keeps playing)")

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
        if self._to is None or self.state in ("restarting", "failed", "stopped"):
            return  # resent after the restart
        with contextlib.suppress(OSError):  # a dead child: poll() notices and restarts it
            self._to.send(msg)

    # -- the pump --------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> list[FromWorker]:
        """Messages that arrived (waiting up to `timeout` for the first); health checks; restarts."""
        now = time.monotonic()
        if self.state == "restarting" and now >= self._restart_at:
            self.start()
            for req in sorted(self.outstanding.values(), key=lambda r: (not r.priority, r.id)):
                self._send(req)
        if self._from is None or self.state in ("failed", "stopped", "restarting"):
            if timeout:
                time.sleep(min(timeout, 0.05))
            return []
        out: list[FromWorker] = []
        try:
            while self._from.poll(timeout):
                timeout = 0.0
                out.append(self._from.recv())
        except (EOFError, OSError):
            pass
        now = time.monotonic()
        if out:
            self._last_msg = now
        for msg in out:
            self._track(msg)
        if self.state in ("failed", "stopped"):
            return out
        if not self._proc.is_alive():
            self._restart(f"process died (exit code {self._proc.exitcode})")
        else:
            limit = self.load_timeout if self.state == "loading" else self.hang_timeout
            if now - self._last_msg > limit:
                self._restart(f"silent for {now - self._last_msg:.0f} s (hung)")
        return out

    def _track(self, msg: FromWorker) -> None:
        if isinstance(msg, Ready):
            self.ready = msg
            self.state = "busy" if self.outstanding else "ready"
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
        elif isinstance(msg, Heartbeat) and self.state != "busy":
            self.state = msg.state
