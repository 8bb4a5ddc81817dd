"""Control scripts: parsing, validation before anything plays, exact-frame application."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from instrument.engine import Engine
from instrument.errors import ScriptError
from instrument.params import Registry
from instrument.render import render
from instrument.rt import MixerConfig
from instrument.script import load_script


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.jsonl"
    p.write_text(text)
    return p


def test_load_sorts_and_skips_comments(tmp_path: Path) -> None:
    p = write(tmp_path, '# a comment\n\n{"t": 2, "address": "/endless/xfade", "args": [1.5]}\n'
                        '{"t": 0.5, "address": "/endless/slot/1/gain", "args": [-6]}\n'
                        '{"t": 1, "address": "/endless/slot/2/next"}\n')
    ev = load_script(p, Registry())
    assert [e.t for e in ev] == [0.5, 1.0, 2.0]
    assert ev[1].args == ()


@pytest.mark.parametrize("line,fragment", [
    ("{nope", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"t": -1, "address": "/endless/xfade", "args": [1]}', "t must be a number of seconds >= 0"),
    ('{"t": "soon", "address": "/endless/xfade", "args": [1]}', "t must be"),
    ('{"t": 1, "address": 5, "args": [1]}', "address must be a string"),
    ('{"t": 1, "address": "/endless/xfade", "args": [1], "x": 0}', "unknown key(s) x"),
    ('{"t": 1, "address": "/endless/xfade", "args": [99]}', "out of range"),
    ('{"t": 1, "address": "/endless/slot/9/gain", "args": [0]}', "slots are 1..4"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    p = write(tmp_path, '{"t": 0, "address": "/endless/xfade", "args": [1]}\n' + line + "\n")
    with pytest.raises(ScriptError) as e:
        load_script(p, Registry())
    assert f"{p}:2:" in str(e.value) and fragment in str(e.value)


def test_events_land_on_their_exact_frame(tmp_path: Path) -> None:
    sr = 44100
    e = Engine(MixerConfig(slots=1, sample_rate=sr, xfade=0.01, stagger=False))
    e.push_clip(0, np.full((2 * sr, 2), 0.25, np.float32))
    t = 0.5
    e.load_script(load_script(write(tmp_path, f'{{"t": {t}, "address": "/endless/slot/1/mute", "args": [1]}}\n'),
                              e.registry))
    out = render(e, 1.0, 4096)
    after_fade_in = int(0.1 * sr)
    first_change = after_fade_in + int(np.flatnonzero(np.abs(out[after_fade_in:, 0] - 0.25) > 1e-7)[0])
    assert first_change == int(t * sr) + e.mixer.limiter.latency


def test_a_control_log_with_weights_loads_back(tmp_path: Path) -> None:
    """Weights are logged one number an argument, as the address takes them, and cleared weights
    (a prompt change) are not logged at all: the log of a set with blends replays."""
    from instrument.controllog import ControlLog
    from tests.test_engine_batch import gen_engine

    e = gen_engine()
    path = tmp_path / "log.jsonl"
    log = ControlLog(path, e)
    e.handle("/endless/slot/1/prompt", ["rain | thunder"])
    e.handle("/endless/slot/1/weights", [1, 3])
    e.handle("/endless/slot/1/prompt", ["wind"])  # clears the weights
    log.close()
    events = load_script(path, e.registry)
    weights = [ev.args for ev in events if ev.address == "/endless/slot/1/weights"]
    assert weights == [(1.0, 3.0)]
