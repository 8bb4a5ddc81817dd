"""MidiControl on the control bus: which messages apply where they arrive and which wait for the
control thread, arrival order, feedback from the sender thread, MIDI learn, MIDI clock, bad
messages, and real JACK MIDI: a virtual port fed by `jack_midiseq`, a port found by pattern that
vanishes and returns, feedback read back by `jack_midi_dump`."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from instrument.control.actions import Actions, Done
from instrument.control.bus import ControlBus, Job
from instrument.control.mapfile import Binding, load_mapping, parse_mapping
from instrument.control.midi import MidiConfig, MidiControl
from instrument.control.presets import PresetStore
from instrument.control.surface import Surface
from instrument.engine import Engine
from instrument.errors import ConfigError, ParamError
from instrument.params import Registry
from instrument.rt import MixerConfig

ROOT = Path(__file__).resolve().parents[1]
JACK_BACKEND = "mido.backends.rtmidi/UNIX_JACK"
REG = Registry(slots=4)
NO_PRESETS = PresetStore(Path("/nonexistent"), ())
NO_PORTS = MidiConfig()


def engine(slots: int = 4) -> Engine:
    return Engine(MixerConfig(slots=slots, sample_rate=44100))


def surface(body: str, slots: int = 4) -> Surface:
    reg = Registry(slots=slots)
    return Surface(parse_mapping("version = 1\n" + body, "test.toml", reg), reg)


def rig(s: Surface, cfg: MidiConfig = NO_PORTS, e: Engine | None = None, store: PresetStore = NO_PRESETS,
        **kw: Any) -> tuple[MidiControl, ControlBus, Engine, Actions]:
    """A MidiControl on a bus, its `learn` hook given to the actions as `endless play` does."""
    e = e or engine()
    bus = ControlBus(e)
    midi: MidiControl | None = None

    def learn(target: str | None, preset: str | int | None) -> None:
        assert midi is not None
        midi.learn(target, preset)

    actions = Actions(e, store, learn=learn)
    midi = MidiControl(cfg, s, bus, actions, on_event=kw.pop("on_event", lambda text: None), **kw)
    return midi, bus, e, actions


def drain(bus: ControlBus) -> int:
    """What the control loop does every tick."""
    with bus.engine.lock:
        return bus.drain()


def settle(midi: MidiControl) -> None:
    """Two control-loop ticks: what waits, then what the learn window's end submits."""
    drain(midi.bus)
    midi.tick()
    drain(midi.bus)


# == on the bus ===================================================================================
GAIN_AND_MUTE = ('[[control]]\ncc = 7\ntarget = "/endless/slot/1/gain"\nmin = -60\nmax = 0\ntakeover = "jump"\n'
                 '[[control]]\nnote = 48\ntarget = "/endless/slot/2/mute"\n')


def _changes(e: Engine) -> list[tuple[str, int | None, object, int]]:
    seen: list[tuple[str, int | None, object, int]] = []
    e.listeners.append(lambda ref, v: seen.append((ref.param.key, ref.slot, v, threading.get_ident())))
    return seen


def test_a_cc_waits_while_the_engine_is_busy_and_applies_in_arrival_order() -> None:
    """A CC arriving while another thread holds the engine lock is applied by the control thread's
    drain, in arrival order, behind the messages queued before it (a note among them)."""
    midi, bus, e, _ = rig(surface(GAIN_AND_MUTE))
    seen = _changes(e)
    held, release = threading.Event(), threading.Event()

    def control_loop_tick() -> None:
        with e.lock:
            held.set()
            release.wait(5)

    busy = threading.Thread(target=control_loop_tick)
    busy.start()
    assert held.wait(5)
    midi.inject((0xB0, 7, 0))  # a fader: may apply where it arrives, but the engine is busy
    midi.inject((0x90, 48, 100))  # a note: the control thread's
    midi.inject((0xB0, 7, 127))  # queued behind the note
    assert seen == [] and bus.pending() == 3 and bus.wake.is_set()
    release.set()
    busy.join(5)
    assert drain(bus) == 3
    assert [c[:3] for c in seen] == [("slot/gain", 0, -60.0), ("slot/mute", 1, True), ("slot/gain", 0, 0.0)]
    assert {c[3] for c in seen} == {threading.get_ident()}
    assert len(midi.timing) == 3 and [a for a, _ in midi.timing] == sorted(a for a, _ in midi.timing)
    assert midi.stats.applied == 3 and midi.stats.received == 3


