"""Transport: the beat grid, MIDI clock slaving, and quantized changes landing on the sample."""

from __future__ import annotations

import numpy as np
import pytest

from instrument.engine import Engine
from instrument.mixer import MixerConfig
from instrument.transport import PPQN, Transport

SR = 44100


def test_internal_grid_and_tempo_change_keep_the_beat_continuous() -> None:
    t = Transport(SR, bpm=120)
    assert t.next_boundary(0, "beat") == 0
    assert t.next_boundary(1, "beat") == 22050
    assert t.next_boundary(22051, "bar") == 88200
    t.set_tempo(60, 44100)  # at beat 2
    assert t.beat_at(44100) == pytest.approx(2.0)
    assert t.next_boundary(44101, "beat") == 44100 + 44100
    t.beats_per_bar = 3
    assert t.next_boundary(44101, "bar") == 44100 + 44100  # beat 3 starts bar 2 in 3/4


def test_midi_clock_sets_tempo_start_and_song_position() -> None:
    t = Transport(SR)
    t.start()
    per_tick = SR * 60 / 100 / PPQN
    for k in range(3 * PPQN):
        t.clock(round(k * per_tick))
    assert t.source == "midi" and t.bpm == pytest.approx(100, rel=1e-3)
    assert t.next_boundary(round(70 * per_tick), "bar") == round(4 * PPQN * per_tick)
    t.song_position(16)  # bar 2 (16 sixteenths = 4 beats)
    t.clock(10_000_000)
    assert t.beat_at(10_000_000) == pytest.approx(4.0)


def _dc_engine(bpm_ticks: float | None) -> Engine:
    e = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.05, stagger=False))
    e.push_clip(0, np.full((30 * SR, 2), 0.2, np.float32))
    e.push_clip(0, np.full((30 * SR, 2), 0.3, np.float32))
    e.handle("/endless/quantize", ["bar"])
    return e


@pytest.mark.parametrize("bpm", [90.0, 120.0, 174.0])
def test_quantized_next_lands_on_the_bar_of_a_midi_clock(bpm: float) -> None:
    e = _dc_engine(bpm)
    per_tick = SR * 60 / bpm / PPQN
    e.transport.start()
    total, block = int(6 * SR), 256
    out = np.zeros((total, 2), np.float32)
    tick = 0
    asked_at = int(2.3 * SR)  # mid-bar for every tempo here
    for pos in range(0, total, block):
        end = min(total, pos + block)
        while round(tick * per_tick) < end:  # the clock as a sequencer sends it, tick by tick
            e.transport.clock(round(tick * per_tick))
            tick += 1
        if pos <= asked_at < end:
            e.handle("/endless/slot/1/next", [])
        e.schedule_script(end)
        e.pump()
        e.mixer.process(out[pos:end])
    bar = 4 * PPQN
    expected = next(round(k * bar * per_tick) for k in range(100) if round(k * bar * per_tick) > asked_at)
    L = e.mixer.limiter.latency
    landed = int(np.flatnonzero(out[:, 0] > 0.2 + 1e-6)[0]) - L
    assert abs(landed - expected) <= 1, (landed, expected)
    assert e.stats().transitions == (1,)


def test_quantize_off_applies_at_once_and_beat_uses_the_internal_tempo() -> None:
    e = _dc_engine(None)
    e.handle("/endless/quantize", ["beat"])
    e.handle("/endless/tempo", [100.0])
    from instrument.render import render

    render(e, 1.0, 512)
    e.handle("/endless/slot/1/next", [])  # at frame 44100 (beat 1.67): lands on beat 2
    out = render(e, 1.0, 512)
    L = e.mixer.limiter.latency
    landed = SR + int(np.flatnonzero(out[:, 0] > 0.2 + 1e-6)[0]) - L
    assert landed == round(2 * SR * 60 / 100)
