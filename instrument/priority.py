"""Background threads that must never take a CPU from the audio: jackd's and our audio thread, and
the control loop.

`background_thread()` puts the calling thread in Linux's idle scheduling class (SCHED_IDLE: it runs
only on a CPU nothing else wants, and is preempted the moment the audio wakes), as the generator's
worker process already is (generator/child.py). Elsewhere it does nothing. The threads that call it
spend their time in C that releases the GIL (libsndfile, numpy, SQLite), so holding the GIL while
preempted is brief. Used by the archive's writer (FLAC encoding, loudness, embeddings) and the
fallback loader (FLAC decoding, resampling): on 2 cores they cost underflows at normal priority
(benchmarks/soak.py).
"""

from __future__ import annotations

import contextlib
import os


def idle_class(tid: int = 0) -> None:
    """Put thread `tid` (0: the calling one) in the idle scheduling class, where Linux has it."""
    if hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def background_thread() -> None:
    idle_class(0)
