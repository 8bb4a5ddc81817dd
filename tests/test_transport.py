"""Transport: the beat grid, MIDI clock slaving, and quantized changes landing on the sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from instrument.clips import Clip, ClipInfo
from instrument.control.actions import Actions
from instrument.control.presets import PresetStore
from instrument.engine import Engine
from instrument.rt import MixerConfig
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


@pytest.mark.parametrize("action", ["next", "recall"])
@pytest.mark.parametrize("bpm", [90.0, 120.0, 174.0])
def test_quantized_next_and_recall_land_on_the_bar_of_a_midi_clock(bpm: float, action: str, tmp_path: Path) -> None:
    e = _dc_engine(bpm)
    (tmp_path / "quiet.toml").write_text("version = 1\n[[slot]]\ngain = -60.0\n")
    actions = Actions(e, PresetStore(tmp_path, ()))
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
        if pos <= asked_at < end and action == "next":
            e.handle("/endless/slot/1/next", [])
        elif pos <= asked_at < end:
            actions.run("preset/recall", ("quiet", 0.0))  # a program change, a sequencer's note
        e.schedule_script(end)
        e.pump()
        e.mixer.process(out[pos:end])
    bar = 4 * PPQN
    expected = next(round(k * bar * per_tick) for k in range(100) if round(k * bar * per_tick) > asked_at)
    L = e.mixer.limiter.latency
    # the first change after the ask (the output runs L samples behind the mix)
    landed = asked_at + int(np.flatnonzero(np.abs(out[asked_at + L:, 0] - 0.2) > 1e-6)[0])
    assert abs(landed - expected) <= 1, (landed, expected)
    assert e.stats().transitions == ((1,) if action == "next" else (0,))
    if action == "recall":
        assert np.all(out[landed + L:, 0] == 0.0)  # no glide: silent from that sample


@pytest.mark.parametrize("quantize", ["off", "beat"])
def test_quantize_off_applies_at_once_and_beat_uses_the_internal_tempo(quantize: str) -> None:
    e = _dc_engine(None)
    e.handle("/endless/quantize", [quantize])
    e.handle("/endless/tempo", [100.0])
    from instrument.render import render

    render(e, 1.0, 512)
    e.handle("/endless/slot/1/next", [])  # at frame 44100 (beat 1.67)
    out = render(e, 1.0, 512)
    L = e.mixer.limiter.latency
    landed = SR + int(np.flatnonzero(out[:, 0] > 0.2 + 1e-6)[0]) - L
    # off: on the next block's first sample (the frame it was sent at); beat: on beat 2
    assert landed == (SR if quantize == "off" else round(2 * SR * 60 / 100))


# -- a new prompt with a full queue: the scheduler's side, with clips the test hands in --------------
class Inbox:
    """A clip source the test fills, as the generator fills the scheduler's inbox."""

    name = "inbox"

    def __init__(self) -> None:
        self.clips: list[Clip] = []

    def add(self, level: float, cut: bool = False) -> None:
        audio = np.full((30 * SR, 2), level, np.float32)
        self.clips.append(Clip(audio, SR, ClipInfo("test", f"dc {level}", None, "test", 0.0), cut))

    def next_clip(self, slot: int) -> Clip | None:
        return self.clips.pop(0) if self.clips else None

    def close(self) -> None:
        pass


def _full_queue(quantize: str) -> tuple[Engine, Inbox]:
    """One slot playing DC 0.2 with 0.3 and 0.4 queued behind it (a full queue), 120 bpm."""
    src = Inbox()
    e = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.05, stagger=False), src)
    e.handle("/endless/quantize", [quantize])
    for level in (0.2, 0.3, 0.4):
        src.add(level)
    render_to(e, 0.5)
    assert e.mixer.slots[0].q_count == 2 and e.pending(0) == 2
    return e, src


def render_to(e: Engine, seconds: float, block: int = 256) -> np.ndarray:
    from instrument.render import render

    return render(e, seconds - e.mixer.frame / SR, block)


