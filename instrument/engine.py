"""The control side of the instrument: parameter state, commands to the mixer, clip feeding.

One Engine owns one Mixer. Everything that changes the sound (scripts, OSC, MIDI, presets) goes
through `Engine.set`, which validates against the registry first, so a bad message changes
nothing. `pump()` keeps every slot's queue topped up from the clip source and takes back the
buffers the audio thread retired; it runs on the control loop (live) or between blocks (offline
render), never on the audio thread. Live, whoever changes the engine holds `engine.lock`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from instrument import checks, rt
from instrument.clips import Clip
from instrument.coalesce import Coalescer
from instrument.errors import ParamError
from instrument.params import PARAMS, Param, Ref, Registry, Value, as_float, db_to_amp
from instrument.rt import OP_FLUSH, OP_NEXT, OP_PUSH, Command, Mixer, MixerConfig
from instrument.scheduler import Scheduler
from instrument.script import Event, check_script, run_event
from instrument.sources import ClipSource
from instrument.transport import Transport

log = logging.getLogger(__name__)

Listener = Callable[[Ref, Value], None]

# The registry's mixer parameters and the audio thread's opcodes for them.
MIXER_OPS: dict[str, int] = {
    "slot/gain": rt.OP_GAIN, "slot/pan": rt.OP_PAN, "slot/mute": rt.OP_MUTE, "slot/solo": rt.OP_SOLO,
    "slot/next": rt.OP_NEXT, "slot/flush": rt.OP_FLUSH, "master/gain": rt.OP_MASTER, "xfade": rt.OP_XFADE,
    "curve": rt.OP_CURVE, "autolevel": rt.OP_AUTOLEVEL, "morph/mode": rt.OP_MORPH_MODE,
    "morph/position": rt.OP_MORPH_POS, "morph/x": rt.OP_MORPH_X, "morph/y": rt.OP_MORPH_Y,
}
FADERS = frozenset({"slot/gain", "master/gain"})  # dB in the registry, linear amplitude to the audio thread
_ENUMS = {"curve": rt.CURVES, "morph/mode": rt.MORPH_MODES}  # the audio thread's codes, in the registry's order
assert all(p.choices == _ENUMS[p.key] for p in PARAMS if p.key in _ENUMS)

QUANTIZED = frozenset({"slot/next"})  # mixer triggers moved to the grid; prompt cuts are aligned in pump()


@dataclass(frozen=True)
class ClipEvent:
    """A clip handed to a slot (kept in `Engine.clip_log`, newest last)."""

    frame: int  # the output frame when it was pushed (it queues behind what plays)
    slot: int
    prompt: str
    seed: int | None
    source: str
    cut: bool  # it was crossfaded in at once (a new prompt's first clip)


@dataclass(frozen=True)
class EngineStats:
    frames: int
    starvations: tuple[int, ...]
    transitions: tuple[int, ...]
    queue_depths: tuple[int, ...]
    buffered_seconds: tuple[float, ...]
    levels: tuple[float, ...]
    clips_dropped: int
    commands_rejected: int
    limiter_db: float


@dataclass
class _Cut:
    """A new prompt's quantized cut, held until the mixer takes its clip; a newer prompt calls it off."""

    frame: int
    push: int  # `Engine._sent` once its first clip was sent: it waits until the mixer has that many
    cmds: list[Command]  # its flush, clips and next, and the clips queued behind it on its frame
    events: list[ClipEvent]  # its clips as logged


