"""The worker's post-processing takes a generated `Clip` at the model's rate and gives back the one
clip type at the device rate: same info, faded, loudness-normalised, under the true-peak ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from instrument.clips import Clip, ClipInfo
from instrument.generator.post import FADE_SECONDS, NonFiniteAudio, postprocess, true_peak

INFO = ClipInfo("generator", "rain", 3, "tiny", 0.25, steps=4, guidance=4.5)


def noise(seconds: float, rate: int = 44100, level: float = 0.1) -> Clip:
    x = (np.random.default_rng(0).standard_normal((int(seconds * rate), 2)) * level).astype(np.float32)
    return Clip(x, rate, INFO)


@pytest.mark.parametrize("out_rate", [44100, 48000])
def test_postprocess_gives_a_clip_at_the_device_rate(out_rate: int) -> None:
    src = noise(2.0)
    out, lufs = postprocess(src, out_rate, lufs=-20.0, true_peak_db=-1.0)
    assert isinstance(out, Clip) and out.sample_rate == out_rate and out.info == INFO and not out.cut
    assert out.audio.shape == (2 * out_rate, 2) and out.audio.dtype == np.float32 and out.audio.flags.c_contiguous
    assert lufs == pytest.approx(-20.0, abs=1e-6)
    assert true_peak(out.audio, out_rate) <= 10 ** (-1 / 20) + 1e-6
    fade = int(FADE_SECONDS * out_rate)
    assert np.abs(out.audio[[0, -1]]).max() < 1e-3  # faded in and out (0 before resampling)
    assert np.abs(out.audio[fade:-fade]).max() > 0.01
    assert np.abs(src.audio).max() > 0.1  # the input clip is left as it was


def test_postprocess_drops_non_finite_audio() -> None:
    x = noise(1.0).audio.copy()
    x[100, 1] = np.nan
    with pytest.raises(NonFiniteAudio, match="1 of 88200 samples"):
        postprocess(Clip(x, 44100, INFO), 44100)


def test_silence_stays_silent() -> None:
    out, lufs = postprocess(Clip(np.zeros((44100, 2), np.float32), 44100, INFO), 44100)
    assert lufs == -np.inf and not out.audio.any()
