"""MIDI: the mapping format, decoders (14-bit CC, NRPN, relative encoders), soft takeover, buttons,
feedback, MIDI learn, and real JACK MIDI: a virtual port fed by `jack_midiseq`, a port found by
pattern that vanishes and returns, feedback read back by `jack_midi_dump`."""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from instrument.control.mappings import (
    Binding,
    Decoder,
    Hit,
    Surface,
    curve_position,
    curve_value,
    encode_feedback,
    load_mapping,
    mapping_reference,
    parse_mapping,
)
from instrument.control.midi import MidiConfig, MidiControl, transport_feed
from instrument.control.presets import ControlActions, PresetStore
from instrument.engine import Engine
from instrument.errors import ConfigError, ParamError
from instrument.params import Registry
from instrument.rt import MixerConfig

ROOT = Path(__file__).resolve().parents[1]
JACK_BACKEND = "mido.backends.rtmidi/UNIX_JACK"
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
    calls: list[tuple[str, object, object]] = []

    def sink(action: str, preset: str | int | None, glide: float | None) -> None:
        calls.append((action, preset, glide))

    for m in [(0x9F, 36, 64), (0x8F, 36, 0), (0x9F, 38, 1), (0x90, 36, 64), (0xCF, 4), (0xC0, 4),
              (0xB0, 59, 127), (0xB0, 59, 0)]:
        s.handle(m, e, sink)
    assert calls == [("preset/recall", "dawn", 2.5), ("preset/recall", 3, 2.5), ("preset/recall", 5, 2.5),
                     ("preset/next", None, None)]


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


# == learn (no ports: messages injected as if they had arrived) =====================================
def _learn(tmp_path: Path, text: str | None, target: str, msgs: list[tuple[int, ...]],
           preset: str | None = None) -> tuple[MidiControl, Path]:
    path = tmp_path / "mine.toml"
    if text is not None:
        path.write_text(text)
    reg = REG
    m = load_mapping(path, reg) if text is not None else parse_mapping("version = 1\n", "new", reg)
    midi = MidiControl(MidiConfig(learn_path=path), Surface(m, reg), on_event=lambda s: None)
    e = engine()
    midi.learn(target, preset)
    t0 = time.monotonic() - 1.0  # as if they had arrived a second ago: the learn window has passed
    for i, msg in enumerate(msgs):
        midi.inject(msg, t=t0 + i * 0.001)
    midi.drain(e)
    return midi, path


@pytest.mark.parametrize("msgs, expect", [
    ([(0xB2, 7, 100), (0xB2, 7, 101)], Binding("cc", 7, "/endless/xfade", 2)),
    ([(0xB0, 3, 64), (0xB0, 35, 1), (0xB0, 3, 64), (0xB0, 35, 9)], Binding("cc14", 3, "/endless/xfade", 0)),
    ([(0xB0, 99, 7), (0xB0, 98, 8), (0xB0, 6, 1), (0xB0, 38, 2)], Binding("nrpn", 7 * 128 + 8, "/endless/xfade", 0)),
    ([(0xB0, 99, 0), (0xB0, 98, 9), (0xB0, 6, 1)], Binding("nrpn", 9, "/endless/xfade", 0, bits=7)),
    ([(0x95, 61, 100), (0xB0, 1, 3)], Binding("note", 61, "/endless/xfade", 5)),
])
def test_learn_recognises_the_control_and_saves(tmp_path: Path, msgs: list[tuple[int, ...]], expect: Binding) -> None:
    midi, path = _learn(tmp_path, "# my controller\nversion = 1\n", "/endless/xfade", msgs)
    assert midi.learning is None
    again = load_mapping(path, REG)
    assert again.controls == [expect]
    assert path.read_text().startswith("# my controller\n")  # appended: the user's comments stay


