"""MIDI mappings: the format, decoders (14-bit CC, NRPN, relative encoders), soft takeover, buttons,
feedback encoding. MidiControl itself (the bus, feedback sender, learn, JACK ports):
test_midi_control.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from instrument.control.decode import Decoder, Hit
from instrument.control.mapdoc import mapping_reference
from instrument.control.mapfile import Binding, load_mapping, parse_mapping
from instrument.control.surface import Surface, curve_position, curve_value, encode_feedback
from instrument.engine import Engine
from instrument.errors import ConfigError
from instrument.params import Registry
from instrument.rt import MixerConfig

ROOT = Path(__file__).resolve().parents[1]
REG = Registry(slots=4)


def engine(slots: int = 4) -> Engine:
    return Engine(MixerConfig(slots=slots, sample_rate=44100))


def surface(body: str, slots: int = 4) -> Surface:
    reg = Registry(slots=slots)
    return Surface(parse_mapping("version = 1\n" + body, "test.toml", reg), reg)


def play(s: Surface, e: Engine, *msgs: tuple[int, ...]) -> int:
    return sum(s.handle(m, e) for m in msgs)


# == the format ===================================================================================
def test_unknown_key_names_file_key_and_allowed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_mapping('version = 1\n[[control]]\ncc = 7\nchan = 2\ntarget = "/endless/xfade"\n', "my.toml", REG)
    msg = str(err.value)
    assert "my.toml" in msg and "[[control]] #1" in msg and "'chan'" in msg and "channel" in msg and "target" in msg
    with pytest.raises(ConfigError, match="my.toml: unknown key 'controls'"):
        parse_mapping("version = 1\n[[controls]]\ncc = 1\n", "my.toml", REG)
    with pytest.raises(ConfigError, match=r"\[presets\]: unknown key 'note'"):
        parse_mapping("version = 1\n[presets]\nnote = 3\n", "my.toml", REG)


@pytest.mark.parametrize("body, needle", [
    ("", "version = None"),
    ('version = 2', "version = 2"),
    ('version = 1\n[[control]]\ncc = 128\ntarget = "/endless/xfade"', "cc = 128"),
    ('version = 1\n[[control]]\ncc = 1\ncc14 = 2\ntarget = "/endless/xfade"', "exactly one of"),
    ('version = 1\n[[control]]\ncc = 1\ntarget = "/endless/nope"', "unknown address"),
    ('version = 1\n[[control]]\ncc = 1\ntarget = "/endless/xfade"\nmin = 0.001', "0.001 out of range"),
    ('version = 1\n[[control]]\ncc = 1\ntarget = "/endless/slot/1/gain"\ncurve = "log"', "log needs"),
    ('version = 1\n[[control]]\nnote = 1\ntarget = "/endless/slot/1/prompt"', "give value"),
    ('version = 1\n[[control]]\nnote = 1\ntarget = "/endless/slot/1/gain"\nmode = "binary_offset"', "relative modes"),
    ('version = 1\n[[control]]\nnote = 1\ntarget = "preset/arm"', "needs preset"),
    ('version = 1\n[[control]]\ncc = 1\ntarget = "/endless/morph/mode"\nvalue = "zigzag"', "zigzag"),
    ('version = 1\n[[control]]\ncc = 1\nchannel = 17\ntarget = "/endless/xfade"', "channel = 17"),
])
def test_bad_mappings_fail_at_load(body: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="bad.toml") as err:
        parse_mapping(body, "bad.toml", REG)
    assert needle in str(err.value)


@pytest.mark.parametrize("name", ["generic-8x8.toml", "nanokontrol2.toml"])
@pytest.mark.parametrize("slots", [1, 4, 8])
def test_example_mappings_load(name: str, slots: int) -> None:
    reg = Registry(slots=slots)
    s = Surface(load_mapping(ROOT / "mappings" / name, reg), reg)
    assert s.bound and all(b.ref is None or b.ref.slot is None or b.ref.slot < slots for b in s.bound)
    assert len(s.unused) == sum(1 for b in s.mapping.bindings if "/slot/" in b.target
                                and int(b.target.split("/")[3]) > slots)


def test_docs_reference_is_in_sync() -> None:
    """docs/mappings.md is generated: `make docs` rewrites it."""
    assert (ROOT / "docs" / "mappings.md").read_text() == mapping_reference()


# == decoders (literal message sequences) ===========================================================
def test_14bit_cc_applies_on_the_lsb() -> None:
    d = Decoder([Binding("cc14", 1, "/endless/xfade", channel=0)])
    assert d.feed((0xB0, 1, 0x40)) == []  # MSB waits for its LSB
    assert d.feed((0xB0, 33, 0x00)) == [Hit(0, "abs", 0x2000 / 16383)]
    assert d.feed((0xB0, 1, 0x7F)) == []
    assert d.feed((0xB0, 33, 0x7F)) == [Hit(0, "abs", 1.0)]
    assert d.feed((0xB1, 1, 0x10)) == []  # another channel
    assert d.feed((0xB0, 34, 0x10)) == []  # the LSB of another controller


def test_14bit_cc_from_a_controller_that_sends_msbs_alone() -> None:
    d = Decoder([Binding("cc14", 7, "/endless/xfade")])
    assert d.feed((0xB3, 7, 10)) == []
    assert d.feed((0xB3, 7, 11)) == [Hit(0, "abs", (11 << 7) / 16383)]  # the second MSB gives it away
    assert d.feed((0xB3, 7, 12)) == [Hit(0, "abs", (12 << 7) / 16383)]
    assert d.feed((0xB3, 39, 5)) == [Hit(0, "abs", (12 << 7 | 5) / 16383)]  # LSBs after all: back to pairs
    assert d.feed((0xB3, 7, 13)) == []


def test_nrpn_decoding() -> None:
    d = Decoder([Binding("nrpn", 1000, "/endless/xfade", channel=2),
                 Binding("nrpn", 5, "/endless/morph/x", channel=2, bits=7)])
    msb, lsb = divmod(1000, 128)
    assert d.feed((0xB2, 99, msb)) + d.feed((0xB2, 98, lsb)) + d.feed((0xB2, 6, 0x55)) == []
    assert d.feed((0xB2, 38, 0x2A)) == [Hit(0, "abs", (0x55 << 7 | 0x2A) / 16383)]
    assert d.feed((0xB2, 96, 0)) == [Hit(0, "rel", 1.0)]  # data increment
    assert d.feed((0xB2, 97, 0)) == [Hit(0, "rel", -1.0)]
    assert d.feed((0xB2, 99, 0)) + d.feed((0xB2, 98, 5)) == []
    assert d.feed((0xB2, 6, 127)) == [Hit(1, "abs", 1.0)]  # 7 bits: applies on the MSB
    assert d.feed((0xB2, 38, 1)) == []
    assert d.feed((0xB2, 101, 0)) + d.feed((0xB2, 100, 0)) == []  # an RPN (pitch-bend range) is selected
    assert d.feed((0xB2, 6, 2)) + d.feed((0xB2, 38, 0)) == []  # ... so its data is not ours
    assert d.feed((0xB5, 6, 2)) == []  # other channel, nothing selected


def test_relative_encoders_step_and_clamp() -> None:
    e = engine()
    s = surface('[[control]]\ncc = 20\nmode = "twos_complement"\ntarget = "/endless/morph/position"\n'
                '[[control]]\ncc = 21\nmode = "binary_offset"\ntarget = "/endless/morph/x"\nstep = 0.1\n'
                '[[control]]\ncc = 22\nmode = "sign_magnitude"\ntarget = "/endless/curve"\nstep = 0.05\n')
    play(s, e, *[(0xB0, 20, 1)] * 10, (0xB0, 20, 126))  # +10 ticks, -2 ticks
    assert e.values[("morph/position", None)] == pytest.approx(8 / 128)
    play(s, e, (0xB0, 21, 66))  # +2 x 0.1 from 0.5
    assert e.values[("morph/x", None)] == pytest.approx(0.7)
    play(s, e, *[(0xB0, 21, 0)] * 3)  # -64 ticks each: clamped at the end
    assert e.values[("morph/x", None)] == 0.0
    # a choice: small steps add up (the position is kept between messages, not re-read from the value)
    assert e.values[("curve", None)] == "equal_power"
    play(s, e, *[(0xB0, 22, 1)] * 6)
    assert e.values[("curve", None)] == "sin2"
    play(s, e, *[(0xB0, 22, 0x41)] * 6)
    assert e.values[("curve", None)] == "equal_power"


def test_soft_takeover_waits_for_the_knob_to_reach_the_value() -> None:
    e = engine()
    s = surface('[[control]]\ncc = 0\ntarget = "/endless/slot/1/gain"\n')
    gain = ("slot/gain", 0)
    assert e.values[gain] == 0.0  # 0 dB is at 0.707 of a fader's travel
    assert play(s, e, (0xB0, 0, 10), (0xB0, 0, 40), (0xB0, 0, 80)) == 0  # below it: nothing moves
    assert e.values[gain] == 0.0
    assert play(s, e, (0xB0, 0, 95)) == 1  # crossed 0.707 (89.8): picked up
    assert e.values[gain] == pytest.approx(20 * math.log10(2 * (95 / 127) ** 2))
    assert play(s, e, (0xB0, 0, 60)) == 1  # from now on it follows the knob, anywhere
    e.handle("/endless/slot/1/gain", [-30.0])  # OSC (or a preset) moves it: the knob lets go
    assert play(s, e, (0xB0, 0, 61)) == 0 and e.values[gain] == -30.0
    pos = s.bound[0].ref.param.to_normalized(-30.0) * 127  # type: ignore[union-attr]
    assert play(s, e, (0xB0, 0, round(pos))) == 1  # reaching the value picks it up again
    jump = surface('[[control]]\ncc = 0\ntarget = "/endless/slot/1/gain"\ntakeover = "jump"\n')
    assert play(jump, e, (0xB0, 0, 0)) == 1 and e.values[gain] == -60.0


def test_range_and_curves() -> None:
    e = engine()
    s = surface('[[control]]\ncc = 1\ntarget = "/endless/xfade"\nmin = 1\nmax = 16\ncurve = "log"\ntakeover = "jump"\n'
                '[[control]]\ncc = 2\ntarget = "/endless/morph/x"\nmin = 1\nmax = 0\ntakeover = "jump"\n'
                '[[control]]\ncc = 3\ntarget = "/endless/morph/y"\ncurve = "exp"\ntakeover = "jump"\n')
    play(s, e, (0xB0, 1, 0))
    assert e.values[("xfade", None)] == pytest.approx(1.0)
    play(s, e, (0xB0, 1, 127))
    assert e.values[("xfade", None)] == pytest.approx(16.0)
    play(s, e, (0xB0, 1, 64))
    assert e.values[("xfade", None)] == pytest.approx(16 ** (64 / 127))
    play(s, e, (0xB0, 2, 127))  # min above max: an inverted control
    assert e.values[("morph/x", None)] == 0.0
    play(s, e, (0xB0, 3, 64))
    assert e.values[("morph/y", None)] == pytest.approx(math.expm1(4 * 64 / 127) / math.expm1(4))
    steps = Binding("cc", 3, "/endless/slot/1/steps", min=1, max=101, curve="exp")
    v = curve_value(steps, REG["slot/steps"], 0.5)
    assert v == round(1 + 100 * math.expm1(2) / math.expm1(4)) and isinstance(v, int)
    assert curve_position(steps, REG["slot/steps"], v) == pytest.approx(0.5, abs=0.01)


def test_buttons_notes_triggers_and_values() -> None:
    e = engine()
    s = surface('[[control]]\ncc = 48\ntarget = "/endless/slot/1/mute"\n'
                '[[control]]\nnote = 60\ntarget = "/endless/slot/2/mute"\nbutton = "momentary"\n'
                '[[control]]\ncc = 61\ntarget = "/endless/morph/mode"\nvalue = "xy"\n'
                '[[control]]\nnote = 36\nchannel = 10\ntarget = "/endless/slot/1/next"\n'
                '[[control]]\nnote = 37\ntarget = "/endless/morph/position"\n')
    play(s, e, (0xB0, 48, 127), (0xB0, 48, 127), (0xB0, 48, 0))  # one press (a repeat is no new press)
    assert e.values[("slot/mute", 0)] is True
    play(s, e, (0xB0, 48, 127), (0xB0, 48, 0))
    assert e.values[("slot/mute", 0)] is False
    play(s, e, (0x90, 60, 100))
    assert e.values[("slot/mute", 1)] is True
    play(s, e, (0x80, 60, 0))
    assert e.values[("slot/mute", 1)] is False
    play(s, e, (0xB0, 61, 127))
    assert e.values[("morph/mode", None)] == "xy"
    fired: list[str] = []
    e.listeners.append(lambda ref, v: fired.append(ref.param.key))
    assert play(s, e, (0x99, 36, 90), (0x89, 36, 0), (0x90, 36, 90)) == 1  # channel 10 only, on note-on
    assert fired == ["slot/next"]
    play(s, e, (0x90, 37, 127))  # a note on a number: velocity is the value
    assert e.values[("morph/position", None)] == 1.0


def test_preset_notes_and_program_change_call_actions() -> None:
    e = engine()
    s = surface('[presets]\nchannel = 16\nprogram_change = true\nglide = 2.5\nnotes = { 36 = "dawn", 38 = 3 }\n'
                '[[control]]\ncc = 59\ntarget = "preset/next"\n')
    calls: list[tuple[str, tuple[object, ...]]] = []

    def sink(action: str, args: tuple[object, ...]) -> None:
        calls.append((action, args))

    for m in [(0x9F, 36, 64), (0x8F, 36, 0), (0x9F, 38, 1), (0x90, 36, 64), (0xCF, 4), (0xC0, 4),
              (0xB0, 59, 127), (0xB0, 59, 0)]:
        s.handle(m, e, sink)
    assert calls == [("preset/recall", ("dawn", 2.5)), ("preset/recall", (3, 2.5)), ("preset/recall", (5, 2.5)),
                     ("preset/next", ())]


def test_feedback_encoding_and_no_echo_of_own_moves() -> None:
    reg = REG
    b = Binding("cc", 5, "/endless/slot/1/mute", 3, feedback=True)
    assert encode_feedback(b, reg["slot/mute"], True) == [(0xB3, 5, 127)]
    n = Binding("note", 40, "/endless/slot/1/solo", 0)
    assert encode_feedback(n, reg["slot/solo"], True) == [(0x90, 40, 127)]
    assert encode_feedback(n, reg["slot/solo"], False) == [(0x80, 40, 0)]
    nr = Binding("nrpn", 300, "/endless/morph/x", 1, curve="linear")
    assert encode_feedback(nr, reg["morph/x"], 1.0) == [(0xB1, 99, 2), (0xB1, 98, 44), (0xB1, 6, 127), (0xB1, 38, 127)]
    e = engine()
    s = surface('[[control]]\ncc = 0\ntarget = "/endless/slot/1/gain"\nfeedback = true\ntakeover = "jump"\n'
                '[[control]]\ncc = 16\nmode = "twos_complement"\ntarget = "/endless/slot/1/gain"\nfeedback = true\n')
    sent: list[tuple[int, ...]] = []
    e.listeners.append(lambda ref, v: sent.extend(s.feedback(ref, v)))
    play(s, e, (0xB0, 0, 100))
    assert sent == [(0xB0, 16, 100)]  # the encoder's ring follows; the fader is not sent its own move
    sent.clear()
    play(s, e, (0xB0, 16, 1))
    assert [m[1] for m in sent] == [0, 16]  # an encoder's own LED ring shows its own moves too
    sent.clear()
    e.handle("/endless/slot/1/gain", [0.0])  # from elsewhere: both controls follow
    assert sent == [(0xB0, 0, 90), (0xB0, 16, 90)]
    # a button's LED shows its own presses (nanoKONTROL2 in external LED mode)
    nano = Surface(load_mapping(ROOT / "mappings" / "nanokontrol2.toml", REG), REG)
    sent.clear()
    e.listeners[-1] = lambda ref, v: sent.extend(nano.feedback(ref, v))
    play(nano, e, (0xB0, 48, 127), (0xB0, 48, 0), (0xB0, 62, 127), (0xB0, 62, 0))
    assert sent == [(0xB0, 48, 127), (0xB0, 60, 0), (0xB0, 61, 0), (0xB0, 62, 127)]
    assert e.values[("slot/mute", 0)] is True and e.values[("morph/mode", None)] == "xy"
    assert (0xB0, 48, 127) in nano.feedback_all(e.values) and (0xB0, 49, 0) in nano.feedback_all(e.values)


def test_no_print_in_library_code() -> None:
    for f in (ROOT / "instrument" / "control").glob("*.py"):
        if f.name in ("midi.py", "midi_ports.py", "learn.py", "mapkeys.py", "mapfile.py", "decode.py",
                      "surface.py", "mapdoc.py", "presets.py", "arming.py"):
            assert "print(" not in f.read_text(), f


def test_doctests() -> None:
    import doctest

    from instrument.control import decode, mapdoc, mapfile, mapkeys, midi_ports, surface

    for mod in (mapkeys, mapfile, decode, surface, mapdoc, midi_ports):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__
