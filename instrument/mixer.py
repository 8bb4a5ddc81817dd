"""The real-time mixer: N slots of crossfading clip queues, gains, morph, limiter.

Runs on the audio thread (PortAudio's callback, or the offline renderer's loop). Rules here:
no locks, no logging, no I/O, no buffers allocated per block by the C core (it writes into
buffers made at construction; the Python around it makes small objects: a cffi view of the
output per callback, a Command's fields). The numpy core is not allocation-free: numpy makes
conversion buffers for mixed-precision out= arithmetic (~10-20 KB a block while fading or
limiting). Commands arrive through two SPSC rings (immediate, and timed by output frame); retired
clip buffers leave through a return ring so the audio thread never frees them; counters are
plain attributes that the control side reads.

Every state change happens at an exact output frame, and all ramps and fades are computed from
integer sample counts, so rendering block by block equals rendering the whole buffer at once.

Two cores behind one class, chosen when a Mixer is built (python-rtmixer's split):
  c      the per-sample work of a block (clips, crossfades, starvation, ramps, levels, limiter)
         in one compiled call (mixcore.c through cffi, built by `pip install -e .`); Python
         keeps the command rings, applies commands by writing the C state, and owns the clip
         arrays whose pointers C holds.
  numpy  the same state machine in numpy, used when the compiled module is missing or
         ENDLESS_PURE_PYTHON=1. ~25x the cost per block (909 vs 34-41 us for 16 slots at 256
         frames: python benchmarks/bench_mixer.py); fine for offline renders and a few slots live.
The two agree up to float rounding (their fade curves use different sin/cos; the test's inputs
come out bit-identical below the ceiling); each is block-size independent bit for bit.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from instrument.limiter import LOOKAHEAD_S, RELEASE_DB_PER_S, Limiter, lookahead_samples
from instrument.params import PARAMS, db_to_amp
from instrument.rt import SpscRing

log = logging.getLogger(__name__)

_CHOICES = {p.key: p.choices for p in PARAMS if p.kind == "enum"}
CURVES = _CHOICES["curve"]  # ("equal_power", "sin2")
MORPH_MODES = _CHOICES["morph/mode"]  # ("off", "line", "xy")

# Opcodes. The engine maps registry keys onto them through MIXER_OPS.
(OP_GAIN, OP_PAN, OP_MUTE, OP_SOLO, OP_NEXT, OP_FLUSH, OP_PUSH, OP_MASTER, OP_XFADE, OP_CURVE,
 OP_AUTOLEVEL, OP_MORPH_MODE, OP_MORPH_POS, OP_MORPH_X, OP_MORPH_Y) = range(15)

MIXER_OPS: dict[str, int] = {
    "slot/gain": OP_GAIN, "slot/pan": OP_PAN, "slot/mute": OP_MUTE, "slot/solo": OP_SOLO,
    "slot/next": OP_NEXT, "slot/flush": OP_FLUSH, "master/gain": OP_MASTER, "xfade": OP_XFADE,
    "curve": OP_CURVE, "autolevel": OP_AUTOLEVEL, "morph/mode": OP_MORPH_MODE,
    "morph/position": OP_MORPH_POS, "morph/x": OP_MORPH_X, "morph/y": OP_MORPH_Y,
}

_HALF_PI = math.pi / 2
_AUTOLEVEL_GLIDE = next(p.smoothing for p in PARAMS if p.key == "autolevel")
_F32 = np.dtype(np.float32)
_CORE_VERSION = 2  # MC_VERSION in mixcore.c: a stale build falls back to numpy instead of misbehaving


@dataclass(frozen=True, slots=True)
class Command:
    """One change for the audio thread. `frame` >= 0: apply at that output frame (timed ring)."""

    op: int
    slot: int = -1
    value: float = 0.0
    glide: float = 0.0  # seconds of smoothing for gain-like changes
    clip: np.ndarray | None = None  # OP_PUSH: (frames, 2) float32 at the mixer's rate
    frame: int = -1


@dataclass(frozen=True)
class MixerConfig:
    slots: int = 4  # 1..16
    sample_rate: int = 44100
    max_block: int = 4096  # largest sub-block processed at once (bigger callbacks are split)
    queue_capacity: int = 8  # ready clips per slot
    xfade: float = 4.0  # T_f seconds
    curve: str = "equal_power"
    stagger: bool = True  # start slots at phase offsets so transitions do not coincide
    ceiling_db: float = -1.0  # limiter ceiling
    lookahead: float = LOOKAHEAD_S  # limiter look-ahead, seconds: the output's delay behind the mix
    command_capacity: int = 1024


class SlotState(Protocol):
    """A slot as the control side sees it: its settings and the counters it reads."""

    index: int
    gain_db: float
    pan: float
    mute: bool
    solo: bool
    amp: float  # fader x mute/solo x morph, before pan
    pushes: int  # OP_PUSH commands applied (accepted or dropped)
    flushes: int  # OP_FLUSH commands applied

    @property
    def started(self) -> bool: ...
    @property
    def q_count(self) -> int: ...
    @property
    def queued_frames(self) -> int: ...
    @property
    def starvations(self) -> int: ...
    @property
    def transitions(self) -> int: ...
    @property
    def nexts_ignored(self) -> int: ...
    @property
    def level(self) -> float: ...  # RMS of the last block, after gain


class LimiterState(Protocol):
    @property
    def latency(self) -> int: ...
    @property
    def reducing(self) -> float: ...  # current gain reduction in dB


def _snap1(v: float) -> float:
    """Centre pan gives 1.0000000000000002: snap it, so unity gain is a no-op."""
    return 1.0 if abs(v - 1.0) < 1e-9 else v


class Mixer:
    """The audio-thread half of the instrument. Control code talks to it only through `send`,
    `send_at`, `returned` and the read-only counters.

    `Mixer(cfg)` builds the compiled core when it is available, else the numpy one (see the
    module docstring); `mixer.core` says which.
    """

    core = ""
    slots: list[SlotState]
    limiter: LimiterState

    def __new__(cls, cfg: MixerConfig) -> Mixer:
        impl: type[Mixer] = _choose_core() if cls is Mixer else cls
        return object.__new__(impl)

    def __init__(self, cfg: MixerConfig) -> None:
        if not 1 <= cfg.slots <= 16:
            raise ValueError(f"slots {cfg.slots} out of range 1..16")
        self.cfg = cfg
        self.sr = cfg.sample_rate
        self._cmds: SpscRing[Command] = SpscRing(cfg.command_capacity)
        self._timed: SpscRing[Command] = SpscRing(cfg.command_capacity)
        self._returns: SpscRing[np.ndarray] = SpscRing(4 * cfg.slots * (cfg.queue_capacity + 2) + 64)
        self.master_db = 0.0
        self.autolevel = True
        self.xfade_samples = max(1, int(round(cfg.xfade * self.sr)))
        self.curve = CURVES.index(cfg.curve)
        self.morph_mode = 0
        self.morph_pos = 0.0
        self.morph_x = 0.5
        self.morph_y = 0.5
        self.frame = 0  # output frames produced so far
        self.return_overflows = 0
        self.clips_dropped = 0
        self._ops = {
            OP_GAIN: self._op_gain, OP_PAN: self._op_pan, OP_MUTE: self._op_mute, OP_SOLO: self._op_solo,
            OP_NEXT: self._op_next, OP_FLUSH: self._op_flush, OP_PUSH: self._op_push,
            OP_MASTER: self._op_master, OP_XFADE: self._op_xfade, OP_CURVE: self._op_curve,
            OP_AUTOLEVEL: self._op_autolevel, OP_MORPH_MODE: self._op_morph_mode,
            OP_MORPH_POS: self._op_morph_pos, OP_MORPH_X: self._op_morph_x, OP_MORPH_Y: self._op_morph_y,
        }

    # -- control side ----------------------------------------------------------------------------
    def send(self, cmd: Command) -> bool:
        """Queue a command for the next block (False: the ring is full; nothing was queued)."""
        if cmd.frame >= 0:
            return self._timed.push(cmd)
        return self._cmds.push(cmd)

    def returned(self) -> list[np.ndarray]:
        """Clip buffers the audio thread is done with (control side frees or archives them)."""
        out = []
        while (c := self._returns.pop()) is not None:
            out.append(c)
        return out

    def buffered_frames(self, slot: int) -> int:
        """Frames of audio ready for a slot: the rest of what plays now plus its queue."""
        raise NotImplementedError

    @property
    def commands_rejected(self) -> int:
        return self._cmds.rejected + self._timed.rejected

    # -- audio thread ----------------------------------------------------------------------------
    def process(self, out: np.ndarray) -> None:
        """Fill `out` (frames, 2) float32 with the next frames of the mix."""
        self._process(out)

    def _process(self, out: np.ndarray) -> None:
        """Apply the commands waiting, then render, splitting the buffer at timed commands and at
        max_block."""
        cmds = self._cmds
        for _ in range(256):
            c = cmds.pop()
            if c is None:
                break
            self._apply(c)
        n_total = out.shape[0]
        maxb = self.cfg.max_block
        pos = 0
        timed = self._timed
        while pos < n_total:
            end = min(n_total, pos + maxb)
            c = timed.peek()
            if c is not None and c.frame < self.frame + (end - pos):
                at = pos + max(0, c.frame - self.frame)
                if at > pos:
                    self._render(out[pos:at])
                    pos = at
                timed.pop()
                self._apply(c)
                continue
            self._render(out if pos == 0 and end == n_total else out[pos:end])
            pos = end

    def _apply(self, c: Command) -> None:
        self._ops[c.op](c)

    def _render(self, o: np.ndarray) -> None:
        raise NotImplementedError

    def _retire(self, clip: np.ndarray) -> None:
        if not self._returns.push(clip):
            self.return_overflows += 1  # the buffer is freed here: rare, and counted

    @property
    def audio_thread_frees(self) -> int:
        """Clips freed on the audio thread because the way back was full (should stay 0: the
        control loop takes retired clips back every tick)."""
        return self.return_overflows

    # -- gains -----------------------------------------------------------------------------------
    def _set_ramp(self, slot: int, left: float, right: float, samples: int) -> None:
        """Glide a slot's stereo gain (slot -1: the master's) to (left, right) over `samples`."""
        raise NotImplementedError

    def _morph_weight(self, i: int) -> float:
        n = len(self.slots)
        if self.morph_mode == 1 and n > 1:
            d = abs(self.morph_pos - i / (n - 1)) * (n - 1)
            return math.cos(min(d, 1.0) * _HALF_PI)
        if self.morph_mode == 2 and i < 4:
            x, y = self.morph_x, self.morph_y
            b = ((1 - x) * (1 - y), x * (1 - y), (1 - x) * y, x * y)[i]
            return math.sqrt(b)
        return 1.0

    def _update_gains(self, glide: float, only: int = -1) -> None:
        any_solo = any(s.solo for s in self.slots)
        samples = int(round(glide * self.sr))
        power = 0.0
        for s in self.slots:
            amp = db_to_amp(s.gain_db) * self._morph_weight(s.index)
            if s.mute or (any_solo and not s.solo):
                amp = 0.0
            s.amp = amp
            if s.started:
                power += min(1.0, amp) ** 2
            if only < 0 or only == s.index:
                th = (s.pan + 1.0) * math.pi / 4
                self._set_ramp(s.index, amp * math.sqrt(2) * math.cos(th), amp * math.sqrt(2) * math.sin(th),
                               samples)
        m = db_to_amp(self.master_db)
        if self.autolevel:
            m /= math.sqrt(max(1.0, power))
        self._set_ramp(-1, m, m, samples)

    def _op_gain(self, c: Command) -> None:
        self.slots[c.slot].gain_db = c.value
        self._update_gains(c.glide)

    def _op_pan(self, c: Command) -> None:
        self.slots[c.slot].pan = c.value
        self._update_gains(c.glide, only=c.slot)

    def _op_mute(self, c: Command) -> None:
        self.slots[c.slot].mute = bool(c.value)
        self._update_gains(c.glide)

    def _op_solo(self, c: Command) -> None:
        self.slots[c.slot].solo = bool(c.value)
        self._update_gains(c.glide)

    def _op_master(self, c: Command) -> None:
        self.master_db = c.value
        self._update_gains(c.glide)

    def _op_autolevel(self, c: Command) -> None:
        self.autolevel = bool(c.value)
        self._update_gains(c.glide)

    def _op_morph_mode(self, c: Command) -> None:
        self.morph_mode = int(c.value)
        self._update_gains(c.glide)

    def _op_morph_pos(self, c: Command) -> None:
        self.morph_pos = c.value
        self._update_gains(c.glide)

    def _op_morph_x(self, c: Command) -> None:
        self.morph_x = c.value
        self._update_gains(c.glide)

    def _op_morph_y(self, c: Command) -> None:
        self.morph_y = c.value
        self._update_gains(c.glide)

    def _op_curve(self, c: Command) -> None:
        self.curve = int(c.value)  # fades in progress keep their curve: no gain step mid-fade

    # -- per core: clips -------------------------------------------------------------------------
    def _op_xfade(self, c: Command) -> None:
        raise NotImplementedError

    def _op_next(self, c: Command) -> None:
        raise NotImplementedError

    def _op_flush(self, c: Command) -> None:
        raise NotImplementedError

    def _op_push(self, c: Command) -> None:
        raise NotImplementedError


# == the numpy core ================================================================================
class _Ramp:
    """A per-channel linear glide computed from the sample count since it started (block exact)."""

    __slots__ = ("start", "target", "delta", "S", "k")

    def __init__(self, value: float) -> None:
        self.start = np.full(2, value)
        self.target = np.full(2, value)
        self.delta = np.zeros(2)
        self.S = 1
        self.k = 1

    def now(self, c: int) -> float:
        return float(self.start[c] + self.delta[c] * min(1.0, self.k / self.S))

    def set(self, left: float, right: float, samples: int) -> None:
        left, right = _snap1(left), _snap1(right)
        if left == self.target[0] and right == self.target[1]:
            return  # already there or on the way: keep the glide in progress
        a, b = self.now(0), self.now(1)
        self.start[0], self.start[1] = a, b
        self.target[0], self.target[1] = left, right
        self.delta[0], self.delta[1] = left - a, right - b
        self.S = max(1, samples)
        self.k = 0

    def apply(self, x: np.ndarray, ramp1: np.ndarray, frac: np.ndarray, tmp: np.ndarray) -> None:
        """Multiply x (n, 2) in place by the ramp over the next n samples and advance."""
        n = x.shape[0]
        if self.k >= self.S:
            if self.target[0] != 1.0 or self.target[1] != 1.0:
                np.multiply(x, self.target, out=x, casting="same_kind")
            return
        m = min(n, self.S - self.k)
        f = frac[:m]
        np.add(ramp1[:m], self.k, out=f)
        f /= self.S
        t = tmp[:m]
        for c in (0, 1):
            np.multiply(f, self.delta[c], out=t)
            t += self.start[c]
            np.multiply(x[:m, c], t, out=x[:m, c], casting="same_kind")
        if m < n:
            np.multiply(x[m:], self.target, out=x[m:], casting="same_kind")
        self.k += m


class _Slot:
    __slots__ = ("index", "queue", "q_head", "q_count", "cur", "cur_pos", "inc", "inc_pos", "fading",
                 "anchor", "rate", "fade_k", "fade_total", "fade_curve", "started", "ramp",
                 "gain_db", "pan", "mute", "solo", "amp", "starvations", "transitions", "nexts_ignored",
                 "level", "queued_frames", "pushes", "flushes", "next_pending")

    def __init__(self, index: int, capacity: int) -> None:
        self.index = index
        self.queue: list[np.ndarray | None] = [None] * capacity
        self.q_head = 0
        self.q_count = 0
        self.cur: np.ndarray | None = None
        self.cur_pos = 0
        self.inc: np.ndarray | None = None
        self.inc_pos = 0
        self.fading = False
        self.anchor = 0.0
        self.rate = 1.0
        self.fade_k = 0
        self.fade_total = 1
        self.fade_curve = 0
        self.started = False
        self.ramp = _Ramp(1.0)
        self.gain_db = 0.0
        self.pan = 0.0
        self.mute = False
        self.solo = False
        self.amp = 1.0  # fader x mute/solo x morph, before pan
        self.starvations = 0
        self.transitions = 0
        self.nexts_ignored = 0
        self.level = 0.0  # RMS of the last block, after gain
        self.queued_frames = 0
        self.pushes = 0  # OP_PUSH commands applied (accepted or dropped)
        self.flushes = 0  # OP_FLUSH commands applied
        self.next_pending = False  # a `next` that arrived mid-fade: runs when the fade ends

    def pop(self) -> np.ndarray | None:
        if self.q_count == 0:
            return None
        clip = self.queue[self.q_head]
        self.queue[self.q_head] = None
        self.q_head = (self.q_head + 1) % len(self.queue)
        self.q_count -= 1
        assert clip is not None
        self.queued_frames -= clip.shape[0]
        return clip

    def push(self, clip: np.ndarray) -> bool:
        cap = len(self.queue)
        if self.q_count == cap:
            return False
        self.queue[(self.q_head + self.q_count) % cap] = clip
        self.q_count += 1
        self.queued_frames += clip.shape[0]
        return True


class _NumpyMixer(Mixer):
    """The mixer in numpy: the reference the C core follows, and the fallback without it."""

    core = "numpy"
    slots: list[_Slot]  # type: ignore[assignment]
    limiter: Limiter

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__(cfg)
        n = cfg.max_block
        self.slots = [_Slot(i, cfg.queue_capacity) for i in range(cfg.slots)]
        self.limiter = Limiter(self.sr, n, 2, cfg.ceiling_db, cfg.lookahead)
        self.master = _Ramp(1.0)
        # preallocated scratch
        self._ramp1 = np.arange(1, n + 1, dtype=np.float64)
        self._ph = np.empty(n, np.float64)
        self._gin = np.empty(n, np.float64)
        self._gout = np.empty(n, np.float64)
        self._frac = np.empty(n, np.float64)
        self._tmp64 = np.empty(n, np.float64)
        self._sbuf = np.empty((n, 2), np.float32)
        self._tmp = np.empty((n, 2), np.float32)
        self._mix = np.empty((n, 2), np.float32)

    def buffered_frames(self, slot: int) -> int:
        s = self.slots[slot]
        playing = s.inc if s.fading else s.cur
        pos = s.inc_pos if s.fading else s.cur_pos
        rest = playing.shape[0] - pos if playing is not None else 0
        return rest + s.queued_frames

    def _set_ramp(self, slot: int, left: float, right: float, samples: int) -> None:
        (self.master if slot < 0 else self.slots[slot].ramp).set(left, right, samples)

    def _render(self, o: np.ndarray) -> None:
        n = o.shape[0]
        for s in self.slots:
            if not s.started and s.q_count:
                self._start(s)
        mix = self._mix[:n]
        mix.fill(0.0)
        sbuf = self._sbuf[:n]
        for s in self.slots:
            if not s.started:
                s.level = 0.0
                continue
            self._render_slot(s, sbuf)
            s.ramp.apply(sbuf, self._ramp1, self._frac, self._tmp64)
            flat = sbuf.reshape(-1)
            s.level = math.sqrt(float(np.dot(flat, flat)) / (2 * n))
            mix += sbuf
        self.master.apply(mix, self._ramp1, self._frac, self._tmp64)
        o[:] = mix
        self.limiter.process(o)
        self.frame += n

    def _nominal_fade(self, clip: np.ndarray) -> int:
        return max(1, min(self.xfade_samples, clip.shape[0] // 2))

    def _start(self, s: _Slot) -> None:
        clip = s.pop()
        assert clip is not None
        f = self._nominal_fade(clip)
        offset = 0
        if self.cfg.stagger:
            offset = int(s.index / len(self.slots) * max(0, clip.shape[0] - 2 * f))
        s.cur = None
        s.inc, s.inc_pos = clip, offset
        self._begin_fade(s, f)
        s.started = True
        self._update_gains(_AUTOLEVEL_GLIDE)

    def _begin_fade(self, s: _Slot, samples: int) -> None:
        s.fading = True
        s.anchor = 0.0
        s.rate = 1.0 / samples
        s.fade_k = 0
        s.fade_total = samples
        s.fade_curve = self.curve

    def _transition(self, s: _Slot, forced: bool) -> bool:
        cur = s.cur
        assert cur is not None
        nxt = s.pop()
        if nxt is None:
            if forced:
                return False
            nxt = cur  # starved: crossfade the clip into its own start, never silence
            s.starvations += 1
        rem = cur.shape[0] - s.cur_pos
        f = max(1, min(self.xfade_samples, nxt.shape[0] // 2, rem))
        s.inc, s.inc_pos = nxt, 0
        self._begin_fade(s, f)
        s.transitions += 1
        return True

    def _render_slot(self, s: _Slot, out: np.ndarray) -> None:
        n = out.shape[0]
        done = 0
        while done < n:
            if s.fading:
                done += self._render_fade(s, out, done, n)
                continue
            cur = s.cur
            assert cur is not None
            until = cur.shape[0] - s.cur_pos - self._nominal_fade(cur)
            if until <= 0:
                self._transition(s, forced=False)
                continue
            k = min(n - done, until)
            out[done:done + k] = cur[s.cur_pos:s.cur_pos + k]
            s.cur_pos += k
            done += k

    def _render_fade(self, s: _Slot, out: np.ndarray, done: int, n: int) -> int:
        k = min(n - done, s.fade_total - s.fade_k)
        ph = self._ph[:k]
        np.add(self._ramp1[:k], s.fade_k, out=ph)
        ph *= s.rate
        ph += s.anchor
        np.minimum(ph, 1.0, out=ph)
        ph *= _HALF_PI
        gin, gout = self._gin[:k], self._gout[:k]
        np.sin(ph, out=gin)
        np.cos(ph, out=gout)
        if s.fade_curve == 1:  # sin2
            np.multiply(gin, gin, out=gin)
            np.multiply(gout, gout, out=gout)
        o = out[done:done + k]
        inc = s.inc
        assert inc is not None
        np.multiply(inc[s.inc_pos:s.inc_pos + k], gin[:, None], out=o, casting="same_kind")
        cur = s.cur
        if cur is not None:
            t = self._tmp[:k]
            np.multiply(cur[s.cur_pos:s.cur_pos + k], gout[:, None], out=t, casting="same_kind")
            o += t
            s.cur_pos += k
        s.inc_pos += k
        s.fade_k += k
        if s.fade_k >= s.fade_total:
            if cur is not None and cur is not inc:
                self._retire(cur)
            s.cur, s.cur_pos = inc, s.inc_pos
            s.inc = None
            s.fading = False
            if s.next_pending:
                s.next_pending = False
                if not self._transition(s, forced=True):
                    s.nexts_ignored += 1
        return k

    def _op_xfade(self, c: Command) -> None:
        self.xfade_samples = max(1, int(round(c.value * self.sr)))
        for s in self.slots:
            if not s.fading:
                continue
            # continue from the current phase at the new rate, finishing before either clip ends
            p = s.anchor + s.rate * s.fade_k
            if p >= 1.0:
                continue
            inc = s.inc
            assert inc is not None
            limit = inc.shape[0] - s.inc_pos
            if s.cur is not None:
                limit = min(limit, s.cur.shape[0] - s.cur_pos)
            limit = max(1, limit)
            rate = 1.0 / self.xfade_samples
            if (1.0 - p) / rate > limit:
                rate = (1.0 - p) / limit
            s.anchor, s.rate, s.fade_k = p, rate, 0
            s.fade_total = max(1, min(limit, math.ceil((1.0 - p) / rate - 1e-9)))

    def _op_next(self, c: Command) -> None:
        s = self.slots[c.slot]
        if s.fading and s.cur is not None:
            s.next_pending = True
        elif s.cur is None or not self._transition(s, forced=True):
            s.nexts_ignored += 1

    def _op_flush(self, c: Command) -> None:
        s = self.slots[c.slot]
        s.flushes += 1
        while (clip := s.pop()) is not None:
            self._retire(clip)

    def _op_push(self, c: Command) -> None:
        s = self.slots[c.slot]
        assert c.clip is not None
        s.pushes += 1
        if not s.push(c.clip):
            self.clips_dropped += 1
            self._retire(c.clip)


# == the compiled core =============================================================================
class _CSlot:
    """A slot of the C core: settings in Python, state and counters read from the C struct."""

    __slots__ = ("index", "gain_db", "pan", "mute", "solo", "pushes", "flushes", "_c", "_owner")

    def __init__(self, index: int, c: Any, owner: Any) -> None:
        self.index = index
        self.gain_db = 0.0
        self.pan = 0.0
        self.mute = False
        self.solo = False
        self.pushes = 0  # OP_PUSH commands applied (accepted or dropped)
        self.flushes = 0  # OP_FLUSH commands applied
        self._c = c  # mc_slot, inside the state that `owner` keeps alive
        self._owner = owner

    @property
    def amp(self) -> float:
        return float(self._c.amp)

    @amp.setter
    def amp(self, value: float) -> None:
        self._c.amp = value

    @property
    def started(self) -> bool:
        return bool(self._c.started)

    @property
    def q_count(self) -> int:
        return int(self._c.q_count)

    @property
    def queued_frames(self) -> int:
        return int(self._c.queued_frames)

    @property
    def starvations(self) -> int:
        return int(self._c.starvations)

    @property
    def transitions(self) -> int:
        return int(self._c.transitions)

    @property
    def nexts_ignored(self) -> int:
        return int(self._c.nexts_ignored)

    @property
    def level(self) -> float:
        return float(self._c.level)


class _CLimiter:
    """The C core's limiter, as the control side reads it."""

    def __init__(self, st: Any) -> None:
        self._st = st

    @property
    def latency(self) -> int:
        """Delay in samples added by the look-ahead."""
        return int(self._st.lim.L)

    @property
    def reducing(self) -> float:
        return float(self._st.lim.reducing)