def test_only_parameter_ccs_and_clock_apply_where_they_arrive() -> None:
    midi, bus, e, _ = rig(surface(GAIN_AND_MUTE))
    seen = _changes(e)
    midi.inject((0xB0, 7, 0))
    midi.inject((0xFA,))
    assert bus.pending() == 0 and seen[-1][:3] == ("slot/gain", 0, -60.0) and e.transport.running
    midi.inject((0x90, 48, 100))  # a note may be a preset trigger (files): the control thread's
    assert bus.pending() == 1 and len(seen) == 1
    drain(bus)
    midi.learn("/endless/morph/x")  # learning ends by saving the mapping: every message waits
    midi.inject((0xB0, 7, 127))
    assert bus.pending() == 1 and e.values[("slot/gain", 0)] == -60.0
    midi.learn(None)
    drain(bus)
    # a CC bound to an action: every CC waits (it may recall a preset)
    with_action, bus2, e2, _ = rig(surface(GAIN_AND_MUTE + '[[control]]\ncc = 59\ntarget = "preset/next"\n'))
    with_action.inject((0xB0, 7, 0))
    assert bus2.pending() == 1 and e2.values[("slot/gain", 0)] == 0.0
    drain(bus2)
    assert e2.values[("slot/gain", 0)] == -60.0


