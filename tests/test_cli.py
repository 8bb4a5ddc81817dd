"""The CLI end to end: offline render of a clip folder, and one-line errors with exit codes."""

from __future__ import annotations

import json
import time
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
    (["--lookahead", "9"], 2, "--lookahead 9: allowed 0.05..5 ms"),
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


# -- the generator from the command line -------------------------------------------------------------
def _offline_env(tmp_path: Path) -> dict[str, str]:
    import os

    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"),
                HF_HUB_OFFLINE="1")


def test_render_with_the_tiny_model_and_a_prompt_script(tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text('{"t": 4, "address": "/endless/slot/2/prompt", "args": ["thunder:0.7 | rain:0.3"]}\n')
    out = tmp_path / "g.wav"
    r = endless("render", "--model", "auto", "--slots", "2", "--seconds", "8", "--length", "3", "--steps", "3",
                "--xfade", "0.5", "--script", str(script), "--prompt", "rain", "--prompt", "wind", "--out", str(out),
                env=_offline_env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "TINY RANDOM-WEIGHT STAND-IN" in r.stderr  # auto without weights: a warning nobody can miss
    assert "0 starvations" in r.stdout and "0 restarts" in r.stdout
    audio, sr = sf.read(out)
    assert audio.shape == (8 * 44100, 2) and np.isfinite(audio).all() and np.abs(audio[44100:]).max() > 0.01


@pytest.mark.parametrize("args,code,fragments", [
    (["--model", "{tmp}/no-such-dir"], 4, ["--model-dir", "--model tiny"]),
    (["--model", "tangoflux"], 4, ["HF_HUB_OFFLINE", "--model tiny"]),
    (["--model", "tiny", "--backend", "cuda"], 2, ["--backend cuda", "use --backend auto or cpu"]),
    (["--model", "tiny", "--backend", "tpu"], 2, ["--backend tpu: allowed auto, cuda, mps, coreml, cpu"]),
    (["--model", "tiny", "--prompt", "rain:0.5 | "], 2, ["prompt"]),
    (["--model", "tiny", "--steps", "0"], 2, ["--steps: 0 out of range"]),
    (["--model", "tiny", "--generator-nice", "25"], 2, ["--generator-nice 25: allowed 0..19"]),
    (["--model", "tiny", "--prompt", "a", "--prompt", "b", "--slots", "1"], 2, ["--prompt given 2 times for 1 slots"]),
])
def test_generator_errors_are_one_line(tmp_path: Path, args: list[str], code: int, fragments: list[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = endless("render", "--seconds", "1", "--out", str(tmp_path / "x.wav"), *args, env=_offline_env(tmp_path))
    assert r.returncode == code, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("endless: error:") and all(f in last for f in fragments), r.stderr


def test_fetch_model_from_a_folder_makes_auto_use_it(tmp_path: Path) -> None:
    from instrument.generator.tiny import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path / "ckpt")
    env = _offline_env(tmp_path)
    r = endless("fetch-model", "--from", str(src), env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cache" / "endless" / "models" / "tangoflux" / "tangoflux.safetensors").is_file()
    r = endless("render", "--seconds", "2", "--slots", "1", "--length", "2", "--steps", "2",
                "--out", str(tmp_path / "f.wav"), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "STAND-IN" not in r.stderr and "models/tangoflux" in r.stderr  # auto found the fetched weights
    bad = endless("fetch-model", "--from", str(tmp_path / "nothing"), env=env)
    assert bad.returncode == 4 and bad.stderr.strip().startswith("endless: error:")


def test_play_checks_the_stats_folder_before_the_set(tmp_path: Path) -> None:
    """A typo in --stats is found before the audio starts, not after an hour-long set."""
    r = endless("play", "--demo", "--seconds", "1", "--stats", str(tmp_path / "missing" / "s.json"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--stats" in lines[0] and "does not exist" in lines[0], r.stderr


@pytest.mark.timeout(300)
def test_render_stats_say_when_the_first_clip_came(tmp_path: Path) -> None:
    """`render --stats`: when the first generated clip arrived (benchmarks/bench_first_sound.py's
    CUDA figure); no compile on a CPU, so compiled_ns stays 0. A missing folder is refused first."""
    bad = endless("render", "--demo", "--seconds", "1", "--out", str(tmp_path / "x.wav"),
                  "--stats", str(tmp_path / "missing" / "s.json"))
    assert bad.returncode == 2 and "--stats" in bad.stderr and "does not exist" in bad.stderr, bad.stderr
    stats = tmp_path / "s.json"
    t0 = time.monotonic_ns()
    r = endless("render", "--model", "tiny", "--slots", "1", "--seconds", "2", "--length", "2", "--steps", "2",
                "--out", str(tmp_path / "t.wav"), "--stats", str(stats), env=_offline_env(tmp_path), timeout=280)
    t1 = time.monotonic_ns()
    assert r.returncode == 0, r.stderr
    data = json.loads(stats.read_text())
    assert t0 < data["first_clip_ns"] < t1 and data["clips"] >= 1 and data["compiled_ns"] == 0, data


@pytest.mark.timeout(300)
def test_a_bad_blend_in_a_script_is_refused_before_the_set(tmp_path: Path) -> None:
    """Issue 12 finding 7: `rain:nan | wind` at t=6 passed the check and ended the run at 6 s with
    exit 2 and no file:line. Now it is refused before anything plays, naming the file and line."""
    script = tmp_path / "s.jsonl"
    script.write_text('{"t": 1, "address": "/endless/slot/1/gain", "args": [-3]}\n'
                      '{"t": 6, "address": "/endless/slot/1/prompt", "args": ["rain:nan | wind"]}\n')
    out = tmp_path / "g.wav"
    r = endless("render", "--model", "tiny", "--slots", "1", "--seconds", "8", "--length", "3", "--steps", "2",
                "--script", str(script), "--out", str(out), env=_offline_env(tmp_path), timeout=280)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"endless: error: {script}:2: ") and "bad weight 'nan'" in last, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
