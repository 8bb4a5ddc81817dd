"""`endless archive ...` (issue 14, item 6) through the real CLI, on a temporary archive filled by the
real `Archive` (FLAC files, SQLite), with the built-in embedder (no model download)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from instrument.archive.embed import BuiltinEmbedder, embed_prompt
from instrument.archive.store import Archive
from instrument.archive_import import Progress, prompt_for
from instrument.clips import Clip, ClipInfo
from tests.conftest import endless

RATE = 44100
LONG = "a very long prompt about wind over the dunes at night with sand hissing against a tent and far bells"
PROMPTS = ("heavy rain on a tin roof", "rolling thunder far away", LONG)


def _env(tmp_path: Path) -> dict[str, str]:
    """No sentence-transformers model in reach: the built-in embedder, as the archive was filled."""
    return dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"),
                XDG_DATA_HOME=str(tmp_path / "data"))


def run(tmp_path: Path, *args: str, archive: Path | None = None) -> tuple[int, str, str]:
    where = ["--archive", str(archive)] if archive is not None else []
    r = endless("archive", *args, *where, env=_env(tmp_path), timeout=120)
    return r.returncode, r.stdout, r.stderr


def one_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("endless: error: "), stderr
    return lines[0]


def noise(seconds: float, seed: int, level: float = 0.1, rate: int = RATE, channels: int = 2) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)) * level
    return x.astype(np.float32)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    emb = BuiltinEmbedder()
    with Archive(root) as a:
        for i, prompt in enumerate(PROMPTS):
            clip = Clip(noise(1.0 + i, i), RATE, ClipInfo("generator", prompt, 100 + i, "tiny", 0.5, 2, 4.5))
            a.add(clip, embedding=embed_prompt(emb, prompt), embedder=emb.id)
        a.played(1)  # clip 1 played: the other two go first when pruning
    return root


def test_list_is_a_table_newest_first(tmp_path: Path, archive: Path) -> None:
    code, out, err = run(tmp_path, "list", archive=archive)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["id", "created", "seconds", "plays", "prompt"]
    assert [int(x.split()[0]) for x in lines[1:4]] == [3, 2, 1]
    assert "3.0" in lines[1] and LONG[:40] in lines[1] and lines[1].endswith("...") and LONG not in out
    assert lines[3].split()[4] == "1" and "heavy rain on a tin roof" in lines[3]  # plays
    assert lines[-1].startswith("3 of 3 clips") and str(archive) in lines[-1]
    code, out, _ = run(tmp_path, "list", "--limit", "1", archive=archive)
    assert code == 0 and len(out.splitlines()) == 3 and "1 of 3 clips" in out


def test_search_ranks_by_prompt_similarity(tmp_path: Path, archive: Path) -> None:
    code, out, err = run(tmp_path, "search", "rain on the roof", archive=archive)
    assert code == 0, err
    rows = [x.split() for x in out.splitlines()[1:]]
    assert [int(r[1]) for r in rows][0] == 1 and float(rows[0][0]) > float(rows[1][0])
    code, out, _ = run(tmp_path, "search", "thunder", "-k", "1", archive=archive)
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].split()[1] == "2"
    code, _, err = run(tmp_path, "search", "rain:0.5 | ", archive=archive)
    assert code == 2 and "search" in one_error(err)


def test_show_prints_every_field(tmp_path: Path, archive: Path) -> None:
    code, out, err = run(tmp_path, "show", "2", archive=archive)
    assert code == 0, err
    for name in ("id", "path", "prompt", "blend", "seed", "steps", "guidance", "model", "seconds", "loudness",
                 "created", "plays", "last_played", "embedder", "bytes", "embedding"):
        assert f"\n{name}:" in "\n" + out, (name, out)
    assert "rolling thunder far away" in out and "\nseed:         101\n" in out and " LUFS" in out and "512 dims (builtin:hash-v1)" in out
    code, _, err = run(tmp_path, "show", "99", archive=archive)
    assert code == 1 and "no clip 99" in one_error(err) and "endless archive list" in err
    code, _, err = run(tmp_path, "show", "two", archive=archive)
    assert code == 2 and "'two'" in one_error(err)


def test_export_writes_wav_and_flac_and_never_overwrites(tmp_path: Path, archive: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("c.wav", "c.flac"):
        code, stdout, err = run(tmp_path, "export", "3", str(out / name), archive=archive)
        assert code == 0, err
        audio, rate = sf.read(out / name, dtype="float32")
        stored, _ = sf.read(archive / "clips" / os.listdir(archive / "clips")[0], dtype="float32")
        assert rate == RATE and audio.shape == (3 * RATE, 2) and np.abs(audio).max() > 0.1
    assert sf.info(str(out / "c.flac")).format == "FLAC" and sf.info(str(out / "c.wav")).format == "WAV"
    before = (out / "c.wav").read_bytes()
    code, _, err = run(tmp_path, "export", "1", str(out / "c.wav"), archive=archive)
    assert code == 2 and "--force" in one_error(err) and (out / "c.wav").read_bytes() == before
    code, _, err = run(tmp_path, "export", "1", str(out / "c.wav"), "--force", archive=archive)
    assert code == 0, err
    assert sf.info(str(out / "c.wav")).frames == RATE  # clip 1 is 1 s long
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary file left


def test_export_stays_in_its_folder(tmp_path: Path, archive: Path) -> None:
    outside = tmp_path / "precious.wav"
    outside.write_bytes(b"keep me")
    here = tmp_path / "here"
    here.mkdir()
    (here / "link.wav").symlink_to(outside)
    for extra in ((), ("--force",)):  # a link is never written through, nor replaced
        code, _, err = run(tmp_path, "export", "1", str(here / "link.wav"), *extra, archive=archive)
        assert code == 2 and "a link" in one_error(err)
    assert outside.read_bytes() == b"keep me" and (here / "link.wav").is_symlink()
    (here / "d.wav").mkdir()
    code, _, err = run(tmp_path, "export", "1", str(here / "d.wav"), "--force", archive=archive)
    assert code == 2 and "a folder" in one_error(err)
    code, _, err = run(tmp_path, "export", "1", str(archive / "clips" / "x.wav"), archive=archive)
    assert code == 2 and "inside the archive folder" in one_error(err)
    code, _, err = run(tmp_path, "export", "1", str(tmp_path / "nowhere" / "x.wav"), archive=archive)
    assert code == 2 and "does not exist" in one_error(err)
    code, _, err = run(tmp_path, "export", "1", str(here / "x.mp4"), archive=archive)
    assert code == 2 and ".wav or .flac" in one_error(err)


def test_prune_removes_the_least_recently_played_and_says_which(tmp_path: Path, archive: Path) -> None:
    code, _, err = run(tmp_path, "prune", archive=archive)
    assert code == 2 and "--max-clips" in one_error(err)
    code, out, err = run(tmp_path, "prune", "--max-clips", "1", archive=archive)
    assert code == 0, err
    removed = [int(x.split()[1]) for x in out.splitlines() if x.startswith("removed ") and "plays" in x]
    assert sorted(removed) == [2, 3] and "removed 2 clips" in out and "1 left" in out
    with Archive(archive) as a:
        assert [e.id for e in a.entries()] == [1] and len(os.listdir(archive / "clips")) == 1


def test_import_turns_recordings_into_clips(tmp_path: Path, archive: Path) -> None:
    rec = tmp_path / "recordings"
    (rec / "sub").mkdir(parents=True)
    sf.write(rec / "rain_on-roof.wav", noise(2.0, 7, level=0.01, rate=22050, channels=1)[:, 0], 22050)
    sf.write(rec / "sub" / "take3.flac", noise(1.5, 8, level=0.3, rate=48000), 48000)
    (rec / "sub" / "take3.txt").write_text("distant thunder over hills\n")
    (rec / "notes.pdf").write_bytes(b"%PDF-1.4 not audio")
    sf.write(rec / "blip.wav", noise(0.1, 9), RATE)
    outside = tmp_path / "outside.wav"
    sf.write(outside, noise(1.0, 10), RATE)
    (rec / "linked.wav").symlink_to(outside)
    code, out, err = run(tmp_path, "import", str(rec), archive=archive)
    assert code == 0, err
    assert "imported 2 of 4 files" in out and "3 skipped" in out, out
    skipped = [x for x in err.splitlines() if x.startswith("endless: skipped ")]
    assert len(skipped) == 3, err
    assert any("notes.pdf" in x and "cannot read" in x for x in skipped)
    assert any("blip.wav" in x and "shorter" in x for x in skipped)
    assert any("linked.wav" in x and "not followed" in x for x in skipped)
    with Archive(archive) as a:
        new = {e.blend: e for e in a.entries() if e.model == "import"}
        assert set(new) == {"rain on roof", "distant thunder over hills"}
        for e in new.values():
            clip = a.load(e, RATE)
            assert clip is not None
            data, rate = sf.read(e.path, dtype="float64")
            assert rate == RATE and data.shape[1] == 2  # kept at 44.1 kHz stereo
            lufs = pyloudnorm.Meter(RATE).integrated_loudness(data)
            assert abs(lufs - -20.0) < 0.5 and e.loudness is not None and abs(e.loudness + 20) < 0.5, (lufs, e)
    code, out, _ = run(tmp_path, "search", "thunder", "-k", "1", archive=archive)
    assert code == 0 and "distant thunder over hills" in out


def test_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    code, _, err = run(tmp_path, "list", archive=empty)
    assert code == 1 and "does not exist" in one_error(err) and not empty.exists()  # reading never creates it
    Archive(empty).close()
    for act in (("list",), ("search", "rain"), ("show", "1"), ("play", "1")):
        code, _, err = run(tmp_path, *act, archive=empty)
        assert code == 1 and "is empty" in one_error(err), act
    code, _, err = run(tmp_path, "import", str(tmp_path / "missing"), archive=empty)
    assert code == 2 and "no such folder" in one_error(err)
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run(tmp_path, "list", archive=afile)
    assert code == 2 and "not a folder" in one_error(err)


def test_default_archive_is_the_one_play_uses(tmp_path: Path, archive: Path) -> None:
    env = dict(_env(tmp_path), ENDLESS_ARCHIVE=str(archive))
    r = endless("archive", "list", env=env)
    assert r.returncode == 0 and "3 of 3 clips" in r.stdout, r.stderr


def test_play_on_the_default_output(tmp_path: Path, archive: Path, jack_env: dict[str, str]) -> None:
    r = endless("archive", "play", "1", "--archive", str(archive), env=dict(_env(tmp_path), **{
        k: v for k, v in jack_env.items() if k.startswith("JACK")}), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "playing clip 1" in r.stdout
    with Archive(archive) as a:
        entry = a.get(1)
        assert entry is not None and entry.plays == 2  # counted


def test_play_without_an_output_device_is_one_line(tmp_path: Path, archive: Path) -> None:
    env = dict(_env(tmp_path), JACK_DEFAULT_SERVER=f"none_{os.getpid()}", JACK_NO_START_SERVER="1")
    if endless("devices", env=env).returncode == 0:
        pytest.skip("this machine has an audio output without JACK")
    r = endless("archive", "play", "1", "--archive", str(archive), env=env)
    assert r.returncode == 3 and "no audio output device" in one_error(r.stderr)


def test_prompt_from_file_name_or_sidecar(tmp_path: Path) -> None:
    f = tmp_path / "Field_rec--seagulls: harbour|dawn.wav"
    assert prompt_for(f) == "Field rec seagulls harbour dawn"
    (tmp_path / "x.wav.txt").write_text("rain:0.7 | thunder:0.3")  # a valid blend stays a blend
    assert prompt_for(tmp_path / "x.wav") == "rain:0.7 | thunder:0.3"
    (tmp_path / "y.txt").write_text("   \n")
    assert prompt_for(tmp_path / "y.wav") == "y"
    assert prompt_for(tmp_path / "___.wav") == "recording"


def test_progress_line_at_most_every_interval() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress(300, out, every=1.0, clock=lambda: now[0])
    for i in range(1, 301):
        now[0] += 0.02
        bar.update(i, i - i // 10, i // 10)
    bar.done()
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 6 and lines[0] == "import: 50/300 files, 45 kept, 5 skipped", lines