def test_learn_replaces_a_control_and_the_new_binding_works(tmp_path: Path) -> None:
    old = ('version = 1\nname = "mine"\n[presets]\nprogram_change = true\nnotes = { 36 = "dawn" }\n'
           '[[control]]\ncc = 7\nchannel = 1\ntarget = "/endless/morph/x"\n'
           '[[control]]\ncc = 8\ntarget = "/endless/morph/y"\nmin = 0.25\nfeedback = true\n')
    midi, path = _learn(tmp_path, old, "/endless/slot/2/mute", [(0xB0, 7, 127)])
    m = load_mapping(path, REG)
    assert [(b.source, b.number, b.target) for b in m.controls] == [("cc", 8, "/endless/morph/y"),
                                                                     ("cc", 7, "/endless/slot/2/mute")]
    assert m.controls[0] == Binding("cc", 8, "/endless/morph/y", min=0.25, feedback=True)  # rewritten whole
    assert m.name == "mine" and m.presets is not None and m.presets.notes == ((36, "dawn"),)
    assert m.presets.program_change
    e = engine()
    midi.inject((0xB0, 7, 0))
    midi.inject((0xB0, 7, 127))
    midi.drain(e)
    assert e.values[("slot/mute", 1)] is True


def test_learn_without_a_mapping_file_and_learn_actions(tmp_path: Path) -> None:
    midi, path = _learn(tmp_path, None, "preset/recall", [(0x9F, 48, 1)], preset="storm-front")
    assert load_mapping(path, REG).controls == [Binding("note", 48, "preset/recall", 15, preset="storm-front")]
    with pytest.raises(Exception, match="name the preset"):
        midi.learn("preset/arm")
    with pytest.raises(Exception, match="not played from a control"):
        midi.learn("/endless/slot/1/prompt")
    with pytest.raises(Exception, match="unknown address"):
        midi.learn("/endless/slot/1/nothing")


@pytest.mark.parametrize("args, preset", [(("preset/recall", "storm-front"), "storm-front"),
                                          (("preset/arm", 3.0), 3)])  # Pd sends numbers as floats
def test_learn_over_osc_binds_an_action_with_its_preset(tmp_path: Path, args: tuple[object, ...],
                                                        preset: str | int) -> None:
    path = tmp_path / "mine.toml"
    midi = MidiControl(MidiConfig(learn_path=path), Surface(parse_mapping("version = 1\n", "new", REG), REG),
                       on_event=lambda s: None)
    e = engine()
    learn = ControlActions(e, PresetStore(Path("/nonexistent"), ()), midi).osc_handlers()["learn"]
    learn(args)  # /endless/learn preset/recall NAME
    assert midi.learning == args[0]
    midi.inject((0x9F, 48, 1), t=time.monotonic() - 1.0)
    midi.drain(e)
    assert load_mapping(path, REG).controls == [Binding("note", 48, str(args[0]), 15, preset=preset)]
    with pytest.raises(ParamError, match="name the preset"):
        learn(("preset/recall",))
    with pytest.raises(ParamError, match="whole number"):
        learn(("preset/recall", 2.5))
    learn(("/endless/xfade",))
    learn(())  # no address: cancels
    assert midi.learning is None


def test_clock_and_transport_go_to_realtime_handlers() -> None:
    midi = MidiControl(MidiConfig(), surface(""))
    seen: list[tuple[int, ...]] = []
    midi.realtime.append(lambda ev: seen.append(ev.data))
    for m in [(0xFA,), (0xF8,), (0xF8,), (0xF2, 8, 0), (0xFC,)]:
        midi.inject(m)
    midi.drain(engine())
    assert seen == [(0xFA,), (0xF8,), (0xF8,), (0xF2, 8, 0), (0xFC,)]


def test_clock_slaves_the_transport() -> None:
    e = engine()
    midi = MidiControl(MidiConfig(), surface(""))
    frames = iter(range(0, 10**9, 919))  # 24 ticks a beat, 919 frames a tick: 44100 * 60 / (919 * 24) bpm
    midi.realtime.append(transport_feed(e, lambda t: next(frames)))
    for m in [(0xFA,)] + [(0xF8,)] * 49:
        midi.inject(m)
    midi.drain(e)
    assert e.transport.bpm == pytest.approx(44100 * 60 / (919 * 24))
    midi.inject((0xFC,))
    midi.drain(e)
    assert not e.transport.running


