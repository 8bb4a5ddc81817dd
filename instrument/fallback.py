"""What a slot plays while the generator has nothing for it: archived clips of similar prompts.

`ArchiveLoader` keeps one prepared archive clip per slot, for the prompt the slot plays now, on one
small daemon thread: the prompt is embedded (cached), the archive's top-k most similar clips are
looked up, one of them is drawn (never one of the slot's last few) and its FLAC read and resampled.
The control loop only asks (`want`) and takes what is ready (`take`): it never waits on a file, an
embedding or SQLite. The draw comes from a seed made of the base seed, the slot and how many clips
the slot took before, so an offline render draws the same clips every time. `ArchiveLink` bundles
the archive, its writer (every generated clip kept) and the loader, and closes them in that order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from instrument.clips import Clip, ClipInfo
from instrument.priority import background_thread

if TYPE_CHECKING:
    from instrument.archive.embed import Embedder, Vector
    from instrument.archive.store import Archive, Entry
    from instrument.archive.writer import ArchiveWriter

__all__ = ["FALLBACKS", "ArchiveLink", "ArchiveLoader", "archive_dir", "silence"]

log = logging.getLogger(__name__)

FALLBACKS = ("archive", "loop", "silence")  # the registry's slot/fallback choices
TOP_K = 8  # a clip is drawn among the k archived clips most similar to the slot's prompt
RECENT = 4  # never one of the slot's last few
QUICK_POOL = 256  # while the embedder loads (live), the newest clips are matched by their words
RETRY_S = 5.0  # a prompt the archive had nothing for is looked up again after this long (clips come in)
SOURCE = "archive:"  # ClipInfo.source of an archived clip: "archive:<id>"


def archive_dir(given: Path | None) -> Path:
    """The archive folder: the one given, else $ENDLESS_ARCHIVE, else the platform's user data folder."""
    import os

    from instrument.archive.store import Archive

    if given is not None:
        return given.expanduser()
    env = os.environ.get("ENDLESS_ARCHIVE", "").strip()
    return Path(env).expanduser() if env else Archive.default_dir()


def silence(seconds: float, sample_rate: int) -> Clip:
    """A silent clip (what a slot set to `silence` fades out to; zero pages cost no memory)."""
    n = max(1, int(round(seconds * sample_rate)))
    audio = np.zeros((n, 2), np.float32)
    audio.flags.writeable = False
    return Clip(audio, sample_rate, ClipInfo("silence", "", None, "silence", 0.0))


class LazyEmbedder:
    """The embedder, loaded on a thread of its own from the moment it is made (sentence-transformers
    imports torch: seconds), so that building the instrument never waits for it; whoever embeds first
    waits for it instead (the loader's or the writer's thread, never the control loop)."""

    def __init__(self, model: str | None = None) -> None:
        self._model = model
        self._done = threading.Event()
        self._embedder: Embedder | None = None
        threading.Thread(target=self._load, name="endless-embedder-load", daemon=True).start()

    def _load(self) -> None:
        from instrument.archive.embed import BuiltinEmbedder, load_embedder

        background_thread()  # importing a model stack takes seconds of CPU
        try:
            self._embedder = load_embedder(self._model)
        except Exception as e:  # never fatal: the built-in one always works
            log.warning("embeddings: %s; using the built-in text embedder", " ".join(str(e).split())[:200])
            self._embedder = BuiltinEmbedder()
        finally:
            self._done.set()

    @property
    def loaded(self) -> bool:
        return self._done.is_set()

    def get(self) -> Embedder:
        self._done.wait()
        assert self._embedder is not None
        return self._embedder

    @property
    def id(self) -> str:
        return self.get().id

    @property
    def dim(self) -> int:
        return self.get().dim

    def embed(self, texts: Sequence[str]) -> Vector:
        return self.get().embed(texts)


@dataclass(frozen=True)
class _Job:
    slot: int
    ticket: int
    prompt: str
    draw: int  # the slot's takes so far: the seed of the draw
    exclude: tuple[int, ...]


