"""Post-processing of every generated clip, in the worker: finite check, trim and fades,
loudness normalisation (ITU-R BS.1770 via pyloudnorm) under a true-peak ceiling, resampling.

>>> import numpy as np
>>> x = (np.random.default_rng(0).standard_normal((2, 44100 * 3)) * 0.1).astype(np.float32)
>>> y, lufs = postprocess(x, 44100, 44100, seconds=2.0)
>>> y.shape, round(lufs, 1)
((88200, 2), -20.0)
"""

from __future__ import annotations

import numpy as np
import pyloudnorm
import soxr

DEFAULT_LUFS = -20.0
DEFAULT_TRUE_PEAK_DB = -1.0
FADE_SECONDS = 0.01


class NonFiniteAudio(ValueError):
    """The model returned NaN or Inf samples: the clip is dropped, never played."""


def true_peak(x: np.ndarray, sample_rate: int) -> float:
    """Peak of the 4x oversampled signal (BS.1770-4 annex 2 style), linear."""
    up = soxr.resample(x, sample_rate, sample_rate * 4, quality="HQ")
    return float(max(np.abs(up).max(), np.abs(x).max()))


def postprocess(audio: np.ndarray, model_rate: int, out_rate: int, seconds: float,
                lufs: float = DEFAULT_LUFS, true_peak_db: float = DEFAULT_TRUE_PEAK_DB) -> tuple[np.ndarray, float]:
    """(channels, samples) model output -> ((frames, 2) float32 at out_rate, loudness in LUFS)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise NonFiniteAudio(f"{bad} of {x.size} samples are NaN or Inf")
    x = x.T  # (samples, channels)
    if x.shape[1] == 1:
        x = np.repeat(x, 2, axis=1)
    x = x[: int(round(seconds * model_rate)), :2]
    fade = min(int(FADE_SECONDS * model_rate), len(x) // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)[:, None]
        x[:fade] *= ramp
        x[len(x) - fade:] *= ramp[::-1]
    if out_rate != model_rate:
        x = soxr.resample(x, model_rate, out_rate, quality="HQ")
    meter = pyloudnorm.Meter(out_rate)
    measured = float(meter.integrated_loudness(x)) if len(x) > int(0.4 * out_rate) else -np.inf
    if np.isfinite(measured):
        x = x * 10 ** ((lufs - measured) / 20)
        level = lufs
    else:
        level = measured  # silence stays silence
    ceiling = 10 ** (true_peak_db / 20)
    tp = true_peak(x, out_rate)
    if tp > ceiling:
        x = x * (ceiling / tp)
        level += 20 * np.log10(ceiling / tp)
    return np.ascontiguousarray(x, dtype=np.float32), float(level)
