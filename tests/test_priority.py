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
from instrument.priority import background_thread

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
