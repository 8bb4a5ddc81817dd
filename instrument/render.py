"""Offline rendering and recording: the same mixer code as live, without a device.

`render()` runs the mixer block by block as fast as it can, applying script events at their
exact frames and topping up clip queues between blocks. `Recorder` taps the live output through a
tap ring the audio thread writes and writes WAV/FLAC from its own thread, never from the callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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


def render(engine: Engine, seconds: float, blocksize: int = 512,
           progress: Callable[[int, int], None] | None = None, live_timing: bool = False) -> np.ndarray:
    """Render `seconds` of output; returns (frames, 2) float32.

    With a generator, the render is deterministic: before each block it waits until no slot is
    starving. `live_timing` instead paces the audio clock at real time, so slow generation shows
    up as starvation, as it would live.
    """
    sr = engine.cfg.sample_rate
    total = int(round(seconds * sr))
    out = np.zeros((total, 2), np.float32)
    gen = engine.generator
    if gen is not None and live_timing:
        gen.wait_ready()  # the clock starts with a loaded model, as a set would
    pos = 0
    base = engine.mixer.frame  # the engine's frames are absolute: a render may continue another
    t0 = time.monotonic()
    while pos < total:
        end = min(total, pos + blocksize)
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
            engine.mixer.process(out[pos:end])
            pos = end
            if progress is not None:
                progress(end, total)
    return out


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    fmt, subtype = check_output_path(path)
    sf.write(str(path), audio, sample_rate, format=fmt, subtype=subtype)


class Recorder:
    """Writes the live output to a sound file: the audio thread copies each block into the mixer's
    tap ring (never blocking: a block that does not fit is dropped and counted in `overflows`), and
    a writer thread drains the ring into the file. `frames`: stop after that many (-1: at close)."""

    def __init__(self, path: Path, mixer: Mixer, frames: int = -1) -> None:
        fmt, subtype = check_output_path(path)
        if mixer.tap_owner is not None:
            raise ConfigError(f"already recording to {getattr(mixer.tap_owner, 'path', '?')}: stop that first")
        self.path = path
        self.mixer = mixer
        self._file = sf.SoundFile(str(path), "w", mixer.sr, 2, subtype, format=fmt)
        self._overflows0 = mixer.tap_overflows
        if not mixer.tap_start(frames):
            self._file.close()
            raise ConfigError("the audio thread's command queue is full (is the audio stream running?): "
                              "try recording again")
        mixer.tap_owner = self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endless-recorder", daemon=True)
        self.frames_written = 0
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain()
            time.sleep(0.05)
        self._drain()

    def _drain(self) -> None:
        while len(data := self.mixer.tap_read()):
            self._file.write(data)
            self.frames_written += len(data)

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
        self._file.close()
        m.tap_owner = None
        if self.overflows:
            log.warning("recorder dropped %d blocks (the disk could not keep up)", self.overflows)


class RecordSwitch:
    """The record action (`/endless/record`, a MIDI button): start and stop takes of the live output
    in `folder`. Called holding the engine lock; a take started before the stream taps from its
    first frame."""

    def __init__(self, folder: Path, mixer: Mixer) -> None:
        self.folder = folder
        self.mixer = mixer
        self.rec: Recorder | None = None

    @property
    def active(self) -> bool:
        return self.rec is not None

    def __call__(self, start: bool, name: str | None) -> str:
        if start:
            if self.rec is not None:
                raise ConfigError(f"already recording to {self.rec.path}: send /endless/record 0 first")
            path = self.folder / (name or time.strftime("endless-%Y%m%d-%H%M%S.wav"))
            if path.exists():
                raise ConfigError(f"{path} exists: give another name")
            self.rec = Recorder(path, self.mixer)
            return str(path)
        if self.rec is None:
            raise ConfigError("not recording: send /endless/record 1 [name] first")
        rec, self.rec = self.rec, None
        rec.close()
        return str(rec.path)

    def close(self) -> None:
        """The end of the set: finish a take still running."""
        if self.rec is not None:
            self(False, None)
