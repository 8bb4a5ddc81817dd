"""Offline rendering and recording: the same mixer code as live, without a device.

`render()` runs the mixer block by block as fast as it can, applying script events at their
exact frames and topping up clip queues between blocks. `Recorder` taps the live output through a
tap ring the audio thread writes and writes WAV/FLAC from its own thread, never from the callback.
A write the disk refuses (full, over quota) ends the take, not the set: the file is closed whole up
to there, the error is logged once and kept (`Recorder.error`) for the stop's answer and the
summary. A take (`RecordSwitch`) is always a new file in the record folder itself: a name with a
folder in it, or one already there (a link included, dangling or not), is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from instrument.engine import Engine
from instrument.errors import ConfigError
from instrument.rt import Mixer

log = logging.getLogger(__name__)

FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}


def check_output_path(path: Path) -> tuple[str, str]:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: unsupported output format {path.suffix or '(none)'}: use .wav or .flac")
    if not path.parent.exists():
        raise ConfigError(f"{path}: folder {path.parent} does not exist: create it first")
    return fmt


_WHY = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only disk",
        errno.EFBIG: "file size limit reached", errno.EIO: "disk I/O error (disk removed?)"}


def _why(e: BaseException, sink: _Sink | None = None) -> str:
    """What went wrong in a few words: the OS error behind it where there is one."""
    os_error = sink.error if sink is not None and sink.error is not None else e
    if isinstance(os_error, OSError) and os_error.errno is not None:
        return _WHY.get(os_error.errno, os_error.strerror or str(os_error))
    return str(e)


class _Sink:
    """The sound file's file, written through Python so that a refused write keeps its OS error
    (libsndfile itself only says "System error")."""

    def __init__(self, fd: int) -> None:
        self._f = os.fdopen(fd, "wb", buffering=0)
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        """Write all of `data` (a short write is retried, so a full disk says so); returns the bytes written."""
        view, done = memoryview(data), 0
        try:
            while done < len(view) and (n := self._f.write(view[done:])):
                done += n
        except OSError as e:
            self.error = e
        return done

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


def render(engine: Engine, seconds: float, blocksize: int = 512,
           progress: Callable[[int, int], None] | None = None, live_timing: bool = False) -> np.ndarray:
    """Render `seconds` of output; returns (frames, 2) float32 (see `render_chunks`)."""
    out = np.zeros((int(round(seconds * engine.cfg.sample_rate)), 2), np.float32)
    pos = 0
    for chunk in render_chunks(engine, seconds, blocksize, progress, live_timing):
        out[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    return out


def render_file(path: Path, engine: Engine, seconds: float, blocksize: int = 512,
                progress: Callable[[int, int], None] | None = None, live_timing: bool = False) -> None:
    """Render `seconds` of output into `path` as it goes: memory stays flat however long the render."""
    fmt, subtype = check_output_path(path)
    with sf.SoundFile(str(path), "w", engine.cfg.sample_rate, 2, subtype, format=fmt) as f:
        for chunk in render_chunks(engine, seconds, blocksize, progress, live_timing):
            f.write(chunk)


def render_chunks(engine: Engine, seconds: float, blocksize: int = 512,
                  progress: Callable[[int, int], None] | None = None, live_timing: bool = False,
                  chunk_seconds: float = 1.0) -> Iterator[np.ndarray]:
    """Render `seconds` of output, yielding it (frames, 2) float32 a chunk at a time (one buffer,
    reused: use each chunk before asking for the next). Chunk edges do not change a sample: the
    mixer's output does not depend on how it is split into blocks.

    With a generator, the render is deterministic: before each block it waits until no slot is
    starving. `live_timing` instead paces the audio clock at real time, so slow generation shows
    up as starvation, as it would live.
    """
    sr = engine.cfg.sample_rate
    total = int(round(seconds * sr))
    buf = np.zeros((max(blocksize, int(chunk_seconds * sr)), 2), np.float32)
    gen = engine.generator
    if gen is not None and live_timing:
        gen.wait_ready()  # the clock starts with a loaded model, as a set would
    pos = start = 0  # frames rendered; where the chunk in `buf` starts
    base = engine.mixer.frame  # the engine's frames are absolute: a render may continue another
    t0 = time.monotonic()
    while pos < total:
        end = min(total, pos + blocksize, start + len(buf))
        nf = engine.next_control_frame()
        if nf is not None and nf - base < end:
            end = max(nf - base, pos)  # split the block at a prompt change, so it lands on its frame
        engine.apply_due(base + pos)
        engine.schedule_script(base + end)
        engine.pump()
        if gen is not None:
            if live_timing:  # the audio clock runs at wall-clock speed and takes what is ready
                time.sleep(max(0.0, t0 + pos / sr - time.monotonic()))
            else:  # deterministic: the audio clock waits for the clips it needs
                gen.wait_fed()
        if end > pos:
            engine.mixer.process(buf[pos - start:end - start])
            pos = end
            if progress is not None:
                progress(end, total)
        if pos - start == len(buf) or pos == total:
            yield buf[:pos - start]
            start = pos


class Recorder:
    """Writes the live output to a sound file: the audio thread copies each block into the mixer's
    tap ring (never blocking: a block that does not fit is dropped and counted in `overflows`), and
    a writer thread drains the ring into the file. `frames`: stop after that many (-1: at close).
    `exclusive`: the file must be new (a take), and a link there is refused, never followed. A write
    the disk refuses closes the file (whole up to there), sets `error` and logs it; the tap's frames
    are then taken and dropped until `close()`."""

    def __init__(self, path: Path, mixer: Mixer, frames: int = -1, exclusive: bool = False) -> None:
        fmt, subtype = check_output_path(path)
        if mixer.tap_owner is not None:
            raise ConfigError(f"already recording to {getattr(mixer.tap_owner, 'path', '?')}: stop that first")
        self.path = path
        self.mixer = mixer
        self.error: str | None = None
        self._sink = _open(path, exclusive)
        try:
            self._file = sf.SoundFile(self._sink, "w", mixer.sr, 2, subtype, format=fmt)  # type: ignore[arg-type]
            if self._sink.error is not None:
                self._file.close()
                raise self._sink.error
        except (RuntimeError, OSError) as e:  # the header could not be written
            self._sink.close()
            path.unlink(missing_ok=True)  # ours: `_open` made it (or emptied it)
            raise ConfigError(f"{path}: cannot record: {_why(e, self._sink)}: free space in {path.parent} "
                              "or record elsewhere") from None
        self._overflows0 = mixer.tap_overflows
        if not mixer.tap_start(frames):
            self._file.close()
            raise ConfigError("the audio thread's command queue is full (is the audio stream running?): "
                              "try recording again")
        mixer.tap_owner = self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endless-recorder", daemon=True)
        self.frames_written = 0
        self.frames_taken = 0  # from the tap ring: written, or dropped after a refused write
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain()
                time.sleep(0.05)
            self._drain()
        except (RuntimeError, OSError) as e:  # the disk refused a write: the take ends, the set goes on
            frames = self.frames_written
            try:
                self._file.close()  # the header says what the file holds
                frames = sf.info(str(self.path)).frames
            except (RuntimeError, OSError) as e2:
                log.debug("closing %s after the error: %s", self.path, e2)
            self.error = (f"recording stopped: {_why(e, self._sink)} after {frames / self.mixer.sr:.1f} s "
                          f"({self.path} is whole up to there; free space to record again)")
            log.error("%s", self.error)
            while not self._stop.is_set():  # keep the tap ring empty: nothing is blamed on the disk's speed
                self._drain(write=False)
                time.sleep(0.05)
            self._drain(write=False)

    def _drain(self, write: bool = True) -> None:
        while len(data := self.mixer.tap_read()):
            self.frames_taken += len(data)
            if write:
                self._write(data)
                self.frames_written += len(data)

    def _write(self, data: np.ndarray) -> None:
        """Write frames; raises the OS error of a write the disk refused."""
        try:
            self._file.write(data)
        except AssertionError:  # soundfile's check that all was written: the sink knows why not
            if self._sink.error is None:
                raise
        if self._sink.error is not None:
            raise self._sink.error

    @property
    def overflows(self) -> int:
        return self.mixer.tap_overflows - self._overflows0

    def close(self, wait: float = 0.5) -> None:
        """Stop tapping (waiting up to `wait` s for the audio thread to take that), write what is
        left, close the file."""
        m = self.mixer
        if m.tapping and m.tap_stop():
            deadline = time.monotonic() + wait
            while m.tapping and time.monotonic() < deadline:  # a stopped stream never takes it
                time.sleep(0.005)
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self._file.close()
        except (RuntimeError, OSError) as e:  # the last frames or the header refused
            self.error = self.error or f"recording stopped: {_why(e, self._sink)} at its end ({self.path})"
            log.error("%s", self.error)
        finally:
            self._sink.close()
        m.tap_owner = None
        if self.overflows and self.error is None:
            log.warning("recorder dropped %d blocks (the disk could not keep up)", self.overflows)


def _open(path: Path, exclusive: bool) -> _Sink:
    """The file a recording writes: new (`exclusive`: O_EXCL, so a link there, even a dangling one,
    is refused, never followed), or created or emptied. Errors are one line."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) if exclusive else os.O_TRUNC
    try:
        return _Sink(os.open(path, flags, 0o644))
    except FileExistsError:
        what = "a link" if path.is_symlink() else "a file"
        raise ConfigError(f"{path} exists ({what}): give another name") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot record: {_why(e)}: check the folder, or record elsewhere") from None


