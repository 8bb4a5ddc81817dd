"""The archive's writer: one daemon thread that embeds each clip's prompt and writes the clip, so no
caller (the engine's clip arrival, never the audio thread) waits on an encoder, a disk or a model.

`put` returns at once: False, and a count, when `max_waiting` clips already wait. A failed write (a
full or unwritable disk, a damaged index) is counted and logged, never raised: the first failure at
once, then at most one line every `REPORT_EVERY` seconds with how many failed meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from instrument.archive.embed import Embedder, embed_prompt
from instrument.archive.store import Archive
from instrument.clips import Clip
from instrument.errors import one_line

__all__ = ["ArchiveWriter"]

log = logging.getLogger(__name__)

REPORT_EVERY = 30.0  # seconds between two lines about failed writes or dropped clips


class _Reporter:
    """One line now, then at most one a period, each saying how many happened since the last."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.last = -float("inf")
        self.held = 0

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self.last < self.period:
            self.held += 1
            return
        more = f" ({self.held} more since the last report)" if self.held else ""
        log.warning("%s%s", text, more)
        self.last, self.held = now, 0


class ArchiveWriter:
    """Embeds (cached per prompt) and archives clips on its own thread; see the module's docstring."""

    def __init__(self, archive: Archive, embedder: Embedder, max_waiting: int = 32) -> None:
        if max_waiting < 1:
            raise ValueError(f"ArchiveWriter max_waiting must be at least 1, got {max_waiting}")
        self.archive, self.embedder = archive, embedder
        self.written = 0
        self.dropped = 0  # put while full, or still waiting when stop timed out
        self.failed = 0  # write errors (disk full, unwritable folder, damaged index)
        self._queue: queue.Queue[Clip] = queue.Queue(max_waiting)
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self._report_failed = _Reporter(REPORT_EVERY)
        self._report_dropped = _Reporter(REPORT_EVERY)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()

    def put(self, clip: Clip) -> bool:
        """Queue a clip to archive; returns at once (False, counted, when full or stopped)."""
        if self._stopping.is_set():
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(clip)
        except queue.Full:
            self.dropped += 1
            self._report_dropped(f"archive: {self.dropped} clips not archived: the writer is behind "
                                 f"({self._queue.maxsize} waiting; a slow disk?)")
            return False
        return True

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is waiting, within `timeout` seconds (the rest is dropped and counted), then end."""
        self._stopping.set()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()  # the thread ends after the clip it is writing
            self._thread.join(max(1.0, timeout / 10))
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self.dropped += 1

    def _run(self) -> None:
        from instrument.priority import background_thread

        background_thread()  # encoding, loudness and embeddings never take a CPU from the audio
        while not self._abandon.is_set():
            try:
                clip = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            self._write(clip)

    def _write(self, clip: Clip) -> None:
        vector = None
        if clip.info.prompt.strip():
            try:
                vector = embed_prompt(self.embedder, clip.info.prompt)
            except Exception as e:  # a malformed blend, a model error: keep the clip without a vector
                log.debug("archive: no embedding for %r: %s", clip.info.prompt, e)
        try:
            self.archive.add(clip, embedding=vector, embedder=self.embedder.id if vector is not None else None)
        except Exception as e:  # disk full, read-only folder, damaged index: never raised to the caller
            self.failed += 1
            self._report_failed(f"archive: cannot write a clip to {self.archive.clips_dir} "
                                f"({_reason(e)}; {self.failed} failed so far): free disk space or "
                                "check the folder, or use --no-archive")
            return
        self.written += 1


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror + (f": {e.filename}" if e.filename else "") if e.strerror else str(e)
    return one_line(e, 200)
