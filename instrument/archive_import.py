"""`endless archive import DIR`: a performer's own recordings become archive clips.

Every audio file soundfile reads, anywhere under DIR, becomes one clip: read, made stereo, resampled
to 44.1 kHz and loudness-normalised exactly as generated clips are (`generator.post.postprocess`:
10 ms fades, -20 LUFS under a -1 dBTP ceiling), its prompt the file's sidecar text (`NAME.txt` or
`NAME.wav.txt` beside it) or else its file name ("rain_on-roof.wav" -> "rain on roof"), embedded
like live prompts so the fallback finds it. The walk stays inside DIR: links (to files or folders)
are skipped, never followed. A file that cannot be used is skipped with its reason; the import goes on.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from instrument.errors import ClipError, ConfigError

if TYPE_CHECKING:
    from instrument.archive.embed import Embedder
    from instrument.archive.store import Archive, Entry
    from instrument.clips import Clip

__all__ = ["IMPORT_RATE", "ImportReport", "Progress", "check_folder", "import_folder", "prompt_for"]

IMPORT_RATE = 44100  # the rate imported clips are kept at (TangoFlux's own)
MAX_SECONDS = 600.0  # longer recordings are skipped (cut them into parts): a clip is held whole in memory
SIDECAR_BYTES = 4096
_NOT_PROMPT = re.compile(r"[_\-|:\s]+")  # file-name separators, and the blend syntax's | and :


@dataclass
class ImportReport:
    added: list[Entry] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    files: int = 0


class Progress:
    """One progress line on `stream` at most every `every` seconds (`\\r`-updated on a terminal)."""

    def __init__(self, total: int, stream: TextIO | None = None, every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.stream, self.every, self.clock = total, stream or sys.stderr, every, clock
        self.last = clock()
        self.shown = False

    def update(self, done: int, kept: int, skipped: int) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        text = f"import: {done}/{self.total} files, {kept} kept, {skipped} skipped"
        tty = self.stream.isatty()
        self.stream.write(f"\r{text}   " if tty else text + "\n")
        self.stream.flush()
        self.shown = self.shown or tty

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")


def _walk(root: Path) -> Iterator[tuple[Path, str | None]]:
    """(file, None) for each plain file under `root`, sorted; (path, why) for what is skipped."""
    for dirpath, dirs, names in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in sorted(dirs):
            if (here / d).is_symlink():
                yield here / d, "a link to a folder: not followed (the import stays inside its folder)"
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(names):
            p = here / name
            if name.startswith(".") or name.lower().endswith(".txt"):
                continue  # hidden files, and sidecars (read with their audio file)
            if p.is_symlink():
                yield p, "a link: not followed (the import stays inside its folder)"
            elif p.is_file():
                yield p, None


def _read_sidecar(path: Path) -> str | None:
    for side in (path.with_suffix(".txt"), path.with_name(path.name + ".txt")):
        if side.is_symlink() or not side.is_file():
            continue
        try:
            with open(side, "rb") as f:
                text = f.read(SIDECAR_BYTES).decode("utf-8", errors="replace")
        except OSError:
            continue
        text = " ".join(text.split())
        if text:
            return text[:500]
    return None


def prompt_for(path: Path) -> str:
    """The prompt an imported file gets: its sidecar's text if it is a valid prompt or blend, else the
    sidecar's or the file name's words (separators and the blend syntax's `|` and `:` as spaces)."""
    from instrument.blend import parse_blend

    side = _read_sidecar(path)
    if side is not None:
        try:
            parse_blend(side)
            return side
        except ValueError:
            pass
    words = " ".join(_NOT_PROMPT.sub(" ", side if side is not None else path.stem).split())
    return words or "recording"


def _clip(path: Path, max_seconds: float) -> tuple[Clip, float]:
    """(the clip as generated clips are kept, its loudness); ClipError naming why it cannot be."""
    import soundfile as sf

    from instrument.clips import load_clip
    from instrument.generator.post import postprocess

    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
            raise ClipError(f"{path}: {info.frames / info.samplerate:.0f} s long, over the {max_seconds:g} s "
                            "limit: cut it into parts, or raise --max-seconds")
    except (sf.LibsndfileError, RuntimeError, OSError):
        pass  # load_clip says why in its own words
    clip = load_clip(path, IMPORT_RATE)
    return postprocess(clip, IMPORT_RATE)


def check_folder(folder: Path) -> None:
    """ConfigError, one line, unless `folder` is a folder."""
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "not a folder"
        raise ConfigError(f"archive import {folder}: {what}: give the folder that holds the recordings")


def import_folder(archive: Archive, folder: Path, embedder: Embedder, max_seconds: float = MAX_SECONDS,
                  progress: Progress | None = None) -> ImportReport:
    """Import every audio file under `folder` into `archive` (see the module's docstring)."""
    from instrument.archive.embed import embed_prompt
    from instrument.clips import ClipInfo

    check_folder(folder)
    try:
        found = list(_walk(folder))
    except OSError as e:
        raise ConfigError(f"archive import {folder}: cannot read it ({e.strerror}): check its permissions") from None
    report = ImportReport(files=sum(1 for _, why in found if why is None))
    bar = progress or Progress(report.files)
    done = 0
    for path, why in found:
        if why is not None:
            report.skipped.append((path, why))
            continue
        done += 1
        try:
            made, lufs = _clip(path, max_seconds)
            prompt = prompt_for(path)
            clip = replace(made, info=ClipInfo("import", prompt, None, "import", 0.0))
            entry = archive.add(clip, embedding=embed_prompt(embedder, prompt), embedder=embedder.id, loudness=lufs)
            report.added.append(entry)
        except ClipError as e:
            report.skipped.append((path, str(e).removeprefix(f"{path}: ")))
        except (OSError, ValueError) as e:  # a full disk, or audio the post-processing refuses
            report.skipped.append((path, " ".join(str(e).split()) or type(e).__name__))
        bar.update(done, len(report.added), len(report.skipped))
    bar.done()
    return report