class RecordSwitch:
    """The record action (`/endless/record`, a MIDI button): start and stop takes of the live output
    in `folder`, each a new file in that folder itself (the folder as it resolved when the set
    began). Called holding the engine lock; a take started before the stream taps from its first
    frame. A take the disk refused answers its stop with that error; `errors` keeps them."""

    def __init__(self, folder: Path, mixer: Mixer) -> None:
        self.folder = folder
        self.root = folder.resolve()
        self.mixer = mixer
        self.rec: Recorder | None = None
        self._errors: list[str] = []

    @property
    def active(self) -> bool:
        return self.rec is not None

    @property
    def errors(self) -> tuple[str, ...]:
        """The takes the disk refused, this one included while it runs."""
        now = () if self.rec is None or self.rec.error is None else (self.rec.error,)
        return tuple(self._errors) + now

    def __call__(self, start: bool, name: str | None) -> str:
        if start:
            if self.rec is not None:
                raise ConfigError(f"already recording to {self.rec.path}: send /endless/record 0 first")
            name = name or time.strftime("endless-%Y%m%d-%H%M%S.wav")
            if name != os.path.basename(name) or name.startswith(".") or "\\" in name or "\0" in name:
                raise ConfigError(f"{name!r}: not a recording file name: give a file name like take1.wav, "
                                  "without folders")
            if self.folder.resolve() != self.root:
                raise ConfigError(f"the record folder {self.folder} now leads to {self.folder.resolve()}, not "
                                  f"{self.root}: put the folder back, or restart with --record-dir")
            self.rec = Recorder(self.root / name, self.mixer, exclusive=True)
            return str(self.rec.path)
        if self.rec is None:
            raise ConfigError("not recording: send /endless/record 1 [name] first")
        rec, self.rec = self.rec, None
        rec.close()
        if rec.error is not None:
            self._errors.append(rec.error)
            raise ConfigError(rec.error)
        return str(rec.path)

    def close(self) -> None:
        """The end of the set: finish a take still running (an error is in `errors` and the log)."""
        if self.rec is not None:
            rec, self.rec = self.rec, None
            rec.close()
            if rec.error is not None:
                self._errors.append(rec.error)