class Engine:
    def __init__(self, cfg: MixerConfig, source: ClipSource | None = None, target_depth: int = 2,
                 prefix: str = "/endless", guard_frames: int = 0) -> None:
        """`cfg`'s xfade and curve, when None, take the registry's defaults (the only place defaults
        live); the autolevel glide is always the registry's autolevel smoothing. `guard_frames`
        (live play): how far ahead of the audio a quantized change must land to reach it in time."""
        self.registry = Registry(slots=cfg.slots, prefix=prefix)
        xfade = as_float(self.registry["xfade"].default) if cfg.xfade is None else cfg.xfade
        curve = str(self.registry["curve"].default) if cfg.curve is None else cfg.curve
        cfg = replace(cfg, autolevel_glide=self.registry["autolevel"].smoothing, xfade=xfade, curve=curve)
        self.cfg = cfg
        self.mixer = Mixer(cfg)
        self.coalescer = Coalescer(self.mixer)  # immediate value changes: a few a block to each parameter
        self.source = source
        self.generator = source if isinstance(source, Scheduler) else None  # prompts, settings, arming
        if self.generator is not None:
            self.generator.attach(self)
        self.target_depth = min(target_depth, cfg.queue_capacity)
        self.values: dict[tuple[str, int | None], Value] = self.registry.defaults()
        self.values[("xfade", None)] = xfade
        self.values[("curve", None)] = curve
        self.transport = Transport(cfg.sample_rate)
        self.guard_frames = guard_frames
        self.last_change_frame = 0  # the frame the change being reported to listeners takes effect
        self._flush_pending: set[int] = set()  # slots whose queued clips go with their next clip's cut
        self._next_pending: set[int] = set()  # slots whose cut to a new prompt waits for room in the ring
        self._held: dict[int, Clip] = {}  # a slot's clip taken from the source that the ring had no room for
        self._sent = [0] * cfg.slots  # clip pushes sent per slot (the mixer counts those applied)
        self._flushes = [0] * cfg.slots  # flushes sent per slot (the mixer counts those applied)
        self._sent_at_flush = [0] * cfg.slots  # `_sent` when the slot's last flush was sent
        self._cuts: list[_Cut | None] = [None] * cfg.slots  # a quantized cut waiting for its frame
        self._not_before = [0] * cfg.slots  # a new prompt given for a frame cuts in no earlier
        self.listeners: list[Listener] = []
        self._script: list[Event] = []  # mixer events: queued ahead as commands timed to their frame
        self._script_i = 0
        self._control: list[tuple[int, Event]] = []  # other events: applied when their frame is due
        self._control_i = 0
        self._timed: list[tuple[int, int, Command]] = []  # (frame, sequence, command), a heap
        self._seq = itertools.count()
        self.buffers_returned = 0
        self.clip_log: deque[ClipEvent] = deque(maxlen=10000)
        # Held by whoever changes the engine: the control loop for each tick (`play()`), and an
        # input thread applying a message the moment it arrives (OSC and MIDI with `immediate`).
        # Never taken by the audio thread, which sees the engine only through the mixer's rings.
        self.lock = threading.RLock()

    # -- parameters ------------------------------------------------------------------------------
    def handle(self, address: str, args: Sequence[object], frame: int = -1) -> tuple[Ref, Value]:
        """Validate and apply one OSC-style message; raises ParamError and changes nothing if bad."""
        ref = self.registry.resolve(address)
        value = self.registry.coerce(ref, args)
        self.set(ref, value, frame)
        return ref, value

    def set(self, ref: Ref, value: Value, frame: int = -1, glide: float | None = None) -> None:
        p = ref.param
        if frame < 0 and p.key in QUANTIZED:
            q = self.quantized_frame()
            frame = q if q is not None else frame
        if p.target == "generator":
            self.check(ref, value)  # before anything changes
            if frame >= 0 and ref.slot is not None:
                self._not_before[ref.slot] = frame  # e.g. a quantized recall: its cut lands with its mix
            self._generator_set(ref, value)
        elif p.target == "transport":
            if p.key == "tempo":
                self.transport.set_tempo(as_float(value), max(frame, self.mixer.frame))
            else:
                self.transport.beats_per_bar = int(as_float(value))
        elif p.target == "mixer":
            cmd = Command(MIXER_OPS[p.key], -1 if ref.slot is None else ref.slot, _code(p, value),
                          p.smoothing if glide is None else glide, None, frame)
            if not (self.coalescer.send(cmd) if frame < 0 and p.kind != "trigger" else self._send(cmd)):
                raise ParamError(f"{ref.address(self.registry.prefix)}: the audio thread's command queue "
                                 "is full (is the audio stream running?)")
        if p.kind != "trigger":
            self.values[(p.key, ref.slot)] = value
        self.last_change_frame = frame if frame >= 0 else self.mixer.frame
        changes = [(ref, value)]
        if p.key == "slot/prompt" and self.values.get(("slot/weights", ref.slot), ()) != ():
            # they were for the old prompt's parts: a later /sync or preset store must not carry them over
            self.values[("slot/weights", ref.slot)] = ()
            changes.insert(0, (Ref(self.registry["slot/weights"], ref.slot, False), ()))
        for fn, change in itertools.product(self.listeners, changes):
            fn(*change)

    def check(self, ref: Ref, value: Value) -> None:
        """Raise ParamError for what `set` would refuse after the registry accepted the value (no
        generator, a bad blend, weights that do not fit), changing nothing."""
        checks.check_change(self.generator, self.registry.prefix, ref, value)

    def check_batch(self, changes: Sequence[tuple[Ref, Value]]) -> dict[int, str]:
        """What `set` would refuse among `changes` applied in this order (index -> message), changing
        nothing, so a bundle or a recall can be refused whole (weights fit the batch's own prompt)."""
        return checks.check_batch(self.generator, self.registry.prefix, changes)

    def _generator_set(self, ref: Ref, value: Value) -> None:
        gen, p = self.generator, ref.param
        assert gen is not None and ref.slot is not None
        if p.key == "slot/prompt":
            gen.set_prompt(ref.slot, str(value))
        elif p.key == "slot/regenerate":
            gen.regenerate(ref.slot)
        elif p.key == "slot/weights":
            assert isinstance(value, tuple)
            gen.set_weights(ref.slot, value)
        else:
            gen.set(ref.slot, p.name, value if isinstance(value, str) else as_float(value))  # str: fallback

    def flush(self, slot: int) -> None:
        """A new prompt: drop the slot's queued clips now (the playing clip plays on), or when
        quantizing, together with the cut to the new prompt's first clip, on the grid. A cut still
        waiting for its frame is called off: its prompt is already old."""
        self._call_off_cut(slot)
        self._held.pop(slot, None)  # an old prompt's clip that waited for room in the ring
        if self.cut_frame(slot) is not None or not self._send(Command(OP_FLUSH, slot)):
            self._flush_pending.add(slot)  # sent with the next clip (or when the ring has room)

    def _send(self, cmd: Command) -> bool:
        """Send a command to the mixer, now or timed: a timed one is held here in frame order and
        handed to the mixer's ring shortly before its frame. Counts the clips and flushes sent."""
        if cmd.frame >= 0:
            heapq.heappush(self._timed, (cmd.frame, next(self._seq), cmd))
        elif not self.mixer.send(cmd):
            return False
        if cmd.op == OP_PUSH:
            self._sent[cmd.slot] += 1
        elif cmd.op == OP_FLUSH and cmd.slot >= 0:
            self._flushes[cmd.slot] += 1
            self._sent_at_flush[cmd.slot] = self._sent[cmd.slot]
        return True

    def _waiting_cut(self, slot: int) -> _Cut | None:
        """The slot's quantized cut while it waits (its clip not yet in the mixer); forgets it after."""
        cut = self._cuts[slot]
        if cut is not None and self.mixer.slots[slot].pushes >= cut.push:
            cut = self._cuts[slot] = None  # applied: let its clips go
        return cut

    def _call_off_cut(self, slot: int) -> None:
        """Take back the commands of the slot's waiting cut that are still held here."""
        cut = self._waiting_cut(slot)
        if cut is None:
            return
        self._cuts[slot] = None
        ids = {id(c) for c in cut.cmds}
        gone = [t[2] for t in self._timed if id(t[2]) in ids]
        if not gone:
            return
        self._timed = [t for t in self._timed if id(t[2]) not in ids]
        heapq.heapify(self._timed)
        pushes = sum(c.op == OP_PUSH for c in gone)
        self._sent[slot] -= pushes
        self._flushes[slot] -= sum(c.op == OP_FLUSH for c in gone)
        for event in cut.events[-pushes:] if pushes else ():
            with contextlib.suppress(ValueError):  # (already out of the bounded log)
                self.clip_log.remove(event)  # never handed to the slot

    def cut_frame(self, slot: int) -> int | None:
        """Where a new prompt's first clip for the slot cuts in, or None for at once: the next beat
        or bar far enough ahead when quantizing, and never before the frame its change was given
        for (a recall's prompts cut on the frame its mixer settings land on)."""
        not_before = self._not_before[slot]
        q = self.quantized_frame(not_before)
        if q is None and not_before > self.mixer.frame + self.guard_frames:
            return not_before
        return q

    def quantized_frame(self, not_before: int = 0) -> int | None:
        """The next beat or bar frame far enough ahead to be met (and not before `not_before`), or
        None when not quantizing."""
        q = self.values[("quantize", None)]
        if q == "off":
            return None
        start = max(self.mixer.frame + self.guard_frames, not_before)
        return self.transport.next_boundary(start, "beat" if q == "beat" else "bar")

    # -- scripts ---------------------------------------------------------------------------------
    def load_script(self, events: list[Event]) -> None:
        check_script(events, self.registry, self.check_batch)  # all of it, before any of it plays
        sr = self.cfg.sample_rate
        self._script, self._control = [], []
        for ev in events:
            if self.registry.resolve(ev.address).param.target == "mixer":
                self._script.append(ev)
            else:
                self._control.append((int(round(ev.t * sr)), ev))
        self._script_i = self._control_i = 0

    def schedule_script(self, until_frame: int) -> None:
        """Hand the mixer every timed change (script events, quantized changes) due before
        `until_frame`, in frame order, so each lands on its exact sample."""
        sr = self.cfg.sample_rate
        while self._script_i < len(self._script):
            ev = self._script[self._script_i]
            frame = int(round(ev.t * sr))
            if frame >= until_frame:
                break
            run_event(self.handle, ev, frame)  # an error is logged with file:line: the set goes on
            self._script_i += 1
        while self._timed and self._timed[0][0] < until_frame:
            cmd = self._timed[0][2]
            if not self.mixer.send(cmd):
                break  # ring full: try again next tick
            heapq.heappop(self._timed)

    def next_control_frame(self) -> int | None:
        """The frame of the next script event that is applied when due (prompts and the like)."""
        return self._control[self._control_i][0] if self._control_i < len(self._control) else None

    def apply_due(self, now_frame: int) -> None:
        """Apply the non-mixer script events whose frame has come."""
        while self._control_i < len(self._control) and self._control[self._control_i][0] <= now_frame:
            ev = self._control[self._control_i][1]
            self._control_i += 1
            run_event(self.handle, ev)

    # -- clips -----------------------------------------------------------------------------------
    def pending(self, slot: int) -> int:
        """Clips queued or on their way to the slot's queue, not counting those a flush on its way
        will drop (so a new prompt's first clip is asked for and taken at once)."""
        if slot in self._flush_pending:
            return 0
        s = self.mixer.slots[slot]
        if s.flushes < self._flushes[slot]:
            return self._sent[slot] - self._sent_at_flush[slot]
        return s.q_count + (self._sent[slot] - s.pushes)

    def pump(self) -> int:
        """Top up every slot's queue from the source; take back retired buffers. Returns clips sent."""
        # dropping the references frees the buffers here, off the audio thread
        self.buffers_returned += len(self.mixer.returned())
        self.coalescer.tick()  # changes held back by a flood, once the audio thread has taken a block
        if self.source is None:
            return 0
        if self.generator is not None:
            self.generator.tick()
        sent = 0
        for i in range(self.cfg.slots):
            if i in self._next_pending and self.mixer.send(Command(OP_NEXT, i)):
                self._next_pending.discard(i)  # the ring was full when its clip went: the cut goes now
            while self.pending(i) < self.target_depth:
                clip = self._held.pop(i, None) or self.source.next_clip(i)
                if clip is None:
                    break
                if clip.sample_rate != self.cfg.sample_rate:
                    raise ValueError(f"clip at {clip.sample_rate} Hz for a {self.cfg.sample_rate} Hz mixer")
                cut = clip.cut and self.mixer.slots[i].started
                waiting = None if cut else self._waiting_cut(i)
                at = self.cut_frame(i) if cut else None if waiting is None else waiting.frame
                if at is not None:
                    # on the grid: a new prompt's flush, first clip and cut go together; clips after
                    # it queue behind it on the same frame, in order
                    cmds = [Command(OP_PUSH, i, clip=clip.audio, frame=at)]
                    if cut:
                        self._call_off_cut(i)
                        if i in self._flush_pending:
                            self._flush_pending.discard(i)
                            cmds.insert(0, Command(OP_FLUSH, i, frame=at))
                        cmds.append(Command(OP_NEXT, i, frame=at))
                    for c in cmds:
                        self._send(c)
                    if waiting is None:
                        waiting = self._cuts[i] = _Cut(at, self._sent[i], [], [])
                    waiting.cmds += cmds
                else:
                    if i in self._flush_pending:
                        if not self._send(Command(OP_FLUSH, i)):
                            self._held[i] = clip  # the ring is full: this clip goes first next tick
                            break
                        self._flush_pending.discard(i)
                    if not self.push_clip(i, clip.audio):
                        self._held[i] = clip
                        break
                    if cut and not self.mixer.send(Command(OP_NEXT, i)):  # a new prompt: crossfade to it now
                        self._next_pending.add(i)  # the ring is full: on the next tick
                event = ClipEvent(self.mixer.frame if at is None else at, i, clip.info.prompt, clip.info.seed,
                                  clip.info.source, cut)
                self.clip_log.append(event)
                if waiting is not None:
                    waiting.events.append(event)
                sent += 1
        return sent

    def push_clip(self, slot: int, audio: np.ndarray) -> bool:
        return self._send(Command(OP_PUSH, slot, clip=audio))

    def stats(self) -> EngineStats:
        m = self.mixer
        return EngineStats(
            frames=m.frame,
            starvations=tuple(s.starvations for s in m.slots),
            transitions=tuple(s.transitions for s in m.slots),
            queue_depths=tuple(s.q_count for s in m.slots),
            buffered_seconds=tuple(m.buffered_frames(i) / self.cfg.sample_rate for i in range(self.cfg.slots)),
            levels=tuple(s.level for s in m.slots),
            clips_dropped=m.clips_dropped,
            commands_rejected=m.commands_rejected,
            limiter_db=m.limiter.reducing,
        )


def _code(p: Param, value: Value) -> float:
    """A registry value as the float the mixer's opcode takes."""
    if p.kind == "enum":
        return float(p.choices.index(str(value)))  # the audio thread's CURVES/MORPH_MODES are these choices
    if p.key in FADERS:
        return db_to_amp(as_float(value))
    if p.kind in ("bool", "trigger"):
        return 1.0 if value else 0.0
    return as_float(value)
