"""The mapping format as one table (`mapkeys.KEYS`): the reference, unknown keys, the applicability
checks and the writer all follow it; MIDI bytes decoded by mido; bindings to actions with `args`;
one glide range."""

from __future__ import annotations

from pathlib import Path

import pytest

from instrument.control.actions import ACTIONS
from instrument.control.decode import Decoder, Hit
from instrument.control.mapdoc import mapping_reference
from instrument.control.mapfile import Binding, format_control, load_mapping, mapping_to_toml, parse_mapping
from instrument.control.mapkeys import KEYS, keys
from instrument.control.surface import Surface
from instrument.engine import Engine
from instrument.errors import ConfigError
from instrument.params import GLIDE_MAX, Registry
from instrument.rt import MixerConfig

ROOT = Path(__file__).resolve().parents[1]
REG = Registry(slots=4)


def parse(body: str):  # type: ignore[no-untyped-def]
    return parse_mapping("version = 1\n" + body, "t.toml", REG)


def actions_called(body: str, *msgs: tuple[int, ...]) -> list[tuple[str, tuple[object, ...]]]:
    """What a surface of `body` calls its action sink with for `msgs`."""
    e = Engine(MixerConfig(slots=4, sample_rate=44100))
    s = Surface(parse(body), REG)
    calls: list[tuple[str, tuple[object, ...]]] = []
    for m in msgs:
        s.handle(m, e, lambda path, args: calls.append((path, args)))
    return calls


# == the table drives the reference and the parser ==================================================
def test_every_key_and_action_is_in_the_reference() -> None:
    ref = mapping_reference()
    for k in KEYS:
        assert f"| `{k.name}` |" in ref, k.name
    for a in ACTIONS:
        assert f"| `{a.path}` | " in ref, a.path
    assert ref.count(f"0..{GLIDE_MAX:g}") >= 2  # glide's range, from params, in [[control]] and [presets]


def test_an_unknown_key_is_refused_naming_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse('[[control]]\ncc = 7\ntarget = "/endless/xfade"\nspeed = 2\n')
    msg = str(err.value)
    assert "t.toml: [[control]] #1: unknown key 'speed'" in msg
    assert all(k.name in msg for k in keys("control"))
    with pytest.raises(ConfigError, match=r"\[presets\]: unknown key 'glide_time': allowed channel, notes"):
        parse("[presets]\nglide_time = 2\n")


@pytest.mark.parametrize("body, needle", [
    ('[[control]]\ncc = 1\ntarget = "/endless/xfade"\nbits = 7', "bits: only for nrpn controls, not cc"),
    ('[[control]]\ncc = 1\ntarget = "/endless/curve"\nmin = 0', "min: not used by target /endless/curve (a choice"),
    ('[[control]]\ncc = 1\ntarget = "/endless/xfade"\nglide = 2', "glide: not used by target /endless/xfade"),
    ('[[control]]\nnote = 1\ntarget = "/endless/slot/1/next"\nvalue = 1', "value: not used by target"),
    ('[[control]]\nnote = 1\ntarget = "preset/next"\npreset = "a"', "preset: not used by target preset/next"),
    ('[[control]]\nnote = 1\ntarget = "/endless/slot/1/mute"\nargs = [1]', "args: not used by target"),
    ('[[control]]\nnote = 1\ntarget = "preset/recall"\npreset = "a"\nargs = ["b"]', "args, or preset and glide"),
    ('[[control]]\nnote = 1\ntarget = "record"\nargs = [[1]]', "allowed an array of texts and numbers"),
    ('[[control]]\nnote = 1\ntarget = "/endless/slot/1/mute"\nbutton = "hold"', "allowed toggle, momentary"),
    ('[[control]]\ncc = 1\ntarget = "/endless/xfade"\nstep = 0', "step = 0: allowed a number > 0"),
    ('[[control]]\nprogram = "any"\ntarget = "preset/next"', 'program = "any": only with'),
    ('[presets]\nnotes = { x = "a" }', "notes: note = 'x'"),
])
def test_keys_apply_only_where_the_table_says(body: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="t.toml") as err:
        parse(body)
    assert needle in str(err.value)


def test_glide_has_one_range_in_a_mapping() -> None:
    for where in ('[[control]]\nnote = 1\ntarget = "preset/next"\nglide = {}', "[presets]\nglide = {}"):
        with pytest.raises(ConfigError, match=f"glide = 601: allowed seconds 0..{GLIDE_MAX:g}"):
            parse(where.format(601))
        parse(where.format(600))
    with pytest.raises(ConfigError, match="glide = -1"):
        parse("[presets]\nglide = -1\n")


