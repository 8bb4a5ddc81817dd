"""Live output through a real JACK server (dummy driver, 256-frame periods), via the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import endless

pytestmark = pytest.mark.jack

SCRIPT = "\n".join([
    '{"t": 0.75, "address": "/endless/slot/2/gain", "args": [-12]}',
    '{"t": 2.0, "address": "/endless/xfade", "args": [0.5]}',
    '{"t": 3.3, "address": "/endless/slot/1/next", "args": []}',
    '{"t": 4.0, "address": "/endless/morph/mode", "args": ["line"]}',
    '{"t": 4.0, "address": "/endless/morph/position", "args": [0.4]}',
    '{"t": 6.5, "address": "/endless/slot/3/mute", "args": [1]}',
    '{"t": 8.0, "address": "/endless/master/gain/normalized", "args": [0.6]}',
]) + "\n"


@pytest.mark.timeout(180)
def test_play_through_jack_records_what_render_makes(
        jack_env: dict[str, str], noise_folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text(SCRIPT)
    rec = tmp_path / "live.wav"
    log = tmp_path / "control.jsonl"
    common = ["--clips", str(noise_folder), "--slots", "4", "--xfade", "1", "--seed", "7"]
    r = endless("play", *common, "--script", str(script), "--seconds", "10", "--device", "system",
                "--latency", "low", "--record", str(rec), "--log-control", str(log), "--stats", str(tmp_path / "st.json"),
                env=jack_env, timeout=120)
    assert r.returncode == 0, r.stderr
    m = re.search(r"played ([\d.]+) s: (\d+) underflows, (\d+) starvations", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) >= 10.0
    # Underflows are counted and reported. Zero is a performance claim, made by the benchmarks
    # (bench_live.py, bench_mixer.py, bench_control.py count them in the JACK callback): jackd runs without realtime
    # scheduling on this shared 2-core VM, where its own late wake-ups cost an xrun now and then
    # (0-2 in 10 s, at random callbacks, with our callback at ~40 us). A callback that is really too
    # slow, or blocks, misses hundreds of the 1723 periods.
    assert int(m.group(2)) <= 5, r.stdout
    assert int(m.group(3)) == 0
    # the C callback logs its own durations: reported for the whole set, against the 256-frame period
    t = re.search(r"callback median (\d+) us, p99 (\d+) us, max (\d+) us of a (\d+) us period", r.stdout)
    assert t, r.stdout
    med, p99, mx, period = map(int, t.groups())
    assert period == round(256 / 44100 * 1e6) and 0 < med <= p99 <= mx
    stats = json.loads((tmp_path / "st.json").read_text())  # --stats: the same, with when and who
    assert stats["underflows"] == len(stats["underflow_times_ns"]) == int(m.group(2))
    assert stats["callback_p99_us"] == p99 and stats["pid"] > 0 and stats["audio_tid"] > 0
    live, sr = sf.read(rec, dtype="float32")
    assert sr == 44100 and live.shape == (10 * 44100, 2)

    off = tmp_path / "offline.wav"
    r = endless("render", *common, "--script", str(script), "--seconds", "10", "--blocksize", "1000", "--out", str(off))
    assert r.returncode == 0, r.stderr
    offline, _ = sf.read(off, dtype="float32")
    assert np.abs(live).max() > 0.05
    assert np.array_equal(live, offline)  # the recorder's file is the offline render, sample for sample

    # the control log re-renders the performance: the same output from the log alone
    assert len(log.read_text().splitlines()) > len(SCRIPT.splitlines())
    again = tmp_path / "from_log.wav"
    r = endless("render", *common, "--script", str(log), "--seconds", "10", "--out", str(again))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(sf.read(again, dtype="float32")[0], live)


def test_devices_lists_the_jack_output(jack_env: dict[str, str]) -> None:
    r = endless("devices", env=jack_env)
    assert r.returncode == 0 and "JACK" in r.stdout and "system" in r.stdout


def test_missing_device_is_a_one_line_error(jack_env: dict[str, str], noise_folder: Path) -> None:
    r = endless("play", "--clips", str(noise_folder), "--device", "no-such-card", "--seconds", "1", env=jack_env)
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "no output device matches" in r.stderr
