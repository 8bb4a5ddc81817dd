"""MIDI input on the control bus, and controller feedback from a sender thread.

Threads:
- python-rtmidi calls `arrived` on its own thread for every message (with JACK, the JACK client's
  process thread). It stamps the time (mido drops rtmidi's timestamps) and submits one bus `Job`
  for the message; nothing else happens there. The job decodes the message through the mapping
  (`Surface`) and applies it, so the decoders' state (14-bit pairs, NRPN, soft takeover) is only
  touched by jobs, in arrival order. A job may run on rtmidi's thread when the bus allows it and
  the engine is free (`ControlBus.submit`): only for control changes bound to parameters, and MIDI
  clock and transport, which only move the grid. Notes, program changes, control changes when
  any is bound to an action, and everything while learning are `immediate=False`: they may recall
  a preset or save the mapping (files), so they run on the control thread, as does anything queued
  behind them. An action a message triggers is its own job (`Actions.run`, on the control thread).
- An engine listener turns each change into feedback messages and only hands them to the
  sender thread, which sends them on the output ports. Pending feedback is kept per parameter
  (the newest replaces the older), so the queue is bounded by the parameters and a slow port
  never holds the applying thread (which holds the engine lock), rtmidi's thread included.
- `midi_ports.Ports` has the port watcher thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from instrument.control.actions import Done
from instrument.control.bus import ControlBus, Job
from instrument.control.learn import MidiLearn, default_learn_path
from instrument.control.midi_ports import MidiConfig, MidiStats, Ports, Receiver
from instrument.control.surface import Surface
from instrument.errors import EndlessError
from instrument.params import Ref, Value

if TYPE_CHECKING:
    from instrument.control.actions import Actions
    from instrument.engine import Engine

__all__ = ["MidiConfig", "MidiControl", "MidiEvent", "MidiStats", "default_learn_path"]

log = logging.getLogger(__name__)

REALTIME = frozenset({0xF2, 0xF8, 0xFA, 0xFB, 0xFC})  # song position, clock, start, continue, stop
FrameAt = Callable[[float], int]  # a message's arrival (time.monotonic()) -> the output frame it lands on


@dataclass(frozen=True, slots=True)
class MidiEvent:
    t_ns: int  # time.monotonic_ns() on arrival
    port: str
    data: tuple[int, ...]

    @property
    def t(self) -> float:
        return self.t_ns / 1e9


class MidiControl:
    """MIDI inputs, feedback outputs and MIDI learn for the engine behind `bus`.

        midi = MidiControl(MidiConfig(inputs=("nano",), outputs=("nano",)), surface, bus, actions)
        midi.start()          # opens what matches now; the watcher opens the rest when it appears
        midi.tick()           # in the control loop, every tick, after bus.drain() (the learn window)
        midi.close()

    `frame_at` places MIDI clock ticks on the output (default: the mixer's frame now, less the time
    since the tick arrived); `backend` is a mido backend object (None: `cfg.backend`), for tests.
    """

    def __init__(self, cfg: MidiConfig, surface: Surface, bus: ControlBus, actions: Actions, *,
                 on_event: Callable[[str], None] | None = None, frame_at: FrameAt | None = None,
                 backend: Any = None) -> None:
        self.cfg = cfg
        self.surface = surface
        self.bus = bus
        self.actions = actions
        self.on_event: Callable[[str], None] = on_event or (lambda text: log.warning("%s", text))
        self.stats = MidiStats()
        # (arrival, applied) in time.monotonic_ns() of the latest changes (diagnostics, benchmarks)
        self.timing: deque[tuple[int, int]] = deque(maxlen=4096)
        self.learner = MidiLearn(surface, cfg.learn_path, self.on_event,
                                 lambda b: actions.announce(Done("learn", b.describe())))
        self.ports = Ports(cfg, self._receiver, self._show_all, self.on_event, self.stats, backend)
        self.sender = FeedbackSender(self.ports.send)
        self._frame_at = frame_at or self._frame_now
        self._listener = self._feedback  # one bound method: found again in engine.listeners

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sender, send feedback for every change of the engine, open the ports."""
        self.sender.start()
        self.bus.submit(Job(self._attach, "midi"))
        try:
            self.ports.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop feedback, close the ports. The control loop may have stopped already: nothing here
        waits for the bus."""
        engine = self.bus.engine
        # a new list, not remove(): a change being reported on another thread goes on iterating the old one
        engine.listeners = [fn for fn in engine.listeners if fn != self._listener]
        self.ports.close()
        self.sender.close()

    def __enter__(self) -> MidiControl:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def virtual_in(self) -> str:
        return self.ports.virtual_in

    @property
    def virtual_out(self) -> str:
        return self.ports.virtual_out

    @property
    def inputs(self) -> list[str]:
        return self.ports.inputs

    @property
    def outputs(self) -> list[str]:
        return self.ports.outputs

    # -- learn -----------------------------------------------------------------------------------
    def learn(self, target: str | None, preset: str | int | None = None) -> None:
        """The `learn` action's hook (`Actions(learn=midi.learn)`): bind the next control that moves
        to `target` (an address or an action); None cancels. Runs in the action's job."""
        self.learner.start(target, preset)

    @property
    def learning(self) -> str | None:
        return self.learner.learning

    def tick(self) -> None:
        """The control loop, every tick: when a learn's window of CC messages has closed, a job
        decides it (after what is queued, as the messages it saw were)."""
        if self.learner.due(time.monotonic()):
            self.bus.submit(Job(lambda _e: self.learner.poll(time.monotonic()), "midi learn", immediate=False))

    # -- input -----------------------------------------------------------------------------------
    def _receiver(self, port: str) -> Receiver:
        def arrived(msg: Any) -> None:  # rtmidi's thread: stamp, submit
            self._submit(port, tuple(msg.bytes()), time.monotonic_ns(), time.perf_counter_ns())

        return arrived

    def inject(self, data: Sequence[int], port: str = "test", t: float | None = None) -> None:
        """Submit a message as if it had arrived on `port` at `t` (time.monotonic(); scripts, tests)."""
        self._submit(port, tuple(data), time.monotonic_ns() if t is None else int(t * 1e9), time.perf_counter_ns())

    def _submit(self, port: str, data: tuple[int, ...], t_ns: int, t_perf: int) -> None:
        """One job for one message; `t_ns` is its arrival (monotonic), `t_perf` the same for the bus."""
        self.stats.received += 1
        if not data:
            return
        ev = MidiEvent(t_ns, port, data)
        job = Job(partial(self._apply, ev), "midi", immediate=self._on_arrival(data[0]),
                  refused=partial(self._refused, ev), t_ns=t_perf)
        if not self.bus.submit(job):
            self.stats.dropped += 1

    def _on_arrival(self, status: int) -> bool:
        """May this message's job run on the thread it arrived on (`Job.immediate`)? Reads only what
        learning and learned bindings change, so a stale answer is only ever a job that waits."""
        if status in REALTIME:
            return True
        return 0xB0 <= status <= 0xBF and not self.surface.cc_actions and self.learner.learning is None

    def _apply(self, ev: MidiEvent, engine: Engine) -> None:
        """One message's job (holding the engine lock): clock, learn, or the mapping."""
        if ev.data[0] in REALTIME:
            self._clock(engine, ev)
            return
        if self.learner.learning is not None:
            self.learner.feed(ev.data, ev.t)
            return
        triggered: list[tuple[str, tuple[object, ...]]] = []
        changed = self.surface.handle(ev.data, engine, lambda path, args: triggered.append((path, args)))
        changed -= len(triggered)
        if changed:
            self.timing.append((ev.t_ns, time.monotonic_ns()))
            self.stats.applied += changed
        for path, args in triggered:  # each on the control thread, after what is queued already
            self.bus.submit(Job(partial(self._act, path, args), "midi", immediate=False,
                                refused=partial(self._refused, ev)))

    def _act(self, path: str, args: tuple[object, ...], _engine: Engine) -> None:
        done = self.actions.run(path, args)
        self.stats.applied += 1
        if done is not None:
            log.info("MIDI %s: %s", done.path, done.text)

    def _refused(self, ev: MidiEvent, e: EndlessError) -> None:
        self.stats.errors += 1
        self.on_event(f"MIDI {' '.join(f'{b:02X}' for b in ev.data)} from {ev.port}: {e}")

    def _clock(self, engine: Engine, ev: MidiEvent) -> None:
        """MIDI clock, Start, Stop, Continue and Song Position slave `engine.transport`."""
        tr, status = engine.transport, ev.data[0]
        if status == 0xF8:
            tr.clock(self._frame_at(ev.t))
        elif status == 0xFA:
            tr.start()
        elif status == 0xFB:
            tr.resume()
        elif status == 0xFC:
            tr.stop()
        elif status == 0xF2 and len(ev.data) >= 3:
            tr.song_position(ev.data[1] | ev.data[2] << 7)

    def _frame_now(self, t: float) -> int:
        """The output frame of arrival `t`: the mixer's frame now less the time since (block-grained;
        the transport averages a beat of ticks)."""
        engine = self.bus.engine
        return max(0, engine.mixer.frame - int(round((time.monotonic() - t) * engine.cfg.sample_rate)))

    # -- feedback --------------------------------------------------------------------------------
    def _attach(self, engine: Engine) -> None:
        engine.listeners.append(self._listener)

    def _feedback(self, ref: Ref, value: Value) -> None:
        """An engine listener (the applying thread, holding the engine lock): encode, hand over."""
        msgs = self.surface.feedback(ref, value)
        if msgs:
            self.sender.put((ref.param.key, ref.slot), msgs)

    def _show_all(self) -> None:
        """An output opened: show it every feedback control's state (read in a job)."""
        self.bus.submit(Job(lambda e: self.sender.put("all", self.surface.feedback_all(e.values)), "midi"))


class FeedbackSender:
    """A thread that sends what `put` hands it, so no applying thread waits on a MIDI port.

    Pending messages are kept by key (a parameter): a newer `put` replaces the older and moves to
    the end, so the newest state is sent last and the queue never holds more than one entry a key.
    """

    def __init__(self, send: Callable[[list[tuple[int, ...]]], None]) -> None:
        self.send = send
        self._pending: dict[Hashable, list[tuple[int, ...]]] = {}
        self._cond = threading.Condition(threading.Lock())
        self._stop = False
        self._thread: threading.Thread | None = None

    def put(self, key: Hashable, msgs: list[tuple[int, ...]]) -> None:
        with self._cond:
            self._pending.pop(key, None)
            self._pending[key] = msgs
            self._cond.notify()

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="endless-midi-feedback", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def ident(self) -> int | None:
        """The sending thread's id (tests)."""
        return None if self._thread is None else self._thread.ident

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                batch, self._pending = self._pending, {}
            try:
                self.send([m for msgs in batch.values() for m in msgs])
            except Exception as e:  # a bug: say so, keep sending
                log.exception("MIDI feedback: %r", e)
