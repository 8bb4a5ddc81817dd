"""Post-processing of every generated clip, in the worker: finite check, fades, loudness
normalisation (ITU-R BS.1770 via pyloudnorm) under a true-peak ceiling, resampling to the device rate.

>>> from instrument.clips import ClipInfo
>>> x = (np.random.default_rng(0).standard_normal((44100 * 2, 2)) * 0.1).astype(np.float32)
>>> y, lufs = postprocess(Clip(x, 44100, ClipInfo("generator", "rain", 1, "tiny", 0.0)), 48000)
>>> y.audio.shape, y.sample_rate, round(lufs, 1)
((96000, 2), 48000, -20.0)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyloudnorm

from instrument.clips import Clip, resample

__all__ = ["DEFAULT_LUFS", "DEFAULT_TRUE_PEAK_DB", "FADE_SECONDS", "NonFiniteAudio", "postprocess", "true_peak"]

DEFAULT_LUFS = -20.0
DEFAULT_TRUE_PEAK_DB = -1.0
FADE_SECONDS = 0.01


class NonFiniteAudio(ValueError):
    """The model returned NaN or Inf samples: the clip is dropped, never played."""


def true_peak(x: np.ndarray, sample_rate: int) -> float:
    """Peak of the 4x oversampled signal (BS.1770-4 annex 2 style), linear."""
    up = resample(x, sample_rate, sample_rate * 4)
    return float(max(np.abs(up).max(), np.abs(x).max()))


def postprocess(clip: Clip, out_rate: int, lufs: float = DEFAULT_LUFS,
                true_peak_db: float = DEFAULT_TRUE_PEAK_DB) -> tuple[Clip, float]:
    """A generated clip at the model's rate -> (the clip as it plays: faded in and out, at
    `out_rate`, normalised to `lufs` under the true-peak ceiling; its loudness in LUFS)."""
    x = clip.audio.astype(np.float64)  # a copy: the fades and gains below work in place
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise NonFiniteAudio(f"{bad} of {x.size} samples are NaN or Inf")
    fade = min(int(FADE_SECONDS * clip.sample_rate), len(x) // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)[:, None]
        x[:fade] *= ramp
        x[len(x) - fade:] *= ramp[::-1]
    x = resample(x, clip.sample_rate, out_rate).astype(np.float64)
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
    return replace(clip, audio=np.ascontiguousarray(x, dtype=np.float32), sample_rate=out_rate), float(level)