# == feedback from the sender thread ===============================================================
class FakeOutput:
    """A feedback port given at the edge (a fake mido backend): records who sends what."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, tuple[int, ...]]] = []  # (thread id, message)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def send(self, msg: Any) -> None:
        self.entered.set()
        assert self.gate.wait(5)
        self.sent.append((threading.get_ident(), tuple(msg.bytes())))

    def close(self) -> None:
        pass


class FakeBackend:
    def __init__(self, out: FakeOutput) -> None:
        self.out = out

    def get_input_names(self) -> list[str]:
        return []

    def get_output_names(self) -> list[str]:
        return ["Fake Controller MIDI 1"]

    def open_output(self, name: str) -> FakeOutput:
        return self.out

    def open_input(self, name: str, callback: Any = None) -> Any:
        raise AssertionError("no inputs here")


FEEDBACK = '[[control]]\ncc = 9\ntarget = "/endless/slot/1/gain"\nmin = -60\nmax = 0\nfeedback = true\n'


def _wait(cond: Callable[[], bool], timeout: float, tick: Callable[[], object] = lambda: None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick()
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_feedback_is_sent_from_the_sender_thread_never_the_applying_one() -> None:
    out = FakeOutput()
    midi, bus, e, _ = rig(surface(FEEDBACK), MidiConfig(outputs=("fake",), poll_seconds=60), backend=FakeBackend(out))
    applied_on: list[int] = []

    def set_gain(e: Engine) -> None:
        applied_on.append(threading.get_ident())
        e.handle("/endless/slot/1/gain", [-60.0])

    try:
        midi.start()
        assert midi.outputs == ["Fake Controller MIDI 1"]
        assert _wait(lambda: len(out.sent) == 1, 5)  # the state on opening: 0 dB
        applier = threading.Thread(target=lambda: bus.submit(Job(set_gain, "test")))
        applier.start()
        applier.join(5)
        assert _wait(lambda: (0xB0, 9, 0) in [m for _, m in out.sent], 5)
    finally:
        midi.close()
    assert applied_on and applied_on[0] not in (threading.get_ident(), midi.sender.ident)  # on the applier
    assert [m for _, m in out.sent] == [(0xB0, 9, 127), (0xB0, 9, 0)]
    senders = {ident for ident, _ in out.sent}
    assert len(senders) == 1 and senders.isdisjoint({applied_on[0], threading.get_ident()})
    assert midi._listener not in e.listeners


def test_feedback_waiting_for_a_slow_port_keeps_only_the_newest_value() -> None:
    """A port that blocks holds only the sender: changes go on, and what waits is one entry a
    parameter, the newest."""
    out = FakeOutput()
    out.gate.clear()  # the port blocks on its first message (the state sent on opening)
    midi, bus, e, _ = rig(surface(FEEDBACK), MidiConfig(outputs=("fake",), poll_seconds=60), backend=FakeBackend(out))
    try:
        midi.start()
        assert out.entered.wait(5)
        for db in [*range(-60, 0), 0]:  # 61 changes, ending where it began
            bus.submit(Job(lambda e, db=db: e.handle("/endless/slot/1/gain", [float(db)]), "test"))
        assert bus.pending() == 0  # applied on this thread, none waited for the port
        out.gate.set()
        assert _wait(lambda: len(out.sent) == 2, 5)
        time.sleep(0.1)
    finally:
        midi.close()
    assert [m for _, m in out.sent] == [(0xB0, 9, 127), (0xB0, 9, 127)]  # the opening state, then 0 dB once


# == learn (no ports: messages injected as if they had arrived) =====================================
def _learn(tmp_path: Path, text: str | None, target: str, msgs: list[tuple[int, ...]],
           preset: str | None = None) -> tuple[MidiControl, Path]:
    path = tmp_path / "mine.toml"
    if text is not None:
        path.write_text(text)
    m = load_mapping(path, REG) if text is not None else parse_mapping("version = 1\n", "new", REG)
    midi, *_ = rig(Surface(m, REG), MidiConfig(learn_path=path))
    midi.learn(target, preset)
    t0 = time.monotonic() - 1.0  # as if they had arrived a second ago: the learn window has passed
    for i, msg in enumerate(msgs):
        midi.inject(msg, t=t0 + i * 0.001)
    settle(midi)
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


def test_learn_waits_for_the_window_before_deciding(tmp_path: Path) -> None:
    midi, *_ = rig(surface(""), MidiConfig(learn_path=tmp_path / "l.toml"))
    midi.learn("/endless/xfade")
    midi.inject((0xB0, 3, 64))  # the MSB of a 14-bit pair, maybe: its LSB may follow
    settle(midi)
    assert midi.learning == "/endless/xfade" and not (tmp_path / "l.toml").exists()


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
    e = midi.bus.engine
    midi.inject((0xB0, 7, 0))
    midi.inject((0xB0, 7, 127))
    drain(midi.bus)
    assert e.values[("slot/mute", 1)] is True


def test_learn_without_a_mapping_file_and_learn_actions(tmp_path: Path) -> None:
    midi, path = _learn(tmp_path, None, "preset/recall", [(0x9F, 48, 1)], preset="storm-front")
    assert load_mapping(path, REG).controls == [Binding("note", 48, "preset/recall", 15, preset="storm-front")]
    with pytest.raises(ParamError, match="name the preset"):
        midi.learn("preset/arm")
    with pytest.raises(ParamError, match="not played from a control"):
        midi.learn("/endless/slot/1/prompt")
    with pytest.raises(ParamError, match="unknown address"):
        midi.learn("/endless/slot/1/nothing")


@pytest.mark.parametrize("args, preset", [(("preset/recall", "storm-front"), "storm-front"),
                                          (("preset/arm", 3.0), 3)])  # Pd sends numbers as floats
def test_learn_over_osc_binds_an_action_with_its_preset(tmp_path: Path, args: tuple[object, ...],
                                                        preset: str | int) -> None:
    path = tmp_path / "mine.toml"
    midi, bus, e, actions = rig(surface(""), MidiConfig(learn_path=path))
    actions.run("learn", args)  # /endless/learn preset/recall NAME
    assert midi.learning == args[0]
    told: list[Done] = []
    actions.listeners.append(told.append)  # as OSC's feedback listens
    midi.inject((0x9F, 48, 1), t=time.monotonic() - 1.0)
    drain(bus)
    assert load_mapping(path, REG).controls == [Binding("note", 48, str(args[0]), 15, preset=preset)]
    assert told == [Done("learn", Binding("note", 48, str(args[0]), 15, preset=preset).describe())]
    with pytest.raises(ParamError, match="name the preset"):
        actions.run("learn", ("preset/recall",))
    with pytest.raises(ParamError, match="its number in the list"):
        actions.run("learn", ("preset/recall", 2.5))
    actions.run("learn", ("/endless/xfade",))
    actions.run("learn", ())  # no address: cancels
    assert midi.learning is None


# == clock, actions, bad messages ====================================================================
def test_clock_and_transport_messages_drive_the_transport() -> None:
    frames = iter(range(1000, 10**9, 1000))
    midi, bus, e, _ = rig(surface(""), frame_at=lambda t: next(frames))
    tr = e.transport
    midi.inject((0xFA,))  # start
    assert tr.running and tr.source == "midi"
    for m in [(0xF8,), (0xF8,), (0xFC,)]:  # two ticks, stop
        midi.inject(m)
    assert not tr.running
    midi.inject((0xF2, 8, 0))  # song position: 8 sixteenths, two beats
    midi.inject((0xFB,))  # continue
    midi.inject((0xF8,))  # this tick is beat 2
    assert tr.running and tr.beat_at(3000) == pytest.approx(2.0)
    assert bus.pending() == 0


def test_clock_slaves_the_transport() -> None:
    frames = iter(range(0, 10**9, 919))  # 24 ticks a beat, 919 frames a tick: 44100 * 60 / (919 * 24) bpm
    midi, bus, e, _ = rig(surface(""), frame_at=lambda t: next(frames))
    for m in [(0xFA,)] + [(0xF8,)] * 49:
        midi.inject(m)
    assert e.transport.bpm == pytest.approx(44100 * 60 / (919 * 24))
    midi.inject((0xFC,))
    assert not e.transport.running


def test_actions_from_notes_and_program_change_run_on_the_control_thread(tmp_path: Path) -> None:
    store = PresetStore(tmp_path / "user", [ROOT / "presets"])
    midi, bus, e, actions = rig(surface('[presets]\nprogram_change = true\nglide = 0\n'
                                        'notes = { 36 = "storm-front" }\n'), store=store)
    midi.inject((0x90, 36, 64))
    assert actions.current is None and bus.pending() == 1
    drain(bus)
    assert actions.current == "storm-front" and e.values[("slot/gain", 0)] == -2.0
    midi.inject((0xC0, 0))  # program 0: preset number 1
    drain(bus)
    assert actions.current == store.names()[0]
    assert midi.stats.applied == 2 and midi.stats.errors == 0


def test_bad_messages_are_counted_never_raised() -> None:
    events: list[str] = []
    midi, bus, e, _ = rig(surface('[presets]\nnotes = { 36 = "no-such-preset" }\n'), on_event=events.append)
    values = dict(e.values)
    for m in [(0x90, 36, 1), (0xF0, 1, 2, 0xF7), (0xB0,), (0x90, 200 % 128, 1)]:
        midi.inject(m)
    drain(bus)
    assert e.values == values and midi.stats.applied == 0 and bus.stats.errors == 0
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
    client = f"endless{uuid.uuid4().hex[:6]}"
    midi, bus, e, actions = rig(Surface(mapping, reg), MidiConfig(virtual=True, client_name=client,
                                                                  backend=JACK_BACKEND), e, store)
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
        assert _wait(lambda: actions.current == "storm-front", 5, lambda: drain(bus))
        assert e.values[("slot/gain", 1)] == 0.0 and e.values[("slot/gain", 0)] == -2.0
        assert e.values[("xfade", None)] == 3.0 and e.values[("master/gain", None)] == -2.0
        assert midi.stats.received >= 1 and midi.stats.dropped == 0
        bus.submit(Job(lambda e: e.handle("/endless/slot/1/gain", [-60.0]), "test"))  # feedback: CC 9 -> 0
        time.sleep(0.3)
        dump.terminate()
        text = dump.communicate(timeout=10)[0]
        assert "b0 09 00" in text.lower()
    finally:
        midi.close()


@pytest.mark.jack
def test_port_by_pattern_vanishes_and_returns(spawn: Any) -> None:
    s = surface('[[control]]\nnote = 40\ntarget = "/endless/slot/2/mute"\nbutton = "momentary"\n')
    events: list[str] = []
    seq = f"vanish{uuid.uuid4().hex[:6]}"
    other = f"Other{uuid.uuid4().hex[:6]}"
    midi, bus, e, _ = rig(s, MidiConfig(inputs=(f"^{seq}:", other.lower()), backend=JACK_BACKEND, poll_seconds=0.2,
                                        client_name=f"endless{uuid.uuid4().hex[:6]}"), on_event=events.append)
    args = ["jack_midiseq", seq, "4410", "0", "40", "2000"]  # note 40 on for 2000 of every 4410 samples
    try:
        midi.start()
        assert midi.inputs == [] and sum("no MIDI input matches" in ev for ev in events) == 2
        first = spawn(args)
        spawn(["jack_midiseq", other, "44100", "0", "50", "100"])  # a regex and a name part
        assert _wait(lambda: midi.inputs == sorted([f"{seq}:out", f"{other}:out"]), 10)
        assert _wait(lambda: midi.stats.applied >= 2, 5, lambda: drain(bus))
        first.terminate()
        first.wait(10)
        assert _wait(lambda: any("disappeared" in ev for ev in events), 10) and midi.inputs == [f"{other}:out"]
        applied = midi.stats.applied
        spawn(args)
        assert _wait(lambda: any("is back" in ev for ev in events), 10)
        assert _wait(lambda: midi.stats.applied >= applied + 2, 5, lambda: drain(bus))
        assert midi.stats.vanished == 1 and midi.stats.opened == 3
    finally:
        midi.close()


@pytest.mark.jack
def test_learn_and_14bit_through_jack(controller: Any, tmp_path: Path) -> None:
    """A controller (a mido port of this test) sends a 14-bit CC pair: learn binds it, then it plays."""
    import mido

    client = f"endless{uuid.uuid4().hex[:6]}"
    midi, bus, e, _ = rig(surface(""), MidiConfig(virtual=True, client_name=client, backend=JACK_BACKEND,
                                                  learn_path=tmp_path / "learned.toml"),
                          frame_at=lambda t: int(t * 44100))
    reg = e.registry

    def tick() -> None:
        drain(bus)
        midi.tick()

    try:
        midi.start()
        ctl = controller(client)
        midi.learn("/endless/morph/x")
        for msb, lsb in ((60, 0), (61, 0)):
            ctl.send(mido.Message("control_change", channel=4, control=2, value=msb))
            ctl.send(mido.Message("control_change", channel=4, control=34, value=lsb))
        assert _wait(lambda: midi.learning is None, 5, tick)
        assert load_mapping(tmp_path / "learned.toml", reg).controls == [Binding("cc14", 2, "/endless/morph/x", 4)]
        # pick up at 0.5 (8192 = 64 << 7), then follow the 14-bit value
        for msb, lsb in ((64, 0), (100, 5)):
            ctl.send(mido.Message("control_change", channel=4, control=2, value=msb))
            ctl.send(mido.Message("control_change", channel=4, control=34, value=lsb))
        assert _wait(lambda: e.values[("morph/x", None)] == pytest.approx((100 << 7 | 5) / 16383), 5, tick)
        # MIDI clock gets through (rtmidi drops it unless told not to) and drives the transport
        ctl.send(mido.Message("start"))
        for _ in range(25):  # 20 ms a tick: 125 bpm
            ctl.send(mido.Message("clock"))
            time.sleep(0.02)
        assert _wait(lambda: e.transport.running and e.transport.source == "midi", 5, tick)
        assert e.transport.bpm == pytest.approx(125, rel=0.1)
    finally:
        midi.close()


@pytest.mark.jack
def test_ccs_apply_on_rtmidis_thread_when_the_engine_is_free(controller: Any) -> None:
    """A CC through JACK changes the gain with no drain() on this thread; while the control loop
    holds the engine's lock, it waits for the next drain, and so does a note."""
    import mido

    client = f"endless{uuid.uuid4().hex[:6]}"
    midi, bus, e, _ = rig(surface(GAIN_AND_MUTE), MidiConfig(virtual=True, client_name=client, backend=JACK_BACKEND))
    seen = _changes(e)
    gain = ("slot/gain", 0)
    try:
        midi.start()
        ctl = controller(client)
        bus.wake.clear()
        ctl.send(mido.Message("control_change", channel=0, control=7, value=0))
        assert _wait(lambda: e.values[gain] == -60.0, 5)  # no tick: applied where it arrived
        assert not bus.wake.is_set() and len(midi.timing) == 1 and seen[-1][3] != threading.get_ident()
        with e.lock:  # the control loop is in its tick
            ctl.send(mido.Message("control_change", channel=0, control=7, value=127))
            assert bus.wake.wait(5)
            assert e.values[gain] == -60.0
        assert drain(bus) == 1 and e.values[gain] == 0.0
        # a note (it may be a preset trigger: files) always goes through the control thread
        bus.wake.clear()
        ctl.send(mido.Message("note_on", channel=0, note=48, velocity=100))
        assert bus.wake.wait(5) and e.values[("slot/mute", 1)] is False
        assert drain(bus) == 1 and e.values[("slot/mute", 1)] is True
        # MIDI clock waiting on the bus does not hold a CC back: it is applied with it
        with e.lock:
            ctl.send(mido.Message("start"))
            ctl.send(mido.Message("clock"))
            assert _wait(lambda: bus.pending() == 2, 5)
        ctl.send(mido.Message("control_change", channel=0, control=7, value=0))
        assert _wait(lambda: e.values[gain] == -60.0, 5) and bus.pending() == 0
        assert e.transport.running
    finally:
        midi.close()


def test_config_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="MIDO_BACKEND"):
        rig(surface(""), MidiConfig(backend="mido.backends.nope"))[0].start()
    # no ALSA sequencer here and no JACK server named: one line saying what to do
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"absent{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    for backend in ("mido.backends.rtmidi/LINUX_ALSA", JACK_BACKEND):
        with pytest.raises(ConfigError, match="MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK"):
            rig(surface(""), MidiConfig(inputs=("x",), backend=backend))[0].start()
