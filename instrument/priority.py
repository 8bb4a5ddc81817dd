"""Scheduling: background threads that must never take a CPU from the audio (jackd's and our audio
thread, and the control loop), and the audio thread itself in a realtime class where allowed.

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


AUDIO_PRIORITY = 60  # SCHED_FIFO priority for the audio thread (JACK's own default range is 10..89)


def realtime_audio(tid: int, priority: int = AUDIO_PRIORITY) -> str:
    """Put the audio thread `tid` in SCHED_FIFO at `priority` if it is in the normal class (a JACK
    server with realtime priority has already made it realtime: left as it is). Returns one line
    saying what happened; never raises. Without it, a JACK server run without realtime priority (or
    a busy machine) can leave the callback's thread waiting for a CPU past its period: an underflow
    (benchmarks/soak.py)."""
    if not (hasattr(os, "SCHED_FIFO") and hasattr(os, "sched_setscheduler")) or tid <= 0:
        return "audio thread: normal priority (no realtime scheduling here)"
    try:
        if os.sched_getscheduler(tid) != os.SCHED_OTHER:
            return "audio thread: realtime already (the audio server's)"
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return ("audio thread: normal priority (realtime not permitted: give your user an rtprio limit, "
                "e.g. the audio group in /etc/security/limits.d)")
    except OSError as e:
        return f"audio thread: normal priority ({e.strerror or e})"
    return f"audio thread: realtime priority {priority} (SCHED_FIFO)"
