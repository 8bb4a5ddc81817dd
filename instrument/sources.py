"""Clip sources: where slots get their next clip from.

A source hands out clips per slot on request. The generator will be one source; `FolderSource`
plays a folder of audio files, so the instrument works with no model at all (and with the demo
clips from `instrument.demo`).

Sources run on the control side (a feeder thread), never in the audio callback: they decode
files, allocate and log.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
import soundfile as sf

from instrument.clips import Clip, load_clip, readable_formats
from instrument.errors import ClipError

if TYPE_CHECKING:  # types only: this module reads files and needs no built audio core
    from instrument.rt import Mixer, MixerConfig

__all__ = ["Assign", "ClipSource", "FolderSource", "Player", "audio_extensions", "find_audio_files"]

logger = logging.getLogger(__name__)

Assign = Literal["auto", "round-robin", "subfolder"]

# File name extensions per libsndfile format name. Formats libsndfile adds later fall back to
# their lowercased name. RAW is left out: header-less files cannot be read without being told
# their rate, channels and sample type.
_FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "AIFF": (".aiff", ".aif", ".aifc"),
    "AU": (".au", ".snd"),
    "CAF": (".caf",),
    "FLAC": (".flac",),
    "IRCAM": (".sf", ".ircam"),
    "MAT4": (".mat",),
    "MAT5": (".mat",),
    "MP3": (".mp3",),
    "MPC2K": (".mpc",),
    "NIST": (".nist", ".sph"),
    "OGG": (".ogg", ".oga", ".opus"),
    "RF64": (".rf64", ".wav"),
    "SVX": (".svx", ".8svx", ".iff"),
    "WAV": (".wav",),
    "WAVEX": (".wav",),
}
_NOT_FILES = frozenset({"RAW"})


@runtime_checkable
class ClipSource(Protocol):
    """Hands out clips for slots (0-based). Called from one feeder thread, never the audio thread."""

    @property
    def name(self) -> str:
        """A short label for logs and status, e.g. "folder clips/"."""
        ...

    def next_clip(self, slot: int) -> Clip | None:
        """The next clip for `slot`, or None when none is ready now (the caller asks again later)."""
        ...

    def close(self) -> None:
        """Release what the source holds; no next_clip after this."""
        ...


class Player(Protocol):
    """The engine, as a source that follows the playback sees it (the generator's scheduler, given
    it by `attach`): how much each slot holds, a flush when a prompt changes, a pump while a render
    waits. A protocol here, not the engine class, so sources never import the engine that uses them."""

    @property
    def mixer(self) -> Mixer: ...

    @property
    def cfg(self) -> MixerConfig: ...

    def pending(self, slot: int) -> int:
        """Clips queued or on their way to the slot's queue."""
        ...

    def flush(self, slot: int) -> None:
        """Drop the slot's queued clips (a new prompt)."""
        ...

    def pump(self) -> int:
        """Top up every slot's queue from the source."""
        ...


def audio_extensions() -> frozenset[str]:
    """Lowercase file extensions (".wav", ".flac", ...) of the formats this soundfile reads."""
    exts: set[str] = set()
    for fmt in sf.available_formats():
        if fmt not in _NOT_FILES:
            exts.update(_FORMAT_EXTENSIONS.get(fmt, ("." + fmt.lower(),)))
    return frozenset(exts)


def _natural_key(text: str) -> tuple[tuple[str | int, ...], str]:
    """Sort "2-rain" before "10-wind", case-insensitively; the text itself breaks ties."""
    parts = re.split(r"(\d+)", text.casefold())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under `root`, recursively, in natural order of their relative paths.

    Hidden files and folders (a leading ".") are skipped: macOS leaves "._name.wav" resource
    forks next to real audio on shared drives, and they are not audio.
    """
    exts = audio_extensions()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


@dataclass
class _Slot:
    """One slot's walk through its files: a fresh shuffled order each cycle."""

    index: int  # the slot, 0-based: it seeds the shuffles
    files: tuple[Path, ...]
    cycle: int = -1
    order: list[int] = field(default_factory=list)
    pos: int = 0
    last: Path | None = None