class _CMixer(Mixer):
    """The mixer with its per-sample work in mixcore.c: one C call per (sub-)block."""

    core = "c"
    slots: list[_CSlot]  # type: ignore[assignment]
    limiter: _CLimiter

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__(cfg)
        ffi, lib = _CORE.ffi, _CORE.lib
        self._ffi, self._lib = ffi, lib
        st = lib.mc_new(cfg.slots, cfg.queue_capacity, cfg.max_block, int(cfg.stagger), self.xfade_samples,
                        self.curve, int(round(_AUTOLEVEL_GLIDE * self.sr)), lookahead_samples(self.sr, cfg.lookahead),
                        cfg.ceiling_db, RELEASE_DB_PER_S / self.sr)
        if st == ffi.NULL:
            raise MemoryError("mixer: cannot allocate the C core's state")
        self._st = ffi.gc(st, lib.mc_free)
        self.slots = [_CSlot(i, self._st.slots[i], self._st) for i in range(cfg.slots)]
        self.limiter = _CLimiter(self._st)
        self._retired = self._st.retired
        # the clip arrays whose pointers C holds, by clip id; only the audio thread touches this
        self._clips: list[np.ndarray | None] = [None] * (cfg.slots * (cfg.queue_capacity + 2))
        self._out = np.zeros((cfg.max_block, 2), np.float32)  # for outputs C cannot write directly
        self._out_c = ffi.from_buffer("float[]", self._out, require_writable=True)
        self._mc_render = lib.mc_render
        self._from_buffer = ffi.from_buffer
        self._maxb = cfg.max_block

    def send(self, cmd: Command) -> bool:
        clip = cmd.clip
        if cmd.op == OP_PUSH and clip is not None:
            # C reads (frames, 2) float32 rows directly: make it so here, on the control side
            if clip.ndim != 2 or clip.shape[1] != 2:
                raise ValueError(f"clip of shape {clip.shape}: the mixer takes (frames, 2) arrays")
            if clip.dtype != _F32 or not (clip.flags.c_contiguous and clip.flags.aligned):
                cmd = replace(cmd, clip=np.require(clip, _F32, ["C", "A"]))
        return super().send(cmd)

    def buffered_frames(self, slot: int) -> int:
        return int(self._lib.mc_buffered(self._st, self.slots[slot].index))

    @property
    def retired_lost(self) -> int:
        """Clip ids freed without being reported back (a full list; should stay 0)."""
        return int(self._st.retired_lost)

    @property
    def audio_thread_frees(self) -> int:
        return self.return_overflows + self.retired_lost  # a lost id's clip goes when its slot is reused

    def process(self, out: np.ndarray) -> None:
        # In a callback every Python operation runs with cold caches, so the usual case (no
        # command due, one sub-block) goes straight to _render: a ring's items are not looked at
        # unless its positions say something is in it.
        n = len(out)
        cmds, timed = self._cmds, self._timed
        if cmds._w == cmds._r and n <= self._maxb:
            if timed._w != timed._r:
                t = timed.peek()
                if t is not None and t.frame < self.frame + n:
                    self._process(out)
                    return
            self._render(out)
            return
        self._process(out)

    def _view(self, o: np.ndarray) -> Any:
        """A cffi view for C to write straight into `o`, or None unless it is n x 2 C-contiguous float32."""
        if o.dtype is not _F32:
            return None
        try:
            buf = self._from_buffer("float[]", o, True)
        except (BufferError, TypeError, ValueError):  # not contiguous, or read-only
            return None
        return buf if len(buf) == 2 * o.shape[0] else None

    def _render(self, o: np.ndarray) -> None:
        n = o.shape[0]
        buf = self._view(o)
        if buf is not None:
            if self._mc_render(self._st, buf, n):
                self._drain()
        else:  # anything else: render into our buffer and let numpy copy (and cast)
            if self._mc_render(self._st, self._out_c, n):
                self._drain()
            o[:] = self._out[:n]
        self.frame += n

    def _drain(self) -> None:
        """Hand the clips C retired to the return ring."""
        st, ids, clips = self._st, self._retired, self._clips
        for j in range(st.n_retired):
            i = ids[j]
            clip = clips[i]
            clips[i] = None
            if clip is not None:
                self._retire(clip)
        st.n_retired = 0

    def _set_ramp(self, slot: int, left: float, right: float, samples: int) -> None:
        if slot < 0:  # what C needs to redo the autolevel when a slot starts
            self._st.master_amp = db_to_amp(self.master_db)
            self._st.autolevel = int(self.autolevel)
        self._lib.mc_set_ramp(self._st, slot, left, right, samples)

    def _op_curve(self, c: Command) -> None:
        super()._op_curve(c)
        self._st.curve = self.curve

    def _op_xfade(self, c: Command) -> None:
        self.xfade_samples = max(1, int(round(c.value * self.sr)))
        self._lib.mc_set_xfade(self._st, self.xfade_samples)

    def _op_next(self, c: Command) -> None:
        self._lib.mc_next(self._st, self.slots[c.slot].index)

    def _op_flush(self, c: Command) -> None:
        self.slots[c.slot].flushes += 1
        self._lib.mc_flush(self._st, self.slots[c.slot].index)
        self._drain()

    def _op_push(self, c: Command) -> None:
        s = self.slots[c.slot]
        clip = c.clip
        assert clip is not None
        s.pushes += 1
        i = self._lib.mc_push(self._st, s.index, self._ffi.from_buffer("float[]", clip), clip.shape[0])
        if i < 0:
            self.clips_dropped += 1
            self._retire(clip)
        else:
            self._clips[i] = clip


