"""Transport: tempo and the beat grid in output frames, internal or slaved to MIDI clock.

Quantized changes (prompt cuts, `next`, preset recalls) ask `next_boundary(frame, "beat"|"bar")`
for the first grid frame at or after `frame` and are scheduled at that exact sample.

Internal: the grid starts at frame 0 (or where `/endless/tempo` last moved it, keeping the beat
position continuous). MIDI clock (24 ppqn): each tick arrives as an output frame (the MIDI input
converts its arrival time); the tempo is estimated from the last beat's worth of ticks, the grid
is anchored on the most recent beat tick; Start resets to bar 1 beat 1, Stop freezes, Continue
resumes, Song Position Pointer (in sixteenths) moves the beat count.

>>> t = Transport(44100, bpm=120)
>>> t.next_boundary(1, "beat"), t.next_boundary(22050, "bar")
(22050, 88200)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Unit = Literal["beat", "bar"]
PPQN = 24


@dataclass
class Transport:
    sample_rate: int
    bpm: float = 120.0
    beats_per_bar: int = 4
    source: Literal["internal", "midi"] = "internal"
    running: bool = True
    _origin: float = 0.0  # frame of beat 0 (internal grid)
    _ticks: deque[int] = field(default_factory=lambda: deque(maxlen=PPQN + 1))  # recent tick frames
    _tick_count: int = 0  # ticks since Start (or the song position)
    _anchor: tuple[int, int] | None = None  # (frame, beat index) of the latest beat tick

    @property
    def frames_per_beat(self) -> float:
        return self.sample_rate * 60.0 / self.bpm

    def set_tempo(self, bpm: float, frame: int) -> None:
        """Change the internal tempo at `frame`, keeping the beat position there continuous."""
        beat = self.beat_at(frame)
        self.bpm = bpm
        self._origin = frame - beat * self.frames_per_beat

    def beat_at(self, frame: int) -> float:
        if self.source == "midi" and self._anchor is not None:
            f0, b0 = self._anchor
            return b0 + (frame - f0) / self.frames_per_beat
        return (frame - self._origin) / self.frames_per_beat

    def next_boundary(self, frame: int, unit: Unit) -> int:
        """The first beat (or bar) frame at or after `frame`."""
        step = 1 if unit == "beat" else self.beats_per_bar
        beat = self.beat_at(frame)
        n = math.ceil(beat / step - 1e-9) * step
        if self.source == "midi" and self._anchor is not None:
            f0, b0 = self._anchor
            target = f0 + round((n - b0) * self.frames_per_beat)
        else:
            target = round(self._origin + n * self.frames_per_beat)
        return max(frame, int(target))

    # -- MIDI clock ------------------------------------------------------------------------------
    def clock(self, frame: int) -> None:
        """One MIDI clock tick (0xF8) arriving at output `frame`."""
        self.source = "midi"
        if not self.running:
            return
        ticks = self._ticks
        ticks.append(frame)
        if len(ticks) >= 2:
            per_tick = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
            if per_tick > 0:
                self.bpm = self.sample_rate * 60.0 / (per_tick * PPQN)
        if self._tick_count % PPQN == 0:
            self._anchor = (frame, self._tick_count // PPQN)
        self._tick_count += 1

    def start(self) -> None:
        """MIDI Start (0xFA): the next tick is bar 1, beat 1."""
        self.source = "midi"
        self.running = True
        self._tick_count = 0
        self._ticks.clear()
        self._anchor = None

    def stop(self) -> None:
        self.running = False

    def resume(self) -> None:
        """MIDI Continue (0xFB)."""
        self.running = True

    def song_position(self, sixteenths: int) -> None:
        """MIDI Song Position Pointer: the next tick is at this position (6 ticks a sixteenth)."""
        self._tick_count = sixteenths * 6
        self._anchor = None