class FolderSource:
    """Plays a folder of audio files, cycling each slot through its own files forever.

    Assignment of files to slots (`assign`):
      - "round-robin": all files in natural order, file i -> slot i % slots.
      - "subfolder": each immediate subfolder that holds audio, in natural order, is one voice:
        subfolder k -> slot k % slots. Files directly in `root` are spread round-robin over all
        slots.
      - "auto": "subfolder" when at least one subfolder holds audio, else "round-robin".
    A slot left with no files plays all of them (rotated by the slot index), so every slot plays.

    Each cycle through a slot's files has its own order, shuffled by
    `numpy.random.default_rng((seed, slot, cycle))`; a cycle does not start with the clip the last
    one ended on (when the slot has more than one file). The same root, slots and seed give the
    same clips per slot whatever order the slots are asked in.

    Files are decoded and resampled when first needed and kept in an LRU cache of `cache_clips`
    clips (0 = no cache); 64 clips of 30 s at 44.1 kHz take about 680 MB. A file that fails to
    load is logged once as a warning and skipped from then on; if no file can be loaded at all,
    next_clip raises ClipError.

    Not thread-safe: call next_clip from one feeder thread only.

    >>> src = FolderSource(Path("clips"), slots=4, sample_rate=44100)  # doctest: +SKIP
    >>> clip = src.next_clip(0)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path,
        slots: int,
        sample_rate: int,
        assign: Assign = "auto",
        seed: int = 0,
        cache_clips: int = 64,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if cache_clips < 0:
            raise ValueError(f"cache_clips must be >= 0, got {cache_clips}")
        if assign not in ("auto", "round-robin", "subfolder"):
            raise ValueError(f"assign must be 'auto', 'round-robin' or 'subfolder', got {assign!r}")
        root = Path(root)
        if not root.exists():
            raise ClipError(f"{root}: no such folder: pass a folder of audio files")
        if not root.is_dir():
            raise ClipError(f"{root}: is a file, not a folder: pass the folder of audio files that holds it")
        files = find_audio_files(root)
        if not files:
            raise ClipError(
                f"{root}: no audio files in this folder or below ({readable_formats()}): "
                "add some, or write the demo clips with instrument.demo.write_demo_clips"
            )

        self._root = root
        self._slots_n = slots
        self._sample_rate = sample_rate
        self._seed = seed
        self._cache_clips = cache_clips
        self._all: tuple[Path, ...] = tuple(files)
        self._broken: set[Path] = set()
        self._cache: OrderedDict[Path, Clip] = OrderedDict()
        self._closed = False

        groups = self._subfolder_groups(root, files)
        auto: Literal["round-robin", "subfolder"] = "subfolder" if groups else "round-robin"
        resolved: Literal["round-robin", "subfolder"] = auto if assign == "auto" else assign
        self._assign = resolved

        per_slot: list[list[Path]] = [[] for _ in range(slots)]
        if resolved == "subfolder":
            if len(groups) > slots:
                logger.info(
                    "%s: %d subfolders for %d slots: subfolder k plays in slot k %% %d",
                    root,
                    len(groups),
                    slots,
                    slots,
                )
            for k, group in enumerate(groups):
                per_slot[k % slots].extend(group)
            loose = [f for f in files if f.parent == root]
        else:
            loose = files
        for i, f in enumerate(loose):
            per_slot[i % slots].append(f)

        self._state: list[_Slot] = []
        for s, own in enumerate(per_slot):
            if not own:
                logger.info("%s: slot %d has no files of its own: it plays all %d", root, s + 1, len(files))
                own = self._rotated_all(s)
            self._state.append(_Slot(index=s, files=tuple(own)))

    @staticmethod
    def _subfolder_groups(root: Path, files: list[Path]) -> list[list[Path]]:
        """Files grouped by the immediate subfolder of root they sit under, in natural order."""
        groups: dict[str, list[Path]] = {}
        for f in files:
            rel = f.relative_to(root).parts
            if len(rel) > 1:
                groups.setdefault(rel[0], []).append(f)
        return [groups[k] for k in sorted(groups, key=_natural_key)]

    def _rotated_all(self, slot: int) -> list[Path]:
        k = slot % len(self._all)
        return list(self._all[k:] + self._all[:k])

    @property
    def name(self) -> str:
        return f"folder {self._root}"

    @property
    def root(self) -> Path:
        return self._root

    @property
    def assign(self) -> Literal["round-robin", "subfolder"]:
        """The assignment in use ("auto" resolved)."""
        return self._assign

    @property
    def all_files(self) -> tuple[Path, ...]:
        return self._all

    def files(self, slot: int) -> tuple[Path, ...]:
        """The files `slot` cycles through."""
        self._check_slot(slot)
        return self._state[slot].files

    def next_clip(self, slot: int) -> Clip | None:
        """The next clip for `slot` (0-based). Never None: files are decoded on demand."""
        if self._closed:
            raise RuntimeError(f"{self.name}: next_clip after close()")
        self._check_slot(slot)
        st = self._state[slot]
        while True:
            path = self._draw(st)
            if path not in self._broken:
                clip = self._load(path)
                if clip is not None:
                    return clip
            if all(f in self._broken for f in st.files):
                if len(self._broken) >= len(self._all):
                    raise ClipError(
                        f"{self._root}: none of the {len(self._all)} audio files can be read "
                        "(the warnings above say why): convert them to WAV or FLAC"
                    )
                logger.warning(
                    "%s: no file of slot %d can be read: it plays all files instead", self._root, slot + 1
                )
                st = self._state[slot] = _Slot(index=slot, files=tuple(self._rotated_all(slot)))

    def close(self) -> None:
        self._cache.clear()
        self._closed = True

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self._slots_n:
            raise IndexError(f"slot must be in 0..{self._slots_n - 1}, got {slot}")

    def _draw(self, st: _Slot) -> Path:
        """The slot's next file; starts a new shuffled cycle when the current one is done."""
        if st.pos >= len(st.order):
            st.cycle += 1
            rng = np.random.default_rng((self._seed, st.index, st.cycle))
            order = [int(i) for i in rng.permutation(len(st.files))]
            if len(order) > 1 and st.files[order[0]] == st.last:
                order[0], order[1] = order[1], order[0]
            st.order, st.pos = order, 0
        path = st.files[st.order[st.pos]]
        st.pos += 1
        st.last = path
        return path

    def _load(self, path: Path) -> Clip | None:
        """The clip for `path`, from the cache or decoded now; None (and a warning) if it cannot load."""
        clip = self._cache.get(path)
        if clip is not None:
            self._cache.move_to_end(path)
            return clip
        try:
            clip = load_clip(path, self._sample_rate)
        except ClipError as e:
            self._broken.add(path)
            logger.warning("skipping %s", e)
            return None
        if self._cache_clips > 0:
            self._cache[path] = clip
            while len(self._cache) > self._cache_clips:
                self._cache.popitem(last=False)
        return clip