# == choosing ======================================================================================
def _load_core() -> tuple[Any, str]:
    try:
        mod = importlib.import_module("instrument._mixcore")
    except ImportError as e:
        return None, str(e)
    if mod.lib.MC_VERSION != _CORE_VERSION:
        return None, f"a stale build (version {mod.lib.MC_VERSION}, this code needs {_CORE_VERSION})"
    return mod, ""


_CORE, _CORE_ERROR = _load_core()
_logged: set[str] = set()


def _log_once(key: str, level: int, msg: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        log.log(level, msg, *args)


def _choose_core() -> type[Mixer]:
    """The compiled core unless ENDLESS_PURE_PYTHON=1 or it is not built (logged once)."""
    if os.environ.get("ENDLESS_PURE_PYTHON", "") not in ("", "0"):
        _log_once("forced", logging.INFO, "mixer: numpy core (ENDLESS_PURE_PYTHON is set)")
        return _NumpyMixer
    if _CORE is None:
        _log_once("missing", logging.WARNING, "mixer: the compiled core is not available (%s): using the numpy "
                  "core, which costs ~25x more per block; `pip install -e .` builds it", _CORE_ERROR)
        return _NumpyMixer
    _log_once("c", logging.DEBUG, "mixer: compiled C core (%s)", _CORE.__file__)
    return _CMixer
