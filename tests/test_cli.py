"""The CLI end to end: offline render of a clip folder, and one-line errors with exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, endless


def test_render_writes_a_seamless_stereo_file(noise_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    r = endless("render", "--clips", str(noise_folder), "--slots", "4", "--seconds", "30", "--xfade", "1",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "0 starvations" in r.stdout
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 44100 and audio.shape == (30 * 44100, 2)
    assert np.abs(audio).max() <= 10 ** (-1 / 20) + 1e-6
    win = 2205
    body = audio[44100:].astype(np.float64)  # after the fade-in
    n = len(body) // win
    db = 10 * np.log10(np.mean(body[: n * win].reshape(n, win, 2) ** 2, axis=(1, 2)))
    assert db.max() - db.min() < 3.0  # no gaps, no level jumps


def test_render_is_deterministic(noise_folder: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a.wav", "b.wav"):
        r = endless("render", "--clips", str(noise_folder), "--seconds", "5", "--seed", "3", "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        outs.append(sf.read(tmp_path / name)[0])
    assert np.array_equal(outs[0], outs[1])


def test_render_demo_clips_without_a_folder(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = endless("render", "--demo", "--seconds", "3", "--out", str(tmp_path / "d.flac"), env=env)
    assert r.returncode == 0, r.stderr
    assert "demo textures" in r.stderr
    audio, sr = sf.read(tmp_path / "d.flac")
    assert audio.shape == (3 * 44100, 2) and np.abs(audio[44100:]).max() > 0.01


@pytest.mark.parametrize("args,code,fragment", [
    (["--slots", "0"], 2, "--slots 0: allowed 1..16"),
    (["--slots", "17"], 2, "--slots 17: allowed 1..16"),
    (["--xfade", "100"], 2, "--xfade: 100 out of range: allowed 0.01..30 s"),
    (["--blocksize", "0"], 2, "--blocksize 0: allowed 1..16384"),
    (["--seconds", "-1"], 2, "--seconds -1.0: must be > 0"),
    (["--out", "{tmp}/x.mp3"], 2, "unsupported output format .mp3: use .wav or .flac"),
    (["--out", "{tmp}/missing/x.wav"], 2, "does not exist: create it first"),
    (["--clips", "{tmp}/nothing"], 1, "nothing"),
    (["--script", "{tmp}/bad.jsonl"], 2, "bad.jsonl:1: not JSON"),
])
def test_bad_flags_are_one_line_errors(tmp_path: Path, noise_folder: Path, args: list[str], code: int,
                                       fragment: str) -> None:
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    base = {"--clips": str(noise_folder), "--seconds": "1", "--out": str(tmp_path / "ok.wav")}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for k in list(base):
        if k in args:
            del base[k]
    flat = [x for kv in base.items() for x in kv]
    r = endless("render", *flat, *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("endless: error:") and fragment.replace("{tmp}", str(tmp_path)) in lines[0], r.stderr


def test_no_command_prints_usage() -> None:
    r = endless()
    assert r.returncode == 2 and "play" in r.stdout


def test_docs_command_matches_file() -> None:
    r = endless("docs")
    assert r.returncode == 0 and r.stdout == (ROOT / "docs" / "osc.md").read_text()
