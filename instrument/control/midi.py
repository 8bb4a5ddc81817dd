"""MIDI input and feedback output through mido: ports, a watcher, the inbox, MIDI learn.

Threads: python-rtmidi calls `arrived` on its own thread for every message (with JACK, the JACK
client's process thread); it stamps the time (`time.monotonic()`, since mido drops rtmidi's
timestamps) and appends to a bounded inbox. With `MidiConfig.immediate` (what `endless play`
uses) a control change that sets a parameter then applies the inbox itself when `engine.lock` is
free (the control loop is asleep): one thread hand-off less between a knob and the sound (see
`_immediate_ok`: notes, program changes, CC-bound actions, and everything during MIDI learn stay
with the control thread, so no preset or mapping file is read or written on MIDI's thread).
Otherwise it wakes the control thread,
which calls `drain(engine)` holding the lock; `drain` decodes and applies everything waiting
through the mapping (`Surface`) in arrival order. A watcher thread lists the ports every
`poll_seconds`: a port that vanished is reported and closed, one that (re)appears is opened.
Feedback goes out from whichever thread changed a parameter.

Ports are chosen by pattern: a case-insensitive part of the name, or a regular expression
(`--midi-in nano --midi-in "^seq:"`); each pattern may open several ports. Our own ports are never
opened as inputs (no feedback loops).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instrument.control.mappings import (
    ACTIONS,
    LEARN_WINDOW,
    ActionSink,
    Binding,
    Mapping,
    Surface,
    format_control,
    mapping_to_toml,
    resolve_target,
)
from instrument.control.tomlfile import write_atomic
from instrument.errors import ConfigError, EndlessError, ParamError
from instrument.params import Ref, Value

if TYPE_CHECKING:
    from instrument.engine import Engine

log = logging.getLogger(__name__)

REALTIME = frozenset({0xF2, 0xF8, 0xFA, 0xFB, 0xFC})  # song position, clock, start, continue, stop


@dataclass(frozen=True)
class MidiConfig:
    inputs: tuple[str, ...] = ()  # port patterns (part of the name, or a regex); each may match several
    outputs: tuple[str, ...] = ()  # feedback port patterns
    virtual: bool = False  # also open virtual ports `<client>:in` and `<client>-feedback:out` (sequencers, DAWs)
    client_name: str = "endless"
    backend: str | None = None  # mido backend, e.g. "mido.backends.rtmidi/UNIX_JACK" (None: $MIDO_BACKEND)
    poll_seconds: float = 1.0  # how often the watcher looks for ports that vanished or came back
    inbox_size: int = 4096  # messages waiting for the control thread; more are dropped and counted
    immediate: bool = False  # apply on the arriving thread when engine.lock is free (play() holds it per tick)
    learn_path: Path | None = None  # where learned controls go when the mapping has no file


@dataclass(frozen=True)
class MidiEvent:
    t: float  # time.monotonic() on arrival
    port: str
    data: tuple[int, ...]


@dataclass
class MidiStats:
    received: int = 0
    dropped: int = 0  # the inbox was full
    applied: int = 0  # parameter changes and actions made
    errors: int = 0  # refused by the engine (reported)
    opened: int = 0
    vanished: int = 0


def port_matches(pattern: str, name: str) -> bool:
    """A pattern matches a part of the name (any case), or as a regular expression.

    >>> port_matches("nano", "nanoKONTROL2 SLIDER/KNOB"), port_matches("^seq:", "seq:out")
    (True, True)
    >>> port_matches("(1)", "Launch Control (1)"), port_matches("^out", "seq:out")
    (True, False)
    """
    if pattern.lower() in name.lower():
        return True
    try:
        return re.search(pattern, name, re.IGNORECASE) is not None
    except re.error:
        return False


def default_learn_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("endless")) / "mappings" / "learned.toml"


def open_backend(name: str | None = None) -> Any:
    """The mido backend (`MIDO_BACKEND` by default), loaded now so a missing library fails here."""
    try:
        import mido
    except ImportError:
        raise ConfigError("MIDI needs mido and python-rtmidi: pip install mido python-rtmidi") from None
    spec = name or os.environ.get("MIDO_BACKEND") or "mido.backends.rtmidi"
    try:
        return mido.Backend(spec, load=True)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"MIDI backend {spec!r} cannot be loaded ({e}): pip install python-rtmidi, or set "
                          "MIDO_BACKEND (e.g. mido.backends.rtmidi/UNIX_JACK with JACK running)") from None


class Learner:
    """MIDI learn for one target: decides which control moved from the messages that follow.

    A note or a program change decides at once; CC messages are collected for `window` seconds
    (controllers send 14-bit and NRPN values as several CCs) and then: CC 99 + 98 + 6 is an NRPN
    (14 bits if CC 38 came too), CC N with CC N + 32 (N < 32) a 14-bit CC, else a 7-bit CC.
    """

    def __init__(self, target: str, preset: str | int | None = None, window: float = LEARN_WINDOW) -> None:
        self.target = target
        self.preset = preset
        self.window = window
        self.first: float | None = None
        self.ccs: list[tuple[int, int, int]] = []  # (channel, controller, value)

    def feed(self, data: Sequence[int], t: float) -> Binding | None:
        kind, ch = data[0] & 0xF0, data[0] & 0x0F
        if not self.ccs and kind == 0x90 and len(data) > 2 and data[2] > 0:
            return Binding("note", data[1], self.target, ch, preset=self.preset)
        if not self.ccs and kind == 0xC0:
            return Binding("program", data[1], self.target, ch, preset=self.preset)
        if kind == 0xB0 and len(data) > 2:
            if self.first is None:
                self.first = t
            self.ccs.append((ch, data[1], data[2]))
        return self.poll(t)

    def poll(self, t: float) -> Binding | None:
        if self.first is None or t - self.first < self.window:
            return None
        ch = self.ccs[0][0]
        last = {cc: v for c, cc, v in self.ccs if c == ch}
        if {99, 98, 6} <= last.keys():
            return Binding("nrpn", last[99] << 7 | last[98], self.target, ch, bits=14 if 38 in last else 7,
                           preset=self.preset)
        first = self.ccs[0][1]
        if first < 32 and first + 32 in last:
            return Binding("cc14", first, self.target, ch, preset=self.preset)
        return Binding("cc", first, self.target, ch, preset=self.preset)


@dataclass
class _Port:
    name: str
    port: Any  # a mido port
    virtual: bool = False


class MidiControl:
    """MIDI inputs, feedback outputs, the inbox and MIDI learn for one engine.

        midi = MidiControl(MidiConfig(inputs=("nano",), outputs=("nano",)), surface, actions.midi_action)
        midi.start()            # opens what matches now; the watcher opens the rest when it appears
        midi.drain(engine)      # in the control loop, every tick
        midi.close()
    """

    def __init__(self, cfg: MidiConfig, surface: Surface | None = None, on_action: ActionSink | None = None,
                 on_event: Callable[[str], None] | None = None, wake: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.surface = surface
        self.on_action = on_action
        self.on_event: Callable[[str], None] = on_event or (lambda text: log.warning("%s", text))
        self.realtime: list[Callable[[MidiEvent], None]] = []  # clock, start/stop: called from drain
        self.wake = wake  # set on every message, so a control loop can sleep until one arrives
        self.stats = MidiStats()
        self._backend: Any = None
        self._inbox: deque[MidiEvent] = deque()
        # (arrival, applied) in time.monotonic_ns() of the latest changes (diagnostics, benchmarks)
        self.timing: deque[tuple[int, int]] = deque(maxlen=4096)
        self._lock = threading.Lock()
        self._inputs: dict[str, _Port] = {}
        self._outputs: dict[str, _Port] = {}
        self._missing: set[str] = set()  # ports we had that vanished: reported once, re-opened on return
        self._unopenable: set[str] = set()
        self._waiting: set[tuple[str, str]] = set()  # (kind, pattern)s that matched nothing yet (reported once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._learner: Learner | None = None
        self._engine: Engine | None = None
        self._resync = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the virtual ports and every matching port now, then watch for changes."""
        self._backend = open_backend(self.cfg.backend)
        if self.cfg.virtual:
            name = self.cfg.client_name
            try:
                self._add(self._inputs, self.virtual_in, self._backend.open_input(
                    "in", client_name=name, callback=self._callback(self.virtual_in)), virtual=True)
                self._add(self._outputs, self.virtual_out,
                          self._backend.open_output("out", client_name=f"{name}-feedback"), virtual=True)
            except Exception as e:
                raise ConfigError(f"cannot open virtual MIDI ports {self.virtual_in} and {self.virtual_out} ({e}); "
                                  "is a MIDI system running (JACK: set MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK)?"
                                  ) from None
            log.info("MIDI: virtual ports %s and %s", self.virtual_in, self.virtual_out)
        try:
            self.scan()
        except Exception as e:  # rtmidi raises SystemError when there is no MIDI system at all
            self.close()
            raise ConfigError(f"no MIDI system ({e}): on Linux without ALSA MIDI, start JACK and set "
                              "MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK") from None
        self._thread = threading.Thread(target=self._watch, name="endless-midi-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            ports = list(self._inputs.values()) + list(self._outputs.values())
            self._inputs.clear()
            self._outputs.clear()
        for p in ports:
            self._close(p)
        if self._engine is not None and self._feedback in self._engine.listeners:
            self._engine.listeners.remove(self._feedback)

    def __enter__(self) -> MidiControl:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def virtual_in(self) -> str:
        """The virtual input's name as JACK lists it (ALSA lists `endless:in 128:0`)."""
        return f"{self.cfg.client_name}:in"

    @property
    def virtual_out(self) -> str:
        return f"{self.cfg.client_name}-feedback:out"

    @property
    def inputs(self) -> list[str]:
        with self._lock:
            return sorted(self._inputs)

    @property
    def outputs(self) -> list[str]:
        with self._lock:
            return sorted(self._outputs)

    # -- ports -----------------------------------------------------------------------------------
    def _watch(self) -> None:
        failing = False
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.scan()
                failing = False
            except Exception as e:  # the MIDI system went away: say so once, keep watching
                if not failing:
                    self.on_event(f"MIDI: listing ports failed ({e!r}); still trying")
                failing = True

    def _ours(self, name: str) -> bool:
        """Our virtual ports, and (JACK) the source port rtmidi makes for an output we opened: never
        inputs, or feedback would come straight back in."""
        if name.startswith(self.cfg.client_name):
            return True
        with self._lock:
            opened_out = any(not p.virtual for p in self._outputs.values())
        return opened_out and re.match(r"RtMidiOut Client(-\d+)?:RtMidi output", name) is not None

    def scan(self) -> None:
        """Close ports that vanished, open ports that match and are new or back."""
        for kind, patterns, table in (("input", self.cfg.inputs, self._inputs),
                                      ("output", self.cfg.outputs, self._outputs)):
            if not patterns:
                continue
            names = self._backend.get_input_names() if kind == "input" else self._backend.get_output_names()
            with self._lock:
                gone = [p for n, p in table.items() if not p.virtual and n not in names]
                for p in gone:
                    del table[p.name]
            for p in gone:
                self._close(p)
                self._missing.add(f"{kind}:{p.name}")
                self.stats.vanished += 1
                self.on_event(f"MIDI {kind} {p.name!r} disappeared: it is opened again when it returns")
            for pat in patterns:
                hits = [n for n in names if port_matches(pat, n) and not self._ours(n)]
                if not hits and (kind, pat) not in self._waiting:
                    self._waiting.add((kind, pat))
                    self.on_event(f"no MIDI {kind} matches {pat!r} (now: {', '.join(names) or 'none'}); "
                                  "it is opened when it appears")
                for n in hits:
                    if n not in table:
                        self._open(kind, n, table, back=f"{kind}:{n}" in self._missing)

    def _open(self, kind: str, name: str, table: dict[str, _Port], back: bool) -> None:
        try:
            port = (self._backend.open_input(name, callback=self._callback(name)) if kind == "input"
                    else self._backend.open_output(name))
        except Exception as e:
            if f"{kind}:{name}" not in self._unopenable:  # said once; tried again every scan
                self._unopenable.add(f"{kind}:{name}")
                self.on_event(f"MIDI {kind} {name!r} cannot be opened: {e}")
            return
        self._unopenable.discard(f"{kind}:{name}")
        self._add(table, name, port)
        self._missing.discard(f"{kind}:{name}")
        self.stats.opened += 1
        if kind == "output":
            self._resync = True  # show the current state on the controller (drain sends it)
        if back:
            self.on_event(f"MIDI {kind} {name!r} is back")
        else:
            log.info("MIDI %s %r opened", kind, name)

    def _add(self, table: dict[str, _Port], name: str, port: Any, virtual: bool = False) -> None:
        with self._lock:
            table[name] = _Port(name, port, virtual)

    def _close(self, p: _Port) -> None:
        try:
            p.port.close()
        except Exception as e:
            log.debug("closing MIDI port %r: %r", p.name, e)

    def _callback(self, port: str) -> Callable[[Any], None]:
        inbox, cap, stats, wake = self._inbox, self.cfg.inbox_size, self.stats, self.wake

        def arrived(msg: Any) -> None:  # rtmidi's thread: stamp, queue; apply if immediate and free
            t = time.monotonic()
            stats.received += 1
            if len(inbox) >= cap:
                stats.dropped += 1
                return
            data = tuple(msg.bytes())
            inbox.append(MidiEvent(t, port, data))
            engine = self._engine
            if self._immediate_ok(engine) and engine is not None and engine.lock.acquire(blocking=False):
                try:
                    if self._immediate_ok(engine):  # again, now that nothing else can change it
                        self.drain(engine)
                        return
                except Exception as e:  # a bug: say so; the port keeps delivering
                    log.exception("MIDI from %s: %r", port, e)
                    return
                finally:
                    engine.lock.release()
            if wake is not None:
                wake.set()

        return arrived

    def _immediate_ok(self, engine: Engine | None) -> bool:
        """May the arriving thread apply the inbox itself? Only parameter changes from control
        changes (faders, knobs, encoders: what must feel attached): notes, program changes and
        CC-bound actions may recall a preset, and MIDI learn saves a file, so those stay with the
        control thread, as does anything queued behind one of them. MIDI clock and transport
        (start, stop, continue, song position) only move the grid, so they go along."""
        s = self.surface
        if not (self.cfg.immediate and engine is not None and s is not None and not s.cc_actions
                and self._learner is None):
            return False
        try:
            return all(0xB0 <= ev.data[0] <= 0xBF or ev.data[0] in REALTIME for ev in self._inbox)
        except RuntimeError:  # another thread changed the inbox meanwhile (checked before the lock)
            return False

    def inject(self, data: Sequence[int], port: str = "test", t: float | None = None) -> None:
        """Queue a message as if it had arrived (scripts, tests)."""
        self._inbox.append(MidiEvent(time.monotonic() if t is None else t, port, tuple(data)))

    # -- the control thread ----------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Send feedback for every change of `engine`'s parameters (drain attaches on first use)."""
        if self._engine is engine:
            return
        self._engine = engine
        engine.listeners.append(self._feedback)
        self._resync = True

    def drain(self, engine: Engine) -> int:
        """Apply every message waiting (holding engine.lock). Returns the changes made. Never raises for
        a bad message: refusals are counted and reported."""
        self.attach(engine)
        if self._resync:
            self._resync = False
            if self.surface is not None:
                self._send(self.surface.feedback_all(engine.values))
        n = 0
        while self._inbox:
            ev = self._inbox.popleft()
            if not ev.data:
                continue
            if ev.data[0] in REALTIME:
                for fn in self.realtime:
                    fn(ev)
                continue
            learner = self._learner
            if learner is not None:
                self._learned(learner.feed(ev.data, ev.t))
                continue
            if self.surface is None:
                continue
            try:
                changed = self.surface.handle(ev.data, engine, self.on_action)
                if changed:
                    self.timing.append((int(ev.t * 1e9), time.monotonic_ns()))
                n += changed
            except EndlessError as e:
                self.stats.errors += 1
                self.on_event(f"MIDI {_hex(ev.data)} from {ev.port}: {e}")
        learner = self._learner
        if learner is not None:  # the learn window may have closed since the last message
            self._learned(learner.poll(time.monotonic()))
        self.stats.applied += n
        return n

    # -- learn -----------------------------------------------------------------------------------
    def learn(self, target: str | None, preset: str | int | None = None) -> None:
        """Bind the next control that moves to `target` (an address or an action); None cancels."""
        if target is None or target == "":
            self._learner = None
            return
        if self.surface is None:
            raise ParamError("MIDI learn needs MIDI input: start with --midi-in PATTERN (or --midi-virtual)")
        if target not in ACTIONS:
            ref = resolve_target(target, self.surface.registry)
            if ref.param.kind in ("text", "weights"):
                raise ParamError(f"learn {target}: {ref.param.key} is not played from a control (write a "
                                 "[[control]] with value = ... in the mapping file instead)")
        elif target in ("preset/recall", "preset/arm") and preset is None:
            raise ParamError(f"learn {target}: name the preset too (learn {target} NAME)")
        self._learner = Learner(target, preset)
        self.on_event(f"MIDI learn: move a control for {target}")

    @property
    def learning(self) -> str | None:
        lr = self._learner
        return None if lr is None else lr.target

    def _learned(self, b: Binding | None) -> None:
        if b is None:
            return
        self._learner = None
        assert self.surface is not None
        m = self.surface.mapping
        try:
            replaced = self.surface.add(b)
        except EndlessError as e:
            self.stats.errors += 1
            self.on_event(f"MIDI learn {b.describe()}: {e}")
            return
        path = save_learned(m, b, replaced, self.cfg.learn_path or default_learn_path())
        self.on_event(f"MIDI learn: {b.describe()} saved to {path}")

    # -- feedback --------------------------------------------------------------------------------
    def _feedback(self, ref: Ref, value: Value) -> None:
        if self.surface is not None:
            msgs = self.surface.feedback(ref, value)
            if msgs:
                self._send(msgs)

    def _send(self, msgs: list[tuple[int, ...]]) -> None:
        with self._lock:
            outs = list(self._outputs.values())
        if not outs or not msgs:
            return
        import mido

        parsed = [mido.Message.from_bytes(list(m)) for m in msgs]
        for p in outs:
            try:
                for msg in parsed:
                    p.port.send(msg)
            except Exception as e:  # a port that vanished: the watcher reports it
                log.debug("MIDI feedback to %r failed: %r", p.name, e)


def transport_feed(engine: Engine, frame_at: Callable[[float], int] | None = None) -> Callable[[MidiEvent], None]:
    """A realtime handler (`midi.realtime.append(...)`) that slaves `engine.transport` to MIDI clock,
    Start, Stop, Continue and Song Position. A tick's arrival time becomes an output frame through
    `frame_at(t)`; by default the mixer's frame count now, less the time since the tick arrived
    (block-grained; the transport averages a beat of ticks)."""
    sr = engine.cfg.sample_rate

    def frame_now(t: float) -> int:
        return max(0, engine.mixer.frame - int(round((time.monotonic() - t) * sr)))

    to_frame = frame_at or frame_now

    def handle(ev: MidiEvent) -> None:
        tr, status = engine.transport, ev.data[0]
        if status == 0xF8:
            tr.clock(to_frame(ev.t))
        elif status == 0xFA:
            tr.start()
        elif status == 0xFB:
            tr.resume()
        elif status == 0xFC:
            tr.stop()
        elif status == 0xF2 and len(ev.data) >= 3:
            tr.song_position(ev.data[1] | ev.data[2] << 7)

    return handle


def save_learned(m: Mapping, b: Binding, replaced: bool, fallback: Path) -> Path:
    """Save a learned control: appended to the file (keeping its comments) when it is new, the file
    rewritten when it replaced a binding; atomically either way."""
    path = m.path or fallback
    m.path = path
    if not replaced and path.exists():
        text = path.read_text(encoding="utf-8")
        write_atomic(path, text + ("" if text.endswith("\n") else "\n") + "\n" + format_control(b))
    else:
        write_atomic(path, mapping_to_toml(m))
    return path


def _hex(data: Sequence[int]) -> str:
    return " ".join(f"{b:02X}" for b in data)
