"""Demo clips: a few synthesised stereo textures, so the instrument plays with no model and no files.

One subfolder per slot (`1-drone`, `2-rain`, `3-bells`, `4-wind`, then the kinds repeat), three
clips each, 16-bit WAV, peak -6 dBFS, 20 ms fades at both ends. Pure numpy, deterministic from
`seed`. A `FolderSource` in "auto" mode on the folder gives each slot its own texture.

>>> paths = write_demo_clips(Path("clips"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from instrument.clips import MIN_CLIP_SECONDS

__all__ = ["CLIPS_PER_SLOT", "KINDS", "PEAK_DBFS", "write_demo_clips"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.floating[Any]]  # time axes and spectra, float64 in practice
Synth = Callable[[np.random.Generator, int, int], F32]  # (rng, frames, rate) -> (frames, 2)

PEAK_DBFS = -6.0
FADE_SECONDS = 0.020
CLIPS_PER_SLOT = 3
_WAV_HEADER_BYTES = 44  # libsndfile's plain RIFF header for 16-bit PCM WAV
_HOP = 1024  # noise-spectrogram hop for time-varying filters (23 ms at 44.1 kHz)
TAU = 2 * np.pi

# Speed: float32 sin/exp/FFT are several times faster than float64 in numpy, so signals are
# float32; phases are wrapped in float64 first, so long clips keep their pitch exact.


def _sine(t: F64, freq: float, phase: float = 0.0) -> F32:
    """sin(2 pi (freq t + phase)) in float32, phase wrapped in float64 for accuracy."""
    x = t * freq + phase
    x -= np.floor(x)
    return np.sin((TAU * x).astype(np.float32))


def _lfo(rng: np.random.Generator, t: F64, lo_hz: float, hi_hz: float, parts: int = 3) -> F32:
    """A smooth random wobble in [0, 1]: a few slow sines, evaluated coarsely and interpolated."""
    coarse = t[::256] if t.size > 512 else t
    out = np.zeros_like(coarse)
    for _ in range(parts):
        out += np.sin(TAU * rng.uniform(lo_hz, hi_hz) * coarse + rng.uniform(0, TAU))
    return (0.5 + 0.5 * np.interp(t, coarse, out) / parts).astype(np.float32)


def _log_band(f: F64, center: float, octaves: float) -> F64:
    """A Gaussian bump over log-frequency: 1 at `center`, falling by e^-1/2 `octaves` away."""
    return np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / center) / octaves) ** 2)


def _band_noise(rng: np.random.Generator, frames: int, weight: F64) -> F32:
    """Gaussian noise shaped by `weight`, a magnitude over np.fft.rfftfreq(frames) bins."""
    bins = weight.size
    spec = rng.standard_normal(bins, dtype=np.float32) + 1j * rng.standard_normal(bins, dtype=np.float32)
    spec *= weight.astype(np.float32)
    spec[0] = 0.0
    out: F32 = np.fft.irfft(spec.astype(np.complex64), frames).astype(np.float32)
    return out


def _moving_noise(rng: np.random.Generator, frames: int, weights: F32) -> F32:
    """Noise whose spectrum changes over time: `weights` is (blocks, _HOP + 1), one row per hop.

    Random spectra, inverse FFT, sine window, 50% overlap-add: the squared windows sum to one, so
    uncorrelated blocks keep a constant power.
    """
    blocks, bins = weights.shape
    n = 2 * _HOP
    spec = rng.standard_normal((blocks, bins), dtype=np.float32) * 1j
    spec += rng.standard_normal((blocks, bins), dtype=np.float32)
    spec *= weights
    grains = np.fft.irfft(spec.astype(np.complex64), n, axis=1)
    grains *= np.sin(np.pi * (np.arange(n) + 0.5) / n).astype(np.float32)
    out = np.zeros((blocks + 1, _HOP), np.float32)
    out[:-1] += grains[:, :_HOP]
    out[1:] += grains[:, _HOP:]
    return out.reshape(-1)[_HOP : _HOP + frames]


def _drone(rng: np.random.Generator, frames: int, rate: int) -> F32:
    """Stacked harmonics (octaves, fifths, a major third) that breathe and beat slowly."""
    t = np.arange(frames) / rate
    root = float(rng.choice([98.0, 110.0, 130.81, 146.83]))  # G2, A2, C3, D3
    out = np.zeros((frames, 2), np.float32)
    for ratio, amp in ((1.0, 1.0), (2.0, 0.5), (3.0, 0.3), (4.0, 0.18), (5.0, 0.1), (6.0, 0.08)):
        env = amp * (0.35 + 0.65 * _lfo(rng, t, 0.03, 0.15, parts=2))
        for ch, detune in enumerate((-1.0, 1.0)):
            beat = detune * rng.uniform(0.05, 0.25)  # L and R a fraction of a hertz apart: width
            out[:, ch] += env * _sine(t, root * ratio + beat, rng.uniform())
    return out


def _rain(rng: np.random.Generator, frames: int, rate: int) -> F32:
    """A bed of bright filtered noise with short pitched droplets scattered over the stereo field."""
    f = np.fft.rfftfreq(frames, 1.0 / rate)
    common = _band_noise(rng, frames, _log_band(f, rng.uniform(2500, 4000), 1.3))
    own = _log_band(f, 3000.0, 1.3)
    out = np.stack([0.6 * common + 0.8 * _band_noise(rng, frames, own) for _ in range(2)], 1)
    t = np.arange(frames) / rate
    out *= (0.5 / np.abs(out).max()) * (0.8 + 0.2 * _lfo(rng, t, 0.05, 0.2))[:, None]
    drops = rng.poisson(rng.uniform(15, 30) * frames / rate)
    length = int(0.04 * rate)
    tt = np.arange(length) / rate
    for start in rng.integers(0, max(1, frames - length), drops):
        n = min(length, frames - start)
        decay = rng.uniform(0.004, 0.012)
        blip = rng.uniform(0.1, 0.5) * np.exp(-tt[:n] / decay) * _sine(tt[:n], rng.uniform(1800, 5500))
        pan = rng.uniform(0, np.pi / 2)
        out[start : start + n, 0] += np.cos(pan) * blip
        out[start : start + n, 1] += np.sin(pan) * blip
    return out


def _bells(rng: np.random.Generator, frames: int, rate: int) -> F32:
    """Pentatonic bell strikes: inharmonic partials, the higher ones dying sooner, panned apart."""
    scale = np.array([261.63, 293.66, 329.63, 392.0, 440.0, 523.25, 587.33, 659.26])  # C major pentatonic
    partials = ((1.0, 1.0), (2.0, 0.45), (2.76, 0.35), (5.40, 0.15), (8.93, 0.08))  # bar/bell modes
    out = np.zeros((frames, 2), np.float32)
    attack = int(0.002 * rate)
    pos = int(rng.uniform(0.0, 0.6) * rate)
    while pos < frames:
        base = float(rng.choice(scale)) * (2.0 if rng.uniform() < 0.3 else 1.0)
        tau = rng.uniform(1.5, 3.0)  # seconds, for the fundamental
        n = min(frames - pos, int(4 * tau * rate))
        tt = np.arange(n) / rate
        tt32 = tt.astype(np.float32)
        tone = np.zeros(n, np.float32)
        for ratio, amp in partials:
            tone += amp * np.exp(tt32 * np.float32(-(ratio**0.7) / tau)) * _sine(tt, base * ratio)
        tone[:attack] *= np.linspace(0.0, 1.0, min(attack, n), dtype=np.float32)
        pan = rng.uniform(0.15, 1.4)
        gain = rng.uniform(0.5, 1.0)
        out[pos : pos + n, 0] += np.float32(gain * np.cos(pan)) * tone
        out[pos : pos + n, 1] += np.float32(gain * np.sin(pan)) * tone
        pos += int(rng.uniform(0.8, 2.6) * rate)
    return out


def _wind(rng: np.random.Generator, frames: int, rate: int) -> F32:
    """Bands of noise whose levels and centres drift: gusts that rise, whistle and fall away."""
    blocks = frames // _HOP + 2
    tb = np.arange(blocks) * (_HOP / rate)  # block times
    f = np.fft.rfftfreq(2 * _HOP, 1.0 / rate)
    gust = 0.1 + 0.9 * _lfo(rng, tb, 0.04, 0.12, parts=2).astype(np.float64) ** 2
    low = rng.uniform(0.8, 1.25)
    weights = np.zeros((blocks, f.size))
    for center in (180.0 * low, 420.0 * low, 900.0 * low, 1900.0 * low):
        level = gust * (0.15 + 0.85 * _lfo(rng, tb, 0.05, 0.25).astype(np.float64) ** 2)
        drift = center * 2 ** (0.4 * (_lfo(rng, tb, 0.02, 0.08).astype(np.float64) - 0.5))  # +-0.2 octave
        bump = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0)[None, :] / drift[:, None]) / 0.25) ** 2)
        weights += level[:, None] * bump * np.sqrt(180.0 / center)  # tilt: lower bands louder
    lag = int(rng.integers(2, 12))  # the right channel hears each gust a few blocks later
    w32 = weights.astype(np.float32)
    left = _moving_noise(rng, frames, w32)
    right = _moving_noise(rng, frames, np.concatenate([np.repeat(w32[:1], lag, 0), w32[:-lag]]))
    return np.stack([left, right], 1)


KINDS: tuple[tuple[str, Synth], ...] = (
    ("drone", _drone),
    ("rain", _rain),
    ("bells", _bells),
    ("wind", _wind),
)


def _finish(x: F32, rate: int) -> F32:
    """20 ms fades at both ends, then peak-normalised to PEAK_DBFS."""
    fade = min(int(FADE_SECONDS * rate), x.shape[0] // 2)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)[:, None]
    x[:fade] *= ramp
    x[x.shape[0] - fade :] *= ramp[::-1]
    peak = float(np.abs(x).max())
    if peak > 0:
        x *= np.float32(10 ** (PEAK_DBFS / 20) / peak)
    return x


def _is_complete(path: Path, frames: int, rate: int) -> bool:
    """True when `path` already holds this clip's shape: 16-bit stereo WAV of the right size."""
    try:
        if path.stat().st_size != _WAV_HEADER_BYTES + frames * 2 * 2:
            return False
        info = sf.info(str(path))
    except (OSError, RuntimeError, sf.SoundFileError):
        return False
    return bool(info.frames == frames and info.channels == 2 and info.samplerate == rate)


def write_demo_clips(
    dir: Path, slots: int = 4, seconds: float = 12.0, sample_rate: int = 44100, seed: int = 0
) -> list[Path]:
    """Write CLIPS_PER_SLOT demo clips per slot under `dir`, one subfolder per slot; return all paths.

    Files already there with the right size are kept, so calling it again is cheap; delete the
    folder to regenerate with another seed or length. Each file is written under a temporary
    name and renamed, so an interrupted run never leaves a half-written clip behind.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    if seconds < MIN_CLIP_SECONDS:
        raise ValueError(f"seconds must be at least {MIN_CLIP_SECONDS}, got {seconds}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    frames = int(round(seconds * sample_rate))
    paths: list[Path] = []
    for slot in range(slots):
        kind, synth = KINDS[slot % len(KINDS)]
        folder = Path(dir) / f"{slot + 1}-{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(CLIPS_PER_SLOT):
            path = folder / f"{kind}-{j + 1}.wav"
            paths.append(path)
            if _is_complete(path, frames, sample_rate):
                continue
            audio = _finish(synth(np.random.default_rng((seed, slot, j)), frames, sample_rate), sample_rate)
            tmp = path.with_name(f".{path.name}.part")
            sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
            os.replace(tmp, path)
    return paths
