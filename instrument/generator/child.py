"""The generator worker's own process: it owns the model (`worker.py` supervises it).

A heartbeat thread counts up a shared counter for its whole life (and, while loading or compiling,
also says so through the pipe), so the parent tells a stopped or frozen process from a busy one within
seconds: a model load, a first CUDA compile and a slow step all beat on. It keeps the normal
scheduling class (the rest of the worker is in the idle class) and needs no pipe, so a busy
machine or a clip being written cannot hold a beat back.

Load the pipeline and say Ready; on CUDA, the first batch runs eagerly and the compile follows it
(`Compiled` when done), so the first clip does not wait for the compile. Then loop: take requests
(priority first), batch those with equal steps, generate with progress after every step, check for cancels between steps, post-process each clip
(finite check, fades, loudness, resample) and send it back through the pipe. The model's modules
are imported here, inside `run`, so the instrument that imports this module for the spawn target
never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from instrument.errors import EndlessError, one_line
from instrument.generator.errors import Cancelled
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
from instrument.priority import idle_class

HEARTBEAT_SECONDS = 0.5
CompileFn = Callable[[Any, tuple[int, ...]], tuple[float, int]]  # compile_cache.compile_and_warm
FIRST_REQUEST_WAIT = 2.0  # s after Ready that a CUDA worker waits for a first request before compiling
FIRST_REQUEST_POLL = 0.05


class _Child:
    def __init__(self, spec: WorkerSpec, inbox: Connection, outbox: Connection, beat: Any) -> None:
        self.spec = spec
        self.beat = beat  # a shared unsigned counter the parent watches
        self.inbox = inbox
        self.outbox = outbox
        self.send_lock = threading.Lock()
        self.queue: list[Request] = []
        self.cancelled: set[int] = set()
        self.stop = False
        self.state: WorkerState = "loading"
        self.compiling = False  # CUDA compile under way (after Ready): the heartbeat thread says "ready"

    def send(self, msg: FromWorker) -> None:
        with self.send_lock:
            self.outbox.send(msg)

    def announce(self, msg: Ready | Failed) -> None:
        """The end of loading (ready, or a failure), after which no "loading" heartbeat may follow."""
        with self.send_lock:
            self.state = "ready" if isinstance(msg, Ready) else "failed"
            self.outbox.send(msg)

    def pulse(self) -> None:
        """The heartbeat thread: the counter always; a "loading" message until the model is in."""
        interval = min(HEARTBEAT_SECONDS, self.spec.heartbeat_timeout / 4)
        while not self.stop:
            time.sleep(interval)
            self.beat.value += 1
            with self.send_lock:
                if self.state == "loading" or self.compiling:  # long work that sends nothing else
                    self.outbox.send(Heartbeat(self.state, time.time()))

    def start_pulse(self) -> int:
        """Start the heartbeat thread; returns its native thread id."""
        t = threading.Thread(target=self.pulse, name="endless-heartbeat", daemon=True)
        t.start()
        while t.native_id is None:
            time.sleep(0.001)
        return t.native_id

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

    def compile(self, pipe: Any, sizes: tuple[int, ...], compile_and_warm: CompileFn) -> None:
        """Compile and capture each batch size (compile_cache.py), then say so; a failure leaves the
        transformer eager, and is said once: generation goes on, slower."""
        self.compiling = True
        try:
            took, reused = compile_and_warm(pipe, sizes)
        except Exception as e:
            self.send(Failed(f"generator: compiling failed ({one_line(e)}): generating without it, slower"))
            return
        finally:
            self.compiling = False
        self.send(Compiled(took, reused))

    def run(self) -> None:
        import torch

        from instrument.generator.compile_cache import compile_and_warm
        from instrument.generator.loading import load_pipeline

        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        t0 = time.perf_counter()
        if self.spec.load_delay > 0:  # a model that takes long to load (bench_first_sound.py)
            time.sleep(self.spec.load_delay)
        try:
            pipe = load_pipeline(self.spec.model, device=self.spec.device, dtype=getattr(torch, self.spec.dtype),
                                 vae_dtype=getattr(torch, self.spec.vae_dtype),
                                 allow_download=self.spec.allow_download)
        except Exception as e:
            fatal = isinstance(e, EndlessError)
            self.announce(Failed(str(e) if fatal else f"loading the model failed: {e!r}", fatal=True))
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
        self.announce(Ready(pipe.name, device, str(pipe.dtype).replace("torch.", ""), self.spec.sample_rate,
                        time.perf_counter() - t0))
        # CUDA: ready (and generating) before compiling (compile_cache.py).
        self.serve(pipe, compile_and_warm if self.spec.compile and pipe.device.type == "cuda" else None)

    def serve(self, pipe: Any, compile_and_warm: CompileFn | None = None) -> None:
        """Generate what is asked until Shutdown. With `compile_and_warm` (CUDA), the first batch runs
        eagerly, about as soon as the model is on the GPU, and the compile (seconds from the on-disk
        caches, about a minute without) follows it and brings full speed; with no request within
        FIRST_REQUEST_WAIT s of Ready, it compiles at once. The archive covers the slots meanwhile."""
        from instrument.generator.pipeline import ClipRequest
        from instrument.generator.post import NonFiniteAudio, postprocess

        sizes = self.batch_sizes()
        pending = compile_and_warm  # None once compiled (or never: not CUDA)
        served = False
        ready_at = time.monotonic()
        while not self.stop:
            self.drain(0.0 if self.queue else FIRST_REQUEST_POLL if pending else HEARTBEAT_SECONDS)
            if self.stop:
                break
            if pending is not None and (served or not self.queue and time.monotonic() - ready_at > FIRST_REQUEST_WAIT):
                self.compile(pipe, sizes, pending)
                pending = None
                continue
            if not self.queue:
                if pending is None:
                    self.send(Heartbeat("ready", time.time()))
                continue
            served = True
            batch = self.next_batch()
            ids = tuple(r.id for r in batch)

            def progress(step: int, total: int, ids: tuple[int, ...] = ids) -> None:
                self.send(Progress(ids, step, total))
                if self.spec.test_delay:
                    time.sleep(self.spec.test_delay)

            def should_cancel(batch: list[Request] = batch) -> bool:
                self.drain()
                return self.stop or all(r.id in self.cancelled for r in batch)

            reqs = [ClipRequest(r.prompt, seed=r.seed, duration=r.seconds, guidance=r.guidance) for r in batch]
            if pipe.device.type == "cuda" and len(reqs) not in self.batch_sizes():
                reqs += [reqs[0]] * (self.spec.max_batch - len(reqs))  # pad to a compiled size; extras dropped
            try:
                made = pipe(reqs, steps=batch[0].steps, callback=progress, should_cancel=should_cancel)[:len(batch)]
            except Cancelled:
                for r in batch:
                    self.send(Dropped(r.id, r.slot, "cancelled"))
                continue
            except Exception as e:  # a bad prompt or a numerical failure: report, keep serving
                self.send(Failed(f"generation failed: {e!r}", ids))
                continue
            for r, g in zip(batch, made, strict=True):
                if r.id in self.cancelled:
                    self.send(Dropped(r.id, r.slot, "cancelled"))
                    continue
                try:
                    clip, lufs = postprocess(g.clip, self.spec.sample_rate, self.spec.lufs, self.spec.true_peak_db)
                except NonFiniteAudio as e:
                    self.send(Dropped(r.id, r.slot, f"non-finite audio: {e}"))
                    continue
                self.send(ClipReady(r.id, r.slot, r.generation, clip, len(batch), lufs))


def _lower_priority(nice: int, keep: int) -> None:
    """Nice the worker by `nice`, and on Linux put it in the idle scheduling class: a niced task
    still gets a share of a busy CPU and may run on while jackd and our audio thread wait; an
    idle-class one is preempted the moment they wake (benchmarks/bench_live.py). Linux keeps both
    per thread: every thread that exists now (the spawn start-up leaves one) is set, and torch's,
    started later, inherit them. Thread `keep` (the heartbeat, asleep but for a few microseconds a
    beat) is left as it is: a starved heartbeat would look like a hang."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else []
    me = threading.get_native_id()
    for tid in tids:
        if tid == keep:
            continue
        if tid != me:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, me))
        idle_class(tid)


def worker_main(spec: WorkerSpec, inbox: Connection, outbox: Connection, beat: Any) -> None:
    """Entry point of the spawned process."""
    _quiet_progress_bars()
    child = _Child(spec, inbox, outbox, beat)
    heartbeat = child.start_pulse()
    if spec.nice > 0 and hasattr(os, "nice"):  # the model may wait; the audio callback and a fader must not
        _lower_priority(spec.nice, keep=heartbeat)
    try:
        child.run()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the instrument went away
    except Exception:
        with contextlib.suppress(OSError):  # the pipe may be gone too
            child.send(Failed("worker crashed: " + traceback.format_exc().strip().splitlines()[-1]))


def _quiet_progress_bars() -> None:
    """No progress bars from the libraries that load the model (they write over the instrument's
    own status line), and none of tqdm's multiprocessing locks: a worker killed while it held one
    left a semaphore behind, and Python's resource tracker said so at exit, after our last line."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())
