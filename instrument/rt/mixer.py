"""The control side's handle on the audio thread's C core (core.c): configuration, commands, clips,
telemetry, the recorder's tap, and offline rendering.

A `Mixer` owns one `rt_state`. Python never touches the audio state directly: `send` writes a
plain command struct into a lock-free ring (immediate, or timed to an exact output frame), clip
buffers are registered under ids that come back through a return ring when the audio thread is
done with them, and everything the control side reads (frame, per-slot counters and levels,
limiter reduction, underflows, callback durations) comes from the telemetry struct C rewrites after
every block. `process` renders offline through the same `rt_process` the device callback runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from instrument.rt._load import ffi, lib

CURVES = ("equal_power", "sin2")  # RT_CURVE values, in order
MORPH_MODES = ("off", "line", "xy")  # RT_MORPH_MODE values, in order
# 0.25 ms (11 samples at 44.1 kHz): every control reaches the output this much later, so it is kept
# short (a safety limiter that rarely works; a longer look-ahead, `--lookahead`, attacks more gently)
LOOKAHEAD_S = 0.00025
RELEASE_DB_PER_S = 20.0
MAX_SLOTS = int(lib.RT_MAX_SLOTS)

(OP_GAIN, OP_PAN, OP_MUTE, OP_SOLO, OP_NEXT, OP_FLUSH, OP_PUSH, OP_MASTER, OP_XFADE, OP_CURVE,
 OP_AUTOLEVEL, OP_MORPH_MODE, OP_MORPH_POS, OP_MORPH_X, OP_MORPH_Y, OP_TAP) = (
    lib.RT_GAIN, lib.RT_PAN, lib.RT_MUTE, lib.RT_SOLO, lib.RT_NEXT, lib.RT_FLUSH, lib.RT_PUSH, lib.RT_MASTER,
    lib.RT_XFADE, lib.RT_CURVE, lib.RT_AUTOLEVEL, lib.RT_MORPH_MODE, lib.RT_MORPH_POS, lib.RT_MORPH_X,
    lib.RT_MORPH_Y, lib.RT_TAP)

_F32 = np.dtype(np.float32)
CALLBACK_DTYPE = np.dtype([("start_ns", np.int64), ("frame", np.int64), ("ns", np.uint32), ("status", np.uint32)])
assert CALLBACK_DTYPE.itemsize == ffi.sizeof("rt_callback_info")
UNDERFLOW = 0x4  # paOutputUnderflow in rt_callback_info.status


def lookahead_samples(sample_rate: int, lookahead_s: float = LOOKAHEAD_S) -> int:
    return max(1, int(round(lookahead_s * sample_rate)))


@dataclass(frozen=True, slots=True)
class Command:
    """One change for the audio thread. `frame` >= 0: apply at that output frame (the timed ring,
    which takes commands in frame order). Gains (OP_GAIN, OP_MASTER) are linear amplitudes; OP_XFADE
    and `glide` are seconds."""

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
    max_block: int = 4096  # largest sub-block rendered at once (bigger callbacks are split)
    queue_capacity: int = 8  # ready clips per slot
    # the three below: None takes the instrument's default (the engine fills in the registry's);
    # a Mixer built directly needs them given
    xfade: float | None = None  # T_f seconds
    curve: str | None = None  # one of CURVES
    stagger: bool = True  # start slots at phase offsets so transitions do not coincide
    ceiling_db: float = -1.0  # limiter ceiling
    lookahead: float = LOOKAHEAD_S  # limiter look-ahead, seconds: the output's delay behind the mix
    command_capacity: int = 1024  # each of the two command rings
    autolevel_glide: float | None = None  # seconds the master glides when autolevel follows slots starting
    tap_seconds: float = 10.0  # the recorder's tap ring: how far its writer thread may fall behind


class SlotInfo:
    """One slot as the audio thread last published it (read-only)."""

    __slots__ = ("index", "_t")

    def __init__(self, index: int, t: Any) -> None:
        self.index = index
        self._t = t  # rt_slot_info inside the telemetry struct

    started = property(lambda self: bool(self._t.started))
    q_count = property(lambda self: int(self._t.q_count))
    queued_frames = property(lambda self: int(self._t.queued_frames))
    buffered_frames = property(lambda self: int(self._t.buffered_frames))
    position = property(lambda self: int(self._t.position))
    pushes = property(lambda self: int(self._t.pushes))  # OP_PUSH applied (queued or dropped)
    flushes = property(lambda self: int(self._t.flushes))  # OP_FLUSH applied
    starvations = property(lambda self: int(self._t.starvations))
    transitions = property(lambda self: int(self._t.transitions))
    nexts_ignored = property(lambda self: int(self._t.nexts_ignored))
    amp = property(lambda self: float(self._t.amp))  # fader x mute/solo x morph, before pan
    level = property(lambda self: float(self._t.level))  # RMS of the last block, after gain


class LimiterInfo:
    def __init__(self, tel: Any) -> None:
        self._tel = tel

    @property
    def latency(self) -> int:
        """The look-ahead: the output's delay behind the mix, in samples."""
        return int(self._tel.lookahead)

    @property
    def reducing(self) -> float:
        """Gain reduction now, in dB."""
        return float(self._tel.limiter_db)