def test_bad_messages_are_counted_never_raised() -> None:
    e = engine()
    s = surface('[presets]\nnotes = { 36 = "no-such-preset" }\n')
    events: list[str] = []
    actions = ControlActions(e, PresetStore(Path("/nonexistent"), ()))
    midi = MidiControl(MidiConfig(), s, actions.midi_action, on_event=events.append)
    for m in [(0x90, 36, 1), (0xF0, 1, 2, 0xF7), (0xB0,), (0x90, 200 % 128, 1)]:
        midi.inject(m)
    assert midi.drain(e) == 0
    assert midi.stats.errors == 1 and "no-such-preset" in events[0] and "90 24 01" in events[0]


# == JACK MIDI ====================================================================================
@pytest.fixture
def jack(jack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The JACK env in this process too (libjack reads it when rtmidi opens a client)."""
    for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER", "JACK_NO_AUDIO_RESERVATION"):
        monkeypatch.setenv(k, jack_env[k])
    yield jack_env


@pytest.fixture
def spawn(jack: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a JACK tool (`jack_midiseq`, `jack_midi_dump`) on the test's server; all stopped after."""
    procs: list[subprocess.Popen[str]] = []

    def start(args: list[str], out: bool = False) -> subprocess.Popen[str]:
        p = subprocess.Popen(args, env=jack, text=True,
                             stdout=subprocess.PIPE if out else subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.fixture
def controller(jack: dict[str, str]) -> Iterator[Callable[[str], Any]]:
    """A controller: a mido JACK output port of this test, connected to `client:in`; closed after."""
    import mido

    ports: list[Any] = []

    def connect(client: str) -> Any:
        name = f"ctl{uuid.uuid4().hex[:6]}"
        port = mido.Backend(JACK_BACKEND, load=True).open_output("out", client_name=name)
        ports.append(port)
        subprocess.run(["jack_connect", f"{name}:out", f"{client}:in"], env=jack, check=True, timeout=10)
        return port

    yield connect
    for port in ports:
        port.close()


def _wait(cond: Callable[[], bool], timeout: float, tick: Callable[[], object] = lambda: None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick()
        if cond():
            return True
        time.sleep(0.02)
    return False


def _jack_ports(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["jack_lsp"], env=env, capture_output=True, text=True, timeout=10).stdout
    return out.split("\n")


@pytest.mark.jack
def test_jack_midiseq_recalls_a_preset_through_a_virtual_port(jack: dict[str, str], spawn: Any,
                                                              tmp_path: Path) -> None:
    """A real sequencer (jack_midiseq, looping note 36 on channel 1) connected to our virtual input
    with jack_connect recalls a preset through the mapping's note map; feedback goes out of our
    virtual output to jack_midi_dump."""
    e = engine()
    reg = e.registry
    store = PresetStore(tmp_path / "user", [ROOT / "presets"])
    mapping = parse_mapping('version = 1\n[presets]\nnotes = { 36 = "storm-front" }\n'
                            '[[control]]\ncc = 9\ntarget = "/endless/slot/1/gain"\nfeedback = true\n', "t", reg)
    actions = ControlActions(e, store)
    client = f"endless{uuid.uuid4().hex[:6]}"
    midi = MidiControl(MidiConfig(virtual=True, client_name=client, backend=JACK_BACKEND),
                       Surface(mapping, reg), actions.midi_action, on_event=lambda s: None)
    seq = f"seq{uuid.uuid4().hex[:6]}"
    dump_name = f"dump{uuid.uuid4().hex[:6]}"
    try:
        midi.start()
        assert {midi.virtual_in, midi.virtual_out} == {f"{client}:in", f"{client}-feedback:out"}
        assert {midi.virtual_in, midi.virtual_out} <= set(_jack_ports(jack))
        dump = spawn(["jack_midi_dump", dump_name], out=True)
        spawn(["jack_midiseq", seq, "11025", "0", "36", "2000"])  # 36 every 0.25 s
        assert _wait(lambda: f"{seq}:out" in _jack_ports(jack) and f"{dump_name}:input" in _jack_ports(jack), 10)
        subprocess.run(["jack_connect", f"{seq}:out", f"{client}:in"], env=jack, check=True, timeout=10)
        subprocess.run(["jack_connect", midi.virtual_out, f"{dump_name}:input"], env=jack, check=True, timeout=10)
        assert e.values[("slot/gain", 0)] == 0.0
        assert _wait(lambda: actions.current == "storm-front", 5, lambda: midi.drain(e))
        assert e.values[("slot/gain", 1)] == 0.0 and e.values[("slot/gain", 0)] == -2.0
        assert e.values[("xfade", None)] == 3.0 and e.values[("master/gain", None)] == -2.0
        assert midi.stats.received >= 1 and midi.stats.dropped == 0
        e.handle("/endless/slot/1/gain", [-60.0])  # feedback: CC 9 -> 0 on channel 1
        time.sleep(0.3)
        dump.terminate()
        text = dump.communicate(timeout=10)[0]
        assert "b0 09 00" in text.lower()
    finally:
        midi.close()


@pytest.mark.jack
def test_port_by_pattern_vanishes_and_returns(spawn: Any) -> None:
    e = engine()
    reg = e.registry
    s = Surface(parse_mapping('version = 1\n[[control]]\nnote = 40\ntarget = "/endless/slot/2/mute"\n'
                              'button = "momentary"\n', "t", reg), reg)
    events: list[str] = []
    seq = f"vanish{uuid.uuid4().hex[:6]}"
    other = f"Other{uuid.uuid4().hex[:6]}"
    midi = MidiControl(MidiConfig(inputs=(f"^{seq}:", other.lower()), backend=JACK_BACKEND, poll_seconds=0.2,
                                  client_name=f"endless{uuid.uuid4().hex[:6]}"), s, on_event=events.append)
    args = ["jack_midiseq", seq, "4410", "0", "40", "2000"]  # note 40 on for 2000 of every 4410 samples
    try:
        midi.start()
        assert midi.inputs == [] and sum("no MIDI input matches" in ev for ev in events) == 2
        first = spawn(args)
        spawn(["jack_midiseq", other, "44100", "0", "50", "100"])  # a regex and a name part
        assert _wait(lambda: midi.inputs == sorted([f"{seq}:out", f"{other}:out"]), 10)
        assert _wait(lambda: midi.stats.applied >= 2, 5, lambda: midi.drain(e))
        first.terminate()
        first.wait(10)
        assert _wait(lambda: any("disappeared" in ev for ev in events), 10) and midi.inputs == [f"{other}:out"]
        applied = midi.stats.applied
        spawn(args)
        assert _wait(lambda: any("is back" in ev for ev in events), 10)
        assert _wait(lambda: midi.stats.applied >= applied + 2, 5, lambda: midi.drain(e))
        assert midi.stats.vanished == 1 and midi.stats.opened == 3
    finally:
        midi.close()


@pytest.mark.jack
def test_learn_and_14bit_through_jack(controller: Any, tmp_path: Path) -> None:
    """A controller (a mido port of this test) sends a 14-bit CC pair: learn binds it, then it plays."""
    import mido

    e = engine()
    reg = e.registry
    client = f"endless{uuid.uuid4().hex[:6]}"
    midi = MidiControl(MidiConfig(virtual=True, client_name=client, backend=JACK_BACKEND,
                                  learn_path=tmp_path / "learned.toml"),
                       Surface(parse_mapping("version = 1\n", "t", reg), reg), on_event=lambda s: None)
    try:
        midi.start()
        ctl = controller(client)
        midi.learn("/endless/morph/x")
        for msb, lsb in ((60, 0), (61, 0)):
            ctl.send(mido.Message("control_change", channel=4, control=2, value=msb))
            ctl.send(mido.Message("control_change", channel=4, control=34, value=lsb))
        assert _wait(lambda: midi.learning is None, 5, lambda: midi.drain(e))
        assert load_mapping(tmp_path / "learned.toml", reg).controls == [Binding("cc14", 2, "/endless/morph/x", 4)]
        # pick up at 0.5 (8192 = 64 << 7), then follow the 14-bit value
        for msb, lsb in ((64, 0), (100, 5)):
            ctl.send(mido.Message("control_change", channel=4, control=2, value=msb))
            ctl.send(mido.Message("control_change", channel=4, control=34, value=lsb))
        assert _wait(lambda: e.values[("morph/x", None)] == pytest.approx((100 << 7 | 5) / 16383), 5,
                     lambda: midi.drain(e))
        # MIDI clock gets through (rtmidi drops it unless told not to) and drives the transport
        midi.realtime.append(transport_feed(e, lambda t: int(t * 44100)))
        ctl.send(mido.Message("start"))
        for _ in range(25):  # 20 ms a tick: 125 bpm
            ctl.send(mido.Message("clock"))
            time.sleep(0.02)
        assert _wait(lambda: e.transport.running and e.transport.source == "midi", 5, lambda: midi.drain(e))
        assert e.transport.bpm == pytest.approx(125, rel=0.1)
    finally:
        midi.close()


@pytest.mark.jack
def test_immediate_applies_on_rtmidis_thread_when_the_engine_is_free(controller: Any) -> None:
    """`immediate` (what `endless play` uses): a CC through JACK changes the gain with no drain() on
    this thread; while the control loop holds the engine's lock, it waits for the next drain, and
    so does a note."""
    import threading

    import mido

    e = engine()
    client = f"endless{uuid.uuid4().hex[:6]}"
    wake = threading.Event()
    midi = MidiControl(MidiConfig(virtual=True, client_name=client, backend=JACK_BACKEND, immediate=True),
                       surface('[[control]]\ncc = 7\ntarget = "/endless/slot/1/gain"\nmin = -60\nmax = 0\n'
                               'takeover = "jump"\n[[control]]\nnote = 48\ntarget = "/endless/slot/2/mute"\n'),
                       wake=wake)
    gain = ("slot/gain", 0)
    try:
        midi.start()
        midi.attach(e)  # the control loop's first drain does this
        ctl = controller(client)
        ctl.send(mido.Message("control_change", channel=0, control=7, value=0))
        assert _wait(lambda: e.values[gain] == -60.0, 5)  # no tick: applied where it arrived
        assert not wake.is_set() and len(midi.timing) == 1
        with e.lock:  # the control loop is in its tick
            ctl.send(mido.Message("control_change", channel=0, control=7, value=127))
            assert wake.wait(5)
            assert e.values[gain] == -60.0
        assert midi.drain(e) == 1 and e.values[gain] == 0.0
        # a note (it may be a preset trigger: files) always goes through the control thread
        wake.clear()
        ctl.send(mido.Message("note_on", channel=0, note=48, velocity=100))
        assert wake.wait(5) and e.values[("slot/mute", 1)] is False
        assert midi.drain(e) == 1 and e.values[("slot/mute", 1)] is True
        # MIDI clock waiting in the inbox does not hold a CC back: it is applied with it
        midi.realtime.append(transport_feed(e))
        with e.lock:
            ctl.send(mido.Message("start"))
            ctl.send(mido.Message("clock"))
            assert _wait(lambda: len(midi._inbox) == 2, 5)
        ctl.send(mido.Message("control_change", channel=0, control=7, value=0))
        assert _wait(lambda: e.values[gain] == -60.0, 5) and not midi._inbox
        assert e.transport.running
    finally:
        midi.close()


def test_config_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="MIDO_BACKEND"):
        MidiControl(MidiConfig(backend="mido.backends.nope")).start()
    # no ALSA sequencer here and no JACK server named: one line saying what to do
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"absent{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    for backend in ("mido.backends.rtmidi/LINUX_ALSA", JACK_BACKEND):
        with pytest.raises(ConfigError, match="MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK"):
            MidiControl(MidiConfig(inputs=("x",), backend=backend)).start()


def test_no_print_in_library_code() -> None:
    for f in (ROOT / "instrument" / "control").glob("*.py"):
        if f.name in ("midi.py", "mappings.py", "presets.py", "arming.py"):
            assert "print(" not in f.read_text(), f


def test_doctests() -> None:
    import doctest

    from instrument.control import mappings, midi

    for mod in (mappings, midi):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__