@dataclass(frozen=True)
class _Ready:
    ticket: int
    prompt: str
    clip: Clip | None  # None: the archive had nothing (fitting, readable) for the prompt
    at: float


class ArchiveLoader:
    """One prepared archive clip per slot, made on a daemon thread (see the module's docstring)."""

    def __init__(self, archive: Archive, embedder: Embedder, slots: int, sample_rate: int, base_seed: int = 0,
                 k: int = TOP_K, recent: int = RECENT, quick: bool = False) -> None:
        """`quick` (live play): while a `LazyEmbedder` still loads (sentence-transformers imports torch:
        seconds), match the prompt by its words (the built-in embedder over the newest QUICK_POOL
        clips' prompts) instead of waiting, so the first sound never waits for a model. An offline
        render leaves it off: its draws must not depend on how fast a model loads."""
        self.archive, self.embedder, self.sample_rate = archive, embedder, sample_rate
        self.quick = quick
        self.base_seed, self.k = base_seed, k
        self._jobs: queue.SimpleQueue[_Job | int | None] = queue.SimpleQueue()  # int: a clip id played
        self._cond = threading.Condition()
        self._want: list[_Job | None] = [None] * slots
        self._ready: list[_Ready | None] = [None] * slots
        self._recent: list[deque[int]] = [deque(maxlen=recent) for _ in range(slots)]
        self._takes = [0] * slots
        self._tickets = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="endless-archive-loader", daemon=True)
        self._thread.start()

    # -- the control side (never blocks, except `wait`) ------------------------------------------
    def want(self, slot: int, prompt: str, retry_s: float = RETRY_S) -> None:
        """Have a clip for `prompt` ready for the slot (nothing to do when one is, or is coming)."""
        with self._cond:
            w, r = self._want[slot], self._ready[slot]
            if w is not None and w.prompt == prompt:
                if r is None or r.ticket != w.ticket or r.clip is not None:
                    return  # coming, or ready
                if time.monotonic() - r.at < retry_s:
                    return  # the archive had nothing for it a moment ago
            self._tickets += 1
            job = _Job(slot, self._tickets, prompt, self._takes[slot], tuple(self._recent[slot]))
            self._want[slot] = job
        self._jobs.put(job)

    def take(self, slot: int, prompt: str) -> Clip | None:
        """The slot's prepared clip for `prompt`, if it is ready (it counts as played; the next is
        prepared at the next `want`)."""
        with self._cond:
            w, r = self._want[slot], self._ready[slot]
            if w is None or r is None or r.ticket != w.ticket or w.prompt != prompt or r.clip is None:
                return None
            self._want[slot] = self._ready[slot] = None
            self._takes[slot] += 1
            clip_id = int(r.clip.info.source[len(SOURCE):])
            self._recent[slot].append(clip_id)
        self._jobs.put(clip_id)  # counted as played on the loader's thread (an SQLite write)
        return r.clip

    def wait(self, slot: int, timeout: float) -> bool:
        """Block until the slot's wanted clip is looked up (found or not), at most `timeout` s (an
        offline render waits here, so that it plays the same clips however fast the disk is)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                w, r = self._want[slot], self._ready[slot]
                if w is None or (r is not None and r.ticket == w.ticket):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    def close(self, timeout: float = 5.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the loader's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        background_thread()  # decoding and resampling never take a CPU from the audio
        while (job := self._jobs.get()) is not None:
            if isinstance(job, int):
                self._played(job)
                continue
            with self._cond:
                if self._want[job.slot] is not job:
                    continue  # the slot wants another prompt by now
            clip = self._find(job)
            with self._cond:
                if self._want[job.slot] is job:
                    self._ready[job.slot] = _Ready(job.ticket, job.prompt, clip, time.monotonic())
                self._cond.notify_all()

    def _played(self, clip_id: int) -> None:
        try:
            self.archive.played(clip_id)
        except Exception as e:  # a full or read-only disk: the play count waits, the set goes on
            self._failed(f"archive: a play of clip {clip_id} not counted: {e}")

    def _find(self, job: _Job) -> Clip | None:
        """A clip drawn with the job's seed among the archive's top-k for the job's prompt, leaving out
        the slot's last few (only the very last when that leaves none); a damaged file is skipped (the
        archive marks it) and the draw made again among the top-k of the rest."""
        from instrument.archive.embed import embed_prompt

        try:
            rng = np.random.default_rng(np.random.SeedSequence((self.base_seed, job.slot, job.draw, 0xA4C)))
            damaged: set[int] = set()
            if self.quick and isinstance(self.embedder, LazyEmbedder) and not self.embedder.loaded:
                search = self._by_words(job.prompt)
            else:
                vector, embedder_id = embed_prompt(self.embedder, job.prompt), self.embedder.id
                search = lambda exclude: [e for e, _ in self.archive.similar(vector, embedder_id, self.k, exclude)]  # noqa: E731
            while found := search(damaged):
                pool = ([e for e in found if e.id not in job.exclude]
                        or [e for e in found if e.id not in job.exclude[-1:]])
                if not pool:
                    break
                entry = pool[int(rng.integers(len(pool)))]
                clip = self.archive.load(entry, self.sample_rate)
                if clip is not None:
                    return replace(clip, info=replace(clip.info, source=f"{SOURCE}{entry.id}"), cut=False)
                damaged.add(entry.id)
        except Exception as e:  # never fatal: the slot loops its own clip instead
            self._failed(f"archive: no fallback clip for slot {job.slot + 1} ({job.prompt[:60]!r}): "
                         f"{' '.join(str(e).split())[:200]}")
        return None

    def _by_words(self, prompt: str) -> Callable[[Collection[int]], list[Entry]]:
        """A search over the newest clips' own prompts with the built-in embedder (no stored vectors
        needed, no model to wait for)."""
        from instrument.archive.embed import BuiltinEmbedder, embed_prompt

        words = BuiltinEmbedder()
        pool = self.archive.entries(limit=QUICK_POOL)
        if not pool:
            return lambda exclude: []
        scores = words.embed([e.blend or e.prompt for e in pool]) @ embed_prompt(words, prompt)
        ranked = [pool[i] for i in np.argsort(-scores, kind="stable")]
        return lambda exclude: [e for e in ranked if e.id not in exclude and not e.bad][:self.k]

    def _failed(self, text: str) -> None:
        self.failures += 1
        if self.failures <= 3 or self.failures % 100 == 0:  # rate-limited: one bad disk, not a flood
            log.warning("%s (%d so far)", text, self.failures)


class ArchiveLink:
    """The instrument's archive: the store, its writer (every generated clip) and the loader (fallback
    clips). `close()` stops the loader, drains the writer, then closes the store."""

    def __init__(self, root: Path, slots: int, sample_rate: int, base_seed: int = 0, max_clips: int | None = None,
                 max_bytes: int | None = None, embedder_model: str | None = None, quick: bool = False) -> None:
        from instrument.archive.store import Archive
        from instrument.archive.writer import ArchiveWriter

        self.archive = Archive(root, max_clips=max_clips, max_bytes=max_bytes)
        self._stack = contextlib.ExitStack()
        self._stack.callback(self.archive.close)
        try:
            self.embedder = LazyEmbedder(embedder_model)
            self.writer: ArchiveWriter = ArchiveWriter(self.archive, self.embedder)
            self.writer.start()
            self._stack.callback(self.writer.stop)
            self.loader = ArchiveLoader(self.archive, self.embedder, slots, sample_rate, base_seed, quick=quick)
            self._stack.callback(self.loader.close)
        except BaseException:
            self._stack.close()
            raise
        self.clips_at_start = self.archive.count()
        log.info("archive %s: %d clips", root, self.clips_at_start)

    def keep(self, clip: Clip) -> None:
        """Archive a generated clip (queued for the writer's thread; never blocks)."""
        self.writer.put(clip)

    def close(self) -> None:
        self._stack.close()
