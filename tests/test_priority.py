"""The archive's background threads run in the idle scheduling class (Linux): encoding, loudness,
embeddings, decoding and resampling never take a CPU from jackd, the audio thread or the controls
(on 2 cores they cost underflows at normal priority: benchmarks/soak.py)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from instrument.archive.embed import BuiltinEmbedder
from instrument.archive.store import Archive
from instrument.archive.writer import ArchiveWriter
from instrument.fallback import ArchiveLoader
from instrument.priority import AUDIO_PRIORITY, background_thread, realtime_audio
from tests.conftest import endless

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")


def _policy(name: str) -> int:
    for t in threading.enumerate():
        if t.name == name and t.native_id is not None:
            return os.sched_getscheduler(t.native_id)
    raise AssertionError(f"no thread {name!r}: {[t.name for t in threading.enumerate()]}")


def test_background_thread_sets_only_the_calling_thread() -> None:
    seen: list[int] = []

    def run() -> None:
        background_thread()
        seen.append(os.sched_getscheduler(0))

    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert seen == [os.SCHED_IDLE]
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller of the test is untouched


def test_the_archive_writer_and_loader_threads_are_idle_class(tmp_path: Path) -> None:
    with Archive(tmp_path / "archive") as arc:
        writer = ArchiveWriter(arc, BuiltinEmbedder())
        writer.start()
        loader = ArchiveLoader(arc, BuiltinEmbedder(), 1, 44100)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (
                    _policy("archive-writer") == os.SCHED_IDLE == _policy("endless-archive-loader")):
                time.sleep(0.05)
            assert _policy("archive-writer") == os.SCHED_IDLE
            assert _policy("endless-archive-loader") == os.SCHED_IDLE
        finally:
            loader.close()
            writer.stop()


def _parked_thread() -> tuple[threading.Thread, threading.Event, int]:
    done = threading.Event()
    t = threading.Thread(target=done.wait, daemon=True)
    t.start()
    while t.native_id is None:
        time.sleep(0.001)
    return t, done, t.native_id


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="Linux scheduling classes")
def test_realtime_audio_makes_a_normal_thread_fifo_and_leaves_a_realtime_one(monkeypatch: pytest.MonkeyPatch) -> None:
    t, done, tid = _parked_thread()
    try:
        line = realtime_audio(tid)
        if line.startswith("audio thread: normal priority (realtime not permitted"):
            pytest.skip("this user may not use SCHED_FIFO (no rtprio limit)")
        assert line == f"audio thread: realtime priority {AUDIO_PRIORITY} (SCHED_FIFO)"
        assert os.sched_getscheduler(tid) == os.SCHED_FIFO
        assert os.sched_getparam(tid).sched_priority == AUDIO_PRIORITY
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER  # only that thread
        assert realtime_audio(tid) == "audio thread: realtime already (the audio server's)"
    finally:
        done.set()
        t.join()

    t, done, tid = _parked_thread()

    def refuse(*a: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    try:
        line = realtime_audio(tid)
    finally:
        done.set()
        t.join()
    assert line.startswith("audio thread: normal priority (realtime not permitted: give your user an rtprio limit")
    assert realtime_audio(0) == "audio thread: normal priority (no realtime scheduling here)"


@pytest.mark.jack
@pytest.mark.timeout(120)
def test_play_asks_realtime_for_its_audio_thread(jack_env: dict[str, str], tmp_path: Path) -> None:
    """With jackd run without realtime priority (as here), the callback's thread was a normal one:
    it waited for a CPU past its period under load (benchmarks/soak.py: client xruns). `play` now
    asks SCHED_FIFO for it and says what it got (with -v)."""
    r = endless("-v", "play", "--demo", "--device", "system", "--osc-port", "0", "--seconds", "2",
                env=jack_env, timeout=100)
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("endless: audio thread: ")]
    assert len(said) == 1, r.stderr
    assert said[0] in (f"endless: audio thread: realtime priority {AUDIO_PRIORITY} (SCHED_FIFO)",
                       "endless: audio thread: realtime already (the audio server's)") or \
        said[0].startswith("endless: audio thread: normal priority (realtime not permitted"), said