def _level_from(out: np.ndarray, start: float, level: float, e: Engine) -> int:
    """The output frame (absolute, limiter delay taken off) where the DC reaches `level`."""
    hit = np.flatnonzero(np.abs(out[:, 0] - level) < 1e-6)
    return int(round(start * SR)) + int(hit[0]) - e.mixer.limiter.latency


@pytest.mark.parametrize("quantize, cut_at", [("off", 1.2), ("beat", 1.5), ("bar", 2.0)])
def test_new_prompt_with_a_full_queue_drops_it_and_cuts_on_time(quantize: str, cut_at: float) -> None:
    e, src = _full_queue(quantize)
    render_to(e, 1.1)
    e.flush(0)  # what a prompt change does (Scheduler.regenerate)
    assert e.pending(0) == 0  # so the scheduler asks for the new prompt's first clip at once
    render_to(e, 1.2)
    src.add(0.6, cut=True)
    src.add(0.7)
    e.pump()
    assert e.pending(0) == 2  # the old clips are not counted: both new ones are taken
    out = render_to(e, 3.0)
    assert e.stats().transitions == (1,)
    assert np.allclose(out[: int((cut_at - 1.2) * SR)], 0.2)  # the old clip plays on until the cut
    # the crossfade starts on the cut's frame and ends on the new prompt, never the old queue's clips
    fade_from = 1.2 * SR + int(np.flatnonzero(np.abs(out[:, 0] - 0.2) > 1e-6)[0]) - e.mixer.limiter.latency
    assert abs(fade_from - cut_at * SR) <= 1, (fade_from, cut_at * SR)
    assert _level_from(out, 1.2, 0.6, e) <= cut_at * SR + 0.05 * SR + 1
    assert e.mixer.slots[0].q_count == 1  # 0.7 waits behind 0.6; 0.3 and 0.4 are gone
    assert [ev.prompt for ev in e.clip_log if ev.cut] == ["dc 0.6"]


def test_a_newer_prompt_calls_off_the_cut_still_waiting_for_its_bar() -> None:
    e, src = _full_queue("bar")
    render_to(e, 0.6)
    e.flush(0)
    src.add(0.6, cut=True)
    e.pump()  # the cut waits for the bar at 2.0 s
    render_to(e, 1.0)
    e.flush(0)  # a newer prompt before the bar: 0.6's cut is called off
    assert e.pending(0) == 0
    src.add(0.8, cut=True)
    e.pump()
    out = render_to(e, 3.0)
    assert e.stats().transitions == (1,)  # one crossfade, straight to the newest prompt
    assert abs(_level_from(out, 1.0, 0.8, e) - (2.0 + 0.05) * SR) <= 1
    assert np.allclose(out[-SR // 2:], 0.8) and e.mixer.slots[0].q_count == 0
    assert [ev.prompt for ev in e.clip_log][-1:] == ["dc 0.8"]
    assert "dc 0.6" not in [ev.prompt for ev in e.clip_log]


def test_a_full_command_ring_holds_the_clip_and_the_cut_until_there_is_room() -> None:
    """The clip taken from the source and a new prompt's cut are never dropped when the audio
    thread's ring is full: they go on the next tick, in order."""
    src = Inbox()
    e = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.05, stagger=False, command_capacity=2), src)
    src.add(0.2)
    render_to(e, 0.2)  # 0.2 plays
    e.handle("/endless/slot/1/gain", [-1.0])
    e.handle("/endless/slot/1/gain", [0.0])  # the ring is full now
    src.add(0.6, cut=True)
    assert e.pump() == 0 and len(src.clips) == 0  # taken from the source, held here
    e.mixer.process(np.zeros((256, 2), np.float32))  # the audio thread takes the gains
    e.handle("/endless/slot/1/gain", [0.0])  # one command left: the clip goes, its cut waits
    assert e.pump() == 1
    e.mixer.process(np.zeros((256, 2), np.float32))
    out = render_to(e, 0.6)  # the next tick sends the cut
    assert e.stats().transitions == (1,) and np.allclose(out[-SR // 20:], 0.6)