@pytest.mark.parametrize("name", ["generic-8x8.toml", "nanokontrol2.toml"])
def test_saving_reads_back_the_same_mapping(name: str) -> None:
    m = load_mapping(ROOT / "mappings" / name, REG)
    again = parse_mapping(mapping_to_toml(m), "saved", REG)
    assert (again.name, again.description, again.channel, again.presets) == (m.name, m.description, m.channel,
                                                                            m.presets)
    assert again.controls == m.controls


def test_a_control_writes_only_what_differs_and_reads_back() -> None:
    b = Binding("nrpn", 300, "/endless/morph/x", 2, min=0.25, bits=7, feedback=True, label="x")
    text = format_control(b)
    assert text == ('[[control]]\nlabel = "x"\nnrpn = 300\nchannel = 3\ntarget = "/endless/morph/x"\nmin = 0.25\n'
                    "bits = 7\nfeedback = true\n")
    assert parse(text).controls == [b]
    rec = Binding("note", 5, "record", None, args=(1, "take.wav"))
    assert parse(format_control(rec)).controls == [rec]


# == actions ========================================================================================
def test_args_are_what_the_action_is_called_with() -> None:
    body = ('[[control]]\nnote = 50\ntarget = "learn"\nargs = ["/endless/slot/1/gain"]\n'
            '[[control]]\nnote = 51\ntarget = "record"\nargs = [1, "take.wav"]\n'
            '[[control]]\nnote = 52\ntarget = "record"\n'
            '[[control]]\ncc = 20\ntarget = "preset/recall"\nargs = ["dawn", 1.5]\n')
    assert parse(body).controls[1].args == (1, "take.wav")
    calls = actions_called(body, (0x90, 50, 100), (0x80, 50, 0), (0x90, 51, 1), (0x90, 52, 1),
                           (0xB0, 20, 127), (0xB0, 20, 0))
    assert calls == [("learn", ("/endless/slot/1/gain",)), ("record", (1, "take.wav")), ("record", ()),
                     ("preset/recall", ("dawn", 1.5))]


def test_preset_and_glide_become_the_arguments() -> None:
    body = ('[presets]\nprogram_change = true\nglide = 2.5\nnotes = { 36 = "dawn" }\n'
            '[[control]]\nnote = 40\ntarget = "preset/next"\nglide = 1\n'
            '[[control]]\nnote = 41\ntarget = "preset/previous"\n'
            '[[control]]\nprogram = 3\ntarget = "preset/arm"\npreset = 7\n'
            '[[control]]\nprogram = 9\ntarget = "preset/next"\n')
    calls = actions_called(body, (0x90, 36, 9), (0xC0, 4), (0x90, 40, 9), (0x90, 41, 9), (0xC0, 3), (0xC0, 9))
    assert calls == [("preset/recall", ("dawn", 2.5)), ("preset/recall", (5, 2.5)), ("preset/next", (1.0,)),
                     ("preset/previous", ()), ("preset/arm", (7,)), ("preset/recall", (4, 2.5)),
                     ("preset/next", ()), ("preset/recall", (10, 2.5))]


# == decoding through mido ==========================================================================
@pytest.mark.parametrize("data", [(0xB0, 7, 200), (0xB0, 200, 5), (0xB0, 7), (5,), (), (0x90, 60), (0xC0,),
                                  (0xF0, 1, 2), (0xB0, 7, 1, 2), (0x90, 60, 128)])
def test_malformed_bytes_give_no_hit_and_no_error(data: tuple[int, ...]) -> None:
    d = Decoder([Binding("cc", 7, "/endless/xfade"), Binding("note", 60, "/endless/slot/1/mute"),
                 Binding("program", None, "preset/recall")])
    assert d.feed(data) == []
    assert d.feed((0xB0, 7, 127)) == [Hit(0, "abs", 1.0)]  # and the next good message decodes


def test_mido_decodes_notes_programs_and_channels() -> None:
    d = Decoder([Binding("note", 60, "/endless/slot/1/mute", channel=9), Binding("program", None, "preset/recall")])
    assert d.feed((0x99, 60, 127)) == [Hit(0, "press", 1.0)]
    assert d.feed((0x99, 60, 0)) == [Hit(0, "release", 0.0)]  # note-on with velocity 0 is a note-off
    assert d.feed((0x89, 60, 64)) == [Hit(0, "release", 0.0)]
    assert d.feed((0x90, 60, 127)) == []  # another channel
    assert d.feed((0xC5, 17)) == [Hit(1, "program", 17.0)]
    assert d.feed((0xE0, 0, 64)) == [] and d.feed((0xF8,)) == []  # pitch bend, clock: not for bindings