class Mixer:
    """The audio thread's state, and the rings to it. Control code talks to it only through `send`,
    `returned`, the tap and the read-only telemetry; `process` (offline) or a `Stream` (live) runs it."""

    def __init__(self, cfg: MixerConfig) -> None:
        if not 1 <= cfg.slots <= MAX_SLOTS:
            raise ValueError(f"slots {cfg.slots} out of range 1..{MAX_SLOTS}")
        if cfg.xfade is None or cfg.curve is None or cfg.autolevel_glide is None:
            raise ValueError("MixerConfig: xfade, curve and autolevel_glide must be given (the engine fills them in "
                             "from the parameter registry)")
        if cfg.curve not in CURVES:
            raise ValueError(f"curve {cfg.curve!r}: one of {', '.join(CURVES)}")
        self.cfg = cfg
        self.sr = cfg.sample_rate
        # ids for every clip that can be queued, playing, or in a ring on its way
        self._nclips = cfg.slots * (cfg.queue_capacity + 2) + 2 * cfg.command_capacity
        st = lib.rt_new(cfg.slots, cfg.queue_capacity, cfg.max_block, int(cfg.stagger),
                        self._samples(cfg.xfade, 1), CURVES.index(cfg.curve), self._samples(cfg.autolevel_glide),
                        lookahead_samples(self.sr, cfg.lookahead), cfg.ceiling_db, RELEASE_DB_PER_S / self.sr,
                        cfg.command_capacity, self._nclips, max(1, int(cfg.tap_seconds * self.sr)))
        if st == ffi.NULL:
            raise MemoryError("the audio core's state could not be allocated")
        self._st = ffi.gc(st, lib.rt_free)
        self._tel = lib.rt_info(self._st)
        self.slots = [SlotInfo(i, self._tel.slots[i]) for i in range(cfg.slots)]
        self.limiter = LimiterInfo(self._tel)
        self._clips: list[np.ndarray | None] = [None] * self._nclips  # by id: kept alive while C holds them
        self._free = list(range(self._nclips - 1, -1, -1))
        self._ids = ffi.new("int32_t[]", self._nclips)
        self._out = np.zeros((cfg.max_block, 2), np.float32)  # for outputs C cannot write into directly
        self.rejected = 0  # commands refused: a full ring, or no clip id free
        self.tap_owner: object | None = None  # the Recorder reading the tap, if any

    def _samples(self, seconds: float, least: int = 0) -> int:
        return max(least, int(round(seconds * self.sr)))

    # -- control side ----------------------------------------------------------------------------
    def send(self, cmd: Command) -> bool:
        """Queue a command for the audio thread (False: its ring is full, or every clip id is in use;
        nothing was queued: retry later or report it)."""
        value, clip_id = cmd.value, -1
        if cmd.op == OP_XFADE:
            value = float(self._samples(value, 1))
        elif cmd.op == OP_PUSH:
            clip = cmd.clip
            if clip is None or clip.ndim != 2 or clip.shape[1] != 2:
                raise ValueError(f"clip of shape {None if clip is None else clip.shape}: the mixer takes "
                                 "(frames, 2) arrays")
            if clip.dtype != _F32 or not (clip.flags.c_contiguous and clip.flags.aligned):
                clip = np.require(clip, _F32, ["C", "A"])
            if not self._free:
                self.rejected += 1
                return False
            clip_id = self._free.pop()
            self._clips[clip_id] = clip
            lib.rt_clip_set(self._st, clip_id, ffi.from_buffer("float[]", clip), clip.shape[0])
        if not lib.rt_send(self._st, cmd.frame if cmd.frame >= 0 else -1, cmd.op, cmd.slot, value,
                           self._samples(cmd.glide), clip_id):
            if clip_id >= 0:
                self._clips[clip_id] = None
                self._free.append(clip_id)
            self.rejected += 1
            return False
        return True

    def returned(self) -> list[np.ndarray]:
        """Clip buffers the audio thread is done with (the caller drops or archives them)."""
        out: list[np.ndarray] = []
        while True:
            n = lib.rt_returned(self._st, self._ids, self._nclips)
            for j in range(n):
                i = self._ids[j]
                clip = self._clips[i]
                self._clips[i] = None
                self._free.append(i)
                if clip is not None:
                    out.append(clip)
            if n < self._nclips:
                return out

    def take_commands(self) -> list[tuple[int, int, float]]:
        """(op, slot, value) of the next-block commands waiting, taken out of the ring as the audio
        thread would. For tests and tools, while no stream runs; a push's clip id is given back."""
        c = ffi.new("rt_cmd *")
        out = []
        while lib.rt_take_command(self._st, c):
            if c.op == OP_PUSH and c.clip >= 0:
                self._clips[c.clip] = None
                self._free.append(c.clip)
            out.append((int(c.op), int(c.slot), float(c.value)))
        return out

    @property
    def commands_rejected(self) -> int:
        return self.rejected

    # -- telemetry -------------------------------------------------------------------------------
    @property
    def frame(self) -> int:
        """Output frames produced so far."""
        return int(self._tel.frame)

    @property
    def clips_dropped(self) -> int:
        return int(self._tel.clips_dropped)

    @property
    def callbacks(self) -> int:
        return int(self._tel.callbacks)

    @property
    def underflows(self) -> int:
        return int(self._tel.underflows)

    @property
    def returns_lost(self) -> int:
        """Clip ids the way back could not take (0 by construction: the ring holds every id)."""
        return int(self._tel.returns_lost)

    def buffered_frames(self, slot: int) -> int:
        """Frames of audio ready for a slot: the rest of what plays now plus its queue."""
        return self.slots[slot].buffered_frames

    def callback_log(self, since: int = 0) -> tuple[int, np.ndarray]:
        """The device callbacks numbered `since` .. now, oldest first, as a structured array
        (start_ns: CLOCK_MONOTONIC as time.monotonic_ns gives it; frame: where its block starts;
        ns: how long it ran; status: PortAudio's flags). Only the last RT_TIMINGS are kept: returns
        (the number of the first one given, the array)."""
        n = self.callbacks
        size = int(lib.RT_TIMINGS)
        since = max(since, n - size, 0)
        ring = np.frombuffer(ffi.buffer(self._tel.callback_log), CALLBACK_DTYPE)
        return since, ring[np.arange(since, n) % size].copy()

    @property
    def audio_tid(self) -> int:
        """Linux: the device callback's thread id, once it has run (0 otherwise), for diagnostics
        (/proc/<pid>/task/<tid>/schedstat says how long it waited for a CPU)."""
        return int(self._tel.audio_tid)

    @property
    def callback_max_ns(self) -> int:
        return int(self._tel.callback_max_ns)

    # -- the recorder's tap ----------------------------------------------------------------------
    def tap_start(self, frames: int = -1) -> bool:
        """Copy the next `frames` frames of output (-1: until tap_stop) to the tap ring, from the
        next block on; whatever waited there is dropped first (called by the ring's reader)."""
        lib.rt_tap_discard(self._st)
        return self.send(Command(OP_TAP, value=float(frames)))

    def tap_stop(self) -> bool:
        return self.send(Command(OP_TAP, value=0.0))

    def tap_read(self, max_frames: int = 1 << 16) -> np.ndarray:
        """Tapped frames waiting, up to max_frames, as a new (n, 2) array (the reader's thread)."""
        buf = np.empty((max_frames, 2), np.float32)
        n = int(lib.rt_tap_read(self._st, ffi.from_buffer("float[]", buf, require_writable=True), max_frames))
        return buf[:n]

    @property
    def tapping(self) -> bool:
        return bool(self._tel.tapping)

    @property
    def tap_overflows(self) -> int:
        return int(self._tel.tap_overflows)

    # -- offline ---------------------------------------------------------------------------------
    def process(self, out: np.ndarray) -> None:
        """Render the next frames into `out` ((frames, 2) float32) on the calling thread, exactly as
        the device callback would (rt_process). Never while a Stream runs this mixer."""
        n = out.shape[0]
        if n == 0:
            return
        if out.dtype == _F32 and out.ndim == 2 and out.shape[1] == 2 and out.flags.c_contiguous \
                and out.flags.writeable:
            lib.rt_process(self._st, ffi.from_buffer("float[]", out, require_writable=True), n)
            return
        pos = 0
        while pos < n:  # anything else: render into our buffer and let numpy copy (and cast)
            k = min(n - pos, self._out.shape[0])
            lib.rt_process(self._st, ffi.from_buffer("float[]", self._out, require_writable=True), k)
            out[pos:pos + k] = self._out[:k]
            pos += k

    @property
    def state(self) -> Any:
        """The rt_state pointer (for a Stream)."""
        return self._st
