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


def test_a_bad_blend_is_refused_up_front_naming_file_and_line(tmp_path: Path) -> None:
    """Issue 12 finding 7: a prompt `rain:nan | wind` at t=6 passed the up-front check and ended the set
    at 6 s. Every event is checked as the engine would apply it (registry, blend parser, weights
    against the prompt the script has set by then), before anything plays."""
    from tests.test_engine_batch import gen_engine

    e = gen_engine()
    ok = '{"t": 0, "address": "/endless/slot/1/gain", "args": [-3]}\n'
    for line, fragment in [
        ('{"t": 6, "address": "/endless/slot/1/prompt", "args": ["rain:nan | wind"]}', "bad weight 'nan'"),
        ('{"t": 6, "address": "/endless/slot/2/prompt", "args": ["rain:0.5 | "]}', "slot 2 prompt"),
        ('{"t": 6, "address": "/endless/slot/1/weights", "args": [1, 2, 3]}', "3 given for a prompt of"),
    ]:
        p = write(tmp_path, ok + '{"t": 1, "address": "/endless/slot/1/prompt", "args": ["rain | wind"]}\n' + line + "\n")
        with pytest.raises(ScriptError) as err:
            e.load_script(load_script(p, e.registry))
        assert str(err.value).startswith(f"{p}:3: ") and fragment in str(err.value), err.value
        assert "\n" not in str(err.value)
    assert e.values[("slot/prompt", 0)] == ""  # nothing applied
    # weights are checked against the prompt the script sets before them (two parts here)
    p = write(tmp_path, '{"t": 1, "address": "/endless/slot/1/prompt", "args": ["rain | wind"]}\n'
                        '{"t": 2, "address": "/endless/slot/1/weights", "args": [1, 3]}\n')
    e.load_script(load_script(p, e.registry))
    # a clip folder has no generator: a prompt in its script is refused up front, not at its time
    clips = Engine(MixerConfig(slots=1, sample_rate=44100))
    p = write(tmp_path, ok.replace("/2/", "/1/") + '{"t": 9, "address": "/endless/slot/1/prompt", "args": ["rain"]}\n')
    with pytest.raises(ScriptError, match=f"{p}:2: .*no generator"):
        clips.load_script(load_script(p, clips.registry))


def test_an_event_refused_at_run_time_is_logged_and_the_set_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What only the moment can refuse (weights written for the prompt the script set, when a
    performer has changed that prompt meanwhile) is logged with file:line; the events after it apply."""
    from tests.test_engine_batch import gen_engine

    e = gen_engine()
    sr = e.cfg.sample_rate
    p = write(tmp_path, '{"t": 0.5, "address": "/endless/slot/1/prompt", "args": ["rain | wind"]}\n'
                        '{"t": 1, "address": "/endless/slot/1/weights", "args": [1, 3]}\n'
                        '{"t": 1.5, "address": "/endless/slot/2/prompt", "args": ["thunder"]}\n'
                        '{"t": 2, "address": "/endless/master/gain", "args": [-6]}\n')
    e.load_script(load_script(p, e.registry))
    e.apply_due(sr // 2)
    e.handle("/endless/slot/1/prompt", ["rain"])  # a performer's change: one part now
    with caplog.at_level("ERROR"):
        for frame in range(sr // 2, 3 * sr, 4096):
            e.apply_due(frame)
            e.schedule_script(frame + 4096)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"{p}:2: " in lines[0] and "2 given for a prompt of 1 part" in lines[0], lines
    assert e.values[("slot/prompt", 0)] == "rain" and e.values[("slot/prompt", 1)] == "thunder"
    assert e.values[("master/gain", None)] == -6.0
