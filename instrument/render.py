"""Offline rendering and recording: the same mixer code as live, without a device.

`render()` runs the mixer block by block as fast as it can, applying script events at their
exact frames and topping up clip queues between blocks. `Recorder` taps the live output through a
preallocated frame ring and writes WAV/FLAC from its own thread, never from the callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from instrument.engine import Engine
from instrument.errors import ConfigError
from instrument.rt import FrameRing

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
    """Writes what the callback hands to `tap()` into a sound file from a writer thread."""

    def __init__(self, path: Path, sample_rate: int, ring_seconds: float = 10.0) -> None:
        fmt, subtype = check_output_path(path)
        self.path = path
        self.ring = FrameRing(int(ring_seconds * sample_rate))
        self._file = sf.SoundFile(str(path), "w", sample_rate, 2, subtype, format=fmt)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endless-recorder", daemon=True)
        self.frames_written = 0
        self._thread.start()

    def tap(self, block: np.ndarray) -> None:
        """Audio thread: copy a block into the ring (never blocks; overflows are counted)."""
        self.ring.write(block)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain()
            time.sleep(0.05)
        self._drain()

    def _drain(self) -> None:
        data = self.ring.read()
        if len(data):
            self._file.write(data)
            self.frames_written += len(data)

    @property
    def overflows(self) -> int:
        return self.ring.overflows

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._file.close()
        if self.overflows:
            log.warning("recorder dropped %d blocks (the disk could not keep up)", self.overflows)


class RecordSwitch:
    """OSC `/endless/record`: start and stop a Recorder on the running Output (holding engine.lock)."""

    def __init__(self, folder: Path, sample_rate: int) -> None:
        self.folder = folder
        self.sample_rate = sample_rate
        self.out: Any = None  # the audio Output, once play() has opened it
        self.rec: Recorder | None = None

    def __call__(self, start: bool, name: str | None) -> str:
        if self.out is None:
            raise ConfigError("the audio output is not running yet")
        if start:
            if self.rec is not None:
                raise ConfigError(f"already recording to {self.rec.path}: send /endless/record 0 first")
            path = self.folder / (name or time.strftime("endless-%Y%m%d-%H%M%S.wav"))
            if path.exists():
                raise ConfigError(f"{path} exists: give another name")
            self.rec = Recorder(path, self.sample_rate)
            self.out.recorder = self.rec  # one reference: the callback reads it once per block
            return str(path)
        if self.rec is None:
            raise ConfigError("not recording: send /endless/record 1 [name] first")
        rec, self.rec = self.rec, None
        self.out.recorder = None
        rec.close()  # a block the callback is still tapping lands in the ring, never in a closed file
        return str(rec.path)
