"""FolderSource on real folders of small audio files, and the demo clips."""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from instrument.clips import Clip
from instrument.demo import CLIPS_PER_SLOT, KINDS, PEAK_DBFS, write_demo_clips
from instrument.errors import ClipError
from instrument.sources import ClipSource, FolderSource, audio_extensions, find_audio_files

RATE = 8000  # small files keep these tests fast


def _write(path: Path, seconds: float = 0.6, rate: int = RATE, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    sf.write(path, 0.1 * rng.standard_normal((int(seconds * rate), channels)), rate)
    return path


def _names(paths: tuple[Path, ...] | list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def _draw(src: FolderSource, slot: int, n: int, root: Path) -> list[str]:
    out = []
    for _ in range(n):
        clip = src.next_clip(slot)
        assert isinstance(clip, Clip)
        out.append(Path(clip.info.source).relative_to(root).as_posix())
    return out


# ---- discovery ---------------------------------------------------------------------------------


def test_extensions_come_from_soundfile() -> None:
    exts = audio_extensions()
    assert {".wav", ".flac", ".ogg", ".aiff"} <= exts
    assert all(e.startswith(".") and e == e.lower() for e in exts)
    assert ".raw" not in exts


def test_find_audio_files_natural_order_case_and_hidden(tmp_path: Path) -> None:
    for name in ["c10.wav", "c2.WAV", "c1.flac", "B.ogg", "a/x.wav", ".hidden.wav", "._c3.wav", "notes.txt"]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "y.wav").write_bytes(b"x")
    assert _names(find_audio_files(tmp_path), tmp_path) == [
        "a/x.wav",
        "B.ogg",
        "c1.flac",
        "c2.WAV",
        "c10.wav",
    ]


# ---- assignment --------------------------------------------------------------------------------


def test_round_robin(tmp_path: Path) -> None:
    for i in range(7):
        _write(tmp_path / f"f{i}.wav")
    src = FolderSource(tmp_path, slots=3, sample_rate=RATE, assign="round-robin")
    assert src.assign == "round-robin"
    assert _names(src.files(0), tmp_path) == ["f0.wav", "f3.wav", "f6.wav"]
    assert _names(src.files(1), tmp_path) == ["f1.wav", "f4.wav"]
    assert _names(src.files(2), tmp_path) == ["f2.wav", "f5.wav"]
    assert isinstance(src, ClipSource)


def test_round_robin_spreads_nested_files_too(tmp_path: Path) -> None:
    for name in ["a/1.wav", "a/2.wav", "b/3.wav"]:
        _write(tmp_path / name)
    src = FolderSource(tmp_path, slots=2, sample_rate=RATE, assign="round-robin")
    assert _names(src.files(0), tmp_path) == ["a/1.wav", "b/3.wav"]
    assert _names(src.files(1), tmp_path) == ["a/2.wav"]


def test_subfolder(tmp_path: Path) -> None:
    for name in ["a/x.wav", "a/y.wav", "b/z.wav", "c/deep/w.wav", "r1.wav", "r2.wav", "empty/readme.txt"]:
        _write(tmp_path / name) if name.endswith(".wav") else _touch(tmp_path / name)
    src = FolderSource(tmp_path, slots=4, sample_rate=RATE, assign="subfolder")
    assert src.assign == "subfolder"
    assert _names(src.files(0), tmp_path) == ["a/x.wav", "a/y.wav", "r1.wav"]
    assert _names(src.files(1), tmp_path) == ["b/z.wav", "r2.wav"]
    assert _names(src.files(2), tmp_path) == ["c/deep/w.wav"]
    # slot 4 has nothing of its own: it borrows every file, rotated by its index
    everything = _names(src.all_files, tmp_path)
    assert _names(src.files(3), tmp_path) == everything[3:] + everything[:3]


def _touch(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("not audio")


def test_subfolders_wrap_and_sort_naturally(tmp_path: Path) -> None:
    for k in [1, 2, 3, 10]:
        _write(tmp_path / f"{k}-voice" / "a.wav")
    src = FolderSource(tmp_path, slots=2, sample_rate=RATE, assign="subfolder")
    assert _names(src.files(0), tmp_path) == ["1-voice/a.wav", "3-voice/a.wav"]
    assert _names(src.files(1), tmp_path) == ["2-voice/a.wav", "10-voice/a.wav"]


def test_auto_detection(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for i in range(3):
        _write(flat / f"{i}.wav")
    _touch(flat / "docs" / "readme.txt")  # a subfolder without audio does not count
    assert FolderSource(flat, slots=2, sample_rate=RATE).assign == "round-robin"
    nested = tmp_path / "nested"
    _write(nested / "loose.wav")
    _write(nested / "voice" / "a.wav")
    src = FolderSource(nested, slots=2, sample_rate=RATE)
    assert src.assign == "subfolder"
    assert _names(src.files(0), nested) == ["voice/a.wav", "loose.wav"]


# ---- playback order ----------------------------------------------------------------------------


def test_cycles_forever_through_shuffled_permutations(tmp_path: Path) -> None:
    names = [f"{i}.wav" for i in range(4)]
    for n in names:
        _write(tmp_path / n)
    src = FolderSource(tmp_path, slots=1, sample_rate=RATE)
    seq = _draw(src, 0, 40, tmp_path)
    cycles = [seq[i : i + 4] for i in range(0, 40, 4)]
    assert all(sorted(c) == names for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # reshuffled per cycle
    assert all(a != b for a, b in zip(seq, seq[1:], strict=False))  # no clip twice in a row


def test_deterministic_whatever_the_call_order(tmp_path: Path) -> None:
    for k in range(3):
        for i in range(3):
            _write(tmp_path / f"v{k}" / f"{i}.wav")
    a = FolderSource(tmp_path, slots=3, sample_rate=RATE, seed=5)
    b = FolderSource(tmp_path, slots=3, sample_rate=RATE, seed=5)
    seq_a = {s: _draw(a, s, 10, tmp_path) for s in range(3)}  # slot by slot
    seq_b: dict[int, list[str]] = {s: [] for s in range(3)}
    order = np.random.default_rng(1).integers(0, 3, 200)  # interleaved at random
    for s in order:
        if len(seq_b[int(s)]) < 10:
            seq_b[int(s)] += _draw(b, int(s), 1, tmp_path)
    assert seq_a == seq_b
    other = FolderSource(tmp_path, slots=3, sample_rate=RATE, seed=6)
    assert {s: _draw(other, s, 10, tmp_path) for s in range(3)} != seq_a


def test_clips_are_stereo_at_the_source_rate(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav", rate=8000, channels=1)
    src = FolderSource(tmp_path, slots=1, sample_rate=16000)
    clip = src.next_clip(0)
    assert clip is not None
    assert clip.sample_rate == 16000 and clip.audio.shape == (9600, 2) and clip.audio.dtype == np.float32


def test_cache_reuses_and_evicts(tmp_path: Path) -> None:
    _write(tmp_path / "only.wav")
    cached = FolderSource(tmp_path, slots=1, sample_rate=RATE)
    assert cached.next_clip(0) is cached.next_clip(0)
    uncached = FolderSource(tmp_path, slots=1, sample_rate=RATE, cache_clips=0)
    first, second = uncached.next_clip(0), uncached.next_clip(0)
    assert first is not second and first is not None and second is not None
    np.testing.assert_array_equal(first.audio, second.audio)


# ---- broken files and errors -------------------------------------------------------------------


def test_skips_a_broken_file_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        _write(tmp_path / f"{i}.wav")
    (tmp_path / "1b.wav").write_bytes(b"garbage" * 100)
    _write(tmp_path / "1c.wav", seconds=0.1)  # too short
    src = FolderSource(tmp_path, slots=1, sample_rate=RATE)
    with caplog.at_level(logging.WARNING, logger="instrument.sources"):
        seq = _draw(src, 0, 30, tmp_path)
    assert set(seq) == {"0.wav", "1.wav", "2.wav"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("1b.wav" in w and "cannot read" in w for w in warnings)
    assert any("1c.wav" in w and "shorter" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_slot_with_only_broken_files_plays_the_rest(tmp_path: Path) -> None:
    _write(tmp_path / "good" / "a.wav")
    (tmp_path / "bad" / "b.wav").parent.mkdir()
    (tmp_path / "bad" / "b.wav").write_bytes(b"garbage" * 100)
    src = FolderSource(tmp_path, slots=2, sample_rate=RATE)
    assert src.assign == "subfolder"
    assert _draw(src, 1, 3, tmp_path) == ["good/a.wav"] * 3


def test_all_files_broken_raises(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"{i}.wav").write_bytes(b"garbage" * 100)
    src = FolderSource(tmp_path, slots=2, sample_rate=RATE)
    with pytest.raises(ClipError, match="none of the 2 audio files can be read"):
        src.next_clip(0)
    with pytest.raises(ClipError):
        src.next_clip(1)


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no-audio"])
def test_constructor_errors_name_the_path(tmp_path: Path, case: str) -> None:
    root = tmp_path / "clips"
    if case == "file":
        _write(root.with_suffix(".wav"))
        root = root.with_suffix(".wav")
    elif case == "empty":
        root.mkdir()
    elif case == "no-audio":
        _touch(root / "sub" / "readme.txt")
    with pytest.raises(ClipError) as info:
        FolderSource(root, slots=2, sample_rate=RATE)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{root}: ")


def test_argument_checks(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav")
    bad: list[dict[str, Any]] = [{"slots": 0}, {"sample_rate": 0}, {"seed": -1}, {"cache_clips": -1}]
    for kwargs in [*bad, {"assign": "x"}]:
        args: dict[str, Any] = {"slots": 1, "sample_rate": RATE, **kwargs}
        with pytest.raises(ValueError):
            FolderSource(tmp_path, **args)
    src = FolderSource(tmp_path, slots=2, sample_rate=RATE)
    with pytest.raises(IndexError):
        src.next_clip(2)
    src.close()
    with pytest.raises(RuntimeError):
        src.next_clip(0)


# ---- demo clips --------------------------------------------------------------------------------


def test_demo_clips(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    start = time.perf_counter()
    paths = write_demo_clips(demo, slots=4, seconds=3.0, sample_rate=22050, seed=1)
    assert time.perf_counter() - start < 2.0
    assert len(paths) == 4 * CLIPS_PER_SLOT and all(p.is_file() for p in paths)
    assert sorted({p.parent.name for p in paths}) == ["1-drone", "2-rain", "3-bells", "4-wind"]
    centroids: dict[str, list[float]] = {}
    for p in paths:
        x, rate = sf.read(p, dtype="float32", always_2d=True)
        assert rate == 22050 and x.shape == (3 * 22050, 2)
        assert sf.info(str(p)).subtype == "PCM_16"
        peak = float(np.abs(x).max())
        assert 10 ** (PEAK_DBFS / 20) * 0.99 < peak <= 10 ** (PEAK_DBFS / 20) + 1e-4
        assert np.abs(x[:3]).max() < 0.01 and np.abs(x[-3:]).max() < 0.01  # faded
        assert not np.allclose(x[:, 0], x[:, 1])  # really stereo
        spec = np.abs(np.fft.rfft(x[:, 0])) ** 2
        centroids.setdefault(p.parent.name, []).append(
            float((spec * np.fft.rfftfreq(x.shape[0], 1 / rate)).sum() / spec.sum())
        )
    assert max(centroids["1-drone"]) < 500 < 2000 < min(centroids["2-rain"])  # clearly distinct

    # the clips of one slot differ from each other (deterministic variation, not copies)
    drones = [sf.read(p)[0] for p in paths if p.parent.name == "1-drone"]
    assert not np.allclose(drones[0], drones[1])

    # the same seed gives the same bytes; calling again keeps files of the right size
    again = write_demo_clips(tmp_path / "again", slots=4, seconds=3.0, sample_rate=22050, seed=1)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    paths[0].write_bytes(paths[0].read_bytes()[:1000])  # a truncated file is rewritten
    assert write_demo_clips(demo, slots=4, seconds=3.0, sample_rate=22050, seed=1) == paths
    assert [p.stat().st_mtime_ns for p in paths[1:]] == mtimes[1:]
    assert sf.info(str(paths[0])).frames == 3 * 22050

    src = FolderSource(demo, slots=4, sample_rate=44100)
    assert src.assign == "subfolder"
    for slot in range(4):
        folder = f"{slot + 1}-{KINDS[slot][0]}"
        assert {p.parent.name for p in src.files(slot)} == {folder}
        clip = src.next_clip(slot)
        assert clip is not None and Path(clip.info.source).parent.name == folder


def test_demo_clips_default_size(tmp_path: Path) -> None:
    start = time.perf_counter()
    paths = write_demo_clips(tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0  # about 1.2 s on a 2-core CI box; the budget is 2 s, slack for load
    assert len(paths) == 12
    info = sf.info(str(paths[-1]))
    assert (info.frames, info.channels, info.samplerate) == (12 * 44100, 2, 44100)
    assert paths[-1].stat().st_size == 44 + 12 * 44100 * 4
    start = time.perf_counter()
    assert write_demo_clips(tmp_path) == paths
    assert time.perf_counter() - start < 0.5


def test_demo_more_slots_repeat_the_kinds(tmp_path: Path) -> None:
    paths = write_demo_clips(tmp_path, slots=6, seconds=0.5, sample_rate=8000)
    assert sorted({p.parent.name for p in paths}) == [
        "1-drone",
        "2-rain",
        "3-bells",
        "4-wind",
        "5-drone",
        "6-rain",
    ]
    a, _ = sf.read(tmp_path / "1-drone" / "drone-1.wav")
    b, _ = sf.read(tmp_path / "5-drone" / "drone-1.wav")
    assert not np.allclose(a, b)
