"""Clips: stereo conversion, resampling, and loading real files written with soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from instrument.clips import MIN_CLIP_SECONDS, Clip, ClipInfo, load_clip, resample, to_stereo
from instrument.errors import ClipError, EndlessError


def _sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono * (1 - 0.1 * c) for c in range(channels)], 1).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spec)])


# ---- to_stereo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(100,), (100, 1)])
def test_to_stereo_duplicates_mono(shape: tuple[int, ...]) -> None:
    x = np.linspace(-1, 1, 100).reshape(shape)
    y = to_stereo(x)
    assert y.shape == (100, 2) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y[:, 0], y[:, 1])
    np.testing.assert_allclose(y[:, 0], np.linspace(-1, 1, 100), atol=1e-7)


def test_to_stereo_passes_stereo_through() -> None:
    x = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    assert to_stereo(x) is x  # already float32 C-contiguous: no copy
    f = np.asfortranarray(x.astype(np.float64))
    y = to_stereo(f)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, x, atol=1e-7)


def test_to_stereo_keeps_first_two_of_four_channels() -> None:
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    y = to_stereo(x)
    assert y.shape == (10, 2) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x[:, :2])


@pytest.mark.parametrize("shape", [(10, 0), (2, 3, 4), ()])
def test_to_stereo_rejects_other_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        to_stereo(np.zeros(shape))


# ---- resample ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [48000, 12345, 4801, 7])
def test_resample_length(n: int) -> None:
    x = np.zeros((n, 2), np.float32)
    y = resample(x, 48000, 44100)
    assert abs(y.shape[0] - round(n * 44100 / 48000)) <= 1
    assert y.shape[1] == 2 and y.dtype == np.float32 and y.flags.c_contiguous


def test_resample_keeps_a_sine_frequency() -> None:
    x = _sine(1000.0, 48000, 1.0, channels=2)
    y = resample(x, 48000, 44100)
    assert abs(y.shape[0] - 44100) <= 1
    for ch in range(2):
        assert abs(_peak_hz(y[:, ch], 44100) - 1000.0) <= 1.0
    # amplitude survives too (HQ passband is flat), away from the edges
    mid = y[4410:-4410, 0]
    assert abs(float(np.abs(mid).max()) - 0.5) < 0.01


def test_resample_identity_and_empty() -> None:
    x = _sine(440.0, 44100, 0.1, channels=2)
    y = resample(x, 44100, 44100)
    np.testing.assert_array_equal(y, x)
    z = resample(x.astype(np.float64), 44100, 44100)
    assert z.dtype == np.float32 and z.flags.c_contiguous
    e = resample(np.zeros((0, 2), np.float32), 48000, 44100)
    assert e.shape == (0, 2)
    with pytest.raises(ValueError):
        resample(x, 0, 44100)
    with pytest.raises(ValueError):
        resample(x[:, 0], 48000, 44100)


# ---- Clip --------------------------------------------------------------------------------------


def test_clip_properties_and_validation() -> None:
    info = ClipInfo(source="generator", prompt="rain", seed=3, model="tiny", gen_seconds=1.5)
    clip = Clip(np.zeros((22050, 2), np.float32), 44100, info)
    assert clip.frames == 22050 and clip.seconds == 0.5
    with pytest.raises(ValueError):
        Clip(np.zeros((10, 1), np.float32), 44100, info)
    with pytest.raises(ValueError):
        Clip(np.zeros((10, 2), np.float64), 44100, info)
    with pytest.raises(ValueError):
        Clip(np.zeros((2, 10), np.float32).T, 44100, info)  # not C-contiguous
    with pytest.raises(ValueError):
        Clip(np.zeros((10, 2), np.float32), 0, info)


# ---- load_clip ---------------------------------------------------------------------------------


def test_load_stereo_wav_as_is(tmp_path: Path) -> None:
    x = _sine(440.0, 44100, 1.0, channels=2)
    p = tmp_path / "a.wav"
    sf.write(p, x, 44100, subtype="FLOAT")
    clip = load_clip(p, 44100)
    np.testing.assert_array_equal(clip.audio, x)
    assert clip.sample_rate == 44100 and clip.audio.flags.c_contiguous
    assert clip.info == ClipInfo(source=str(p), prompt="", seed=None, model="file", gen_seconds=0.0)
    assert not clip.audio.flags.writeable  # clips are shared: in-place edits must fail


@pytest.mark.parametrize("channels", [1, 4])
def test_load_mono_and_multichannel_flac(tmp_path: Path, channels: int) -> None:
    x = _sine(440.0, 44100, 0.6, channels=channels)
    p = tmp_path / "m.flac"
    sf.write(p, x, 44100, subtype="PCM_24")
    clip = load_clip(p, 44100)
    assert clip.audio.shape == (x.shape[0], 2)
    np.testing.assert_allclose(clip.audio, to_stereo(x), atol=1e-6)


def test_load_resamples_to_the_device_rate(tmp_path: Path) -> None:
    p = tmp_path / "r.wav"
    sf.write(p, _sine(1000.0, 48000, 1.0), 48000)
    clip = load_clip(p, 44100)
    assert clip.sample_rate == 44100 and abs(clip.frames - 44100) <= 1
    assert clip.audio.dtype == np.float32 and clip.audio.flags.c_contiguous
    assert abs(_peak_hz(clip.audio[:, 0], 44100) - 1000.0) <= 1.0


def _one_line_error(path: Path, rate: int = 44100) -> str:
    with pytest.raises(ClipError) as info:
        load_clip(path, rate)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert ": " in msg  # "<file>: what is wrong: the fix"
    assert isinstance(info.value, EndlessError)
    return msg


def test_load_missing_file(tmp_path: Path) -> None:
    msg = _one_line_error(tmp_path / "nope.wav")
    assert "no such file" in msg


def test_load_garbage_bytes(tmp_path: Path) -> None:
    p = tmp_path / "garbage.wav"
    p.write_bytes(b"this is not audio\n" * 200)
    msg = _one_line_error(p)
    assert "cannot read" in msg and "WAV" in msg and "convert" in msg


def test_load_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.flac"
    p.write_bytes(b"")
    assert "cannot read" in _one_line_error(p)


def test_load_folder(tmp_path: Path) -> None:
    d = tmp_path / "dir.wav"
    d.mkdir()
    assert "folder" in _one_line_error(d)


def test_load_too_short(tmp_path: Path) -> None:
    p = tmp_path / "short.wav"
    sf.write(p, _sine(440.0, 44100, 0.2), 44100)
    msg = _one_line_error(p)
    assert "shorter" in msg and str(MIN_CLIP_SECONDS) in msg
    ok = tmp_path / "ok.wav"
    sf.write(ok, _sine(440.0, 44100, MIN_CLIP_SECONDS), 44100)
    assert load_clip(ok, 44100).frames == int(44100 * MIN_CLIP_SECONDS)


def test_load_zero_frames(tmp_path: Path) -> None:
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros((0, 2), np.float32), 44100)
    assert "shorter" in _one_line_error(p)


def test_load_rejects_non_finite(tmp_path: Path) -> None:
    x = _sine(440.0, 44100, 1.0, channels=2)
    x[100, 0] = np.nan
    x[200, 1] = np.inf
    p = tmp_path / "nan.wav"
    sf.write(p, x, 44100, subtype="FLOAT")
    msg = _one_line_error(p)
    assert "2 of 88200" in msg and "NaN" in msg
