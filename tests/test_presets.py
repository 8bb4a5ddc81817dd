"""Presets: names, the file format, atomic store, recall (values, glide, sample-accurate frame),
next/previous, and arming with the real generator worker (tiny model)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from instrument.control.actions import Actions
from instrument.control.arming import ArmingScheduler
from instrument.control.presets import (
    PresetStore,
    parse_preset,
    preset_to_toml,
    slugify,
    snapshot,
)
from instrument.engine import Engine
from instrument.errors import ParamError
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.params import Registry
from instrument.render import render
from instrument.rt import MixerConfig, lookahead_samples

ROOT = Path(__file__).resolve().parents[1]
SR = 44100


def engine(slots: int = 4, **kw: object) -> Engine:
    return Engine(MixerConfig(slots=slots, sample_rate=SR, **kw))  # type: ignore[arg-type]


def store_with(tmp_path: Path, **files: str) -> PresetStore:
    user = tmp_path / "user"
    user.mkdir(exist_ok=True)
    for name, text in files.items():
        (user / f"{name}.toml").write_text(text)
    return PresetStore(user, ())


# == names and the format =========================================================================
@pytest.mark.parametrize("name, slug", [("Rain at Dawn!", "rain-at-dawn"), ("night_city-2", "night_city-2"),
                                        ("  Storm  ", "storm"), ("Über Wind", "ber-wind"), (7, "7")])
def test_slugs(name: str, slug: str) -> None:
    assert slugify(name) == slug


@pytest.mark.parametrize("bad", ["", "   ", "..", "../evil", "a/b", "/etc/passwd", "a\\b", "x..y", "!!!", "a" * 65])
def test_unsafe_names_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ParamError, match="preset name"):
        slugify(bad)
    with pytest.raises(ParamError):
        PresetStore(tmp_path / "user", ()).store(engine(), bad)
    assert not (tmp_path / "user").exists() or not any((tmp_path / "user").iterdir())
    assert not (tmp_path / "evil.toml").exists()


def test_example_presets_parse_and_number_from_one(tmp_path: Path) -> None:
    st = PresetStore(tmp_path / "none", [ROOT / "presets"])
    assert st.names() == ["night-city", "rain-at-dawn", "storm-front"]
    for slots in (1, 4, 16):
        for name in st.names():
            st.load(name, Registry(slots=slots))
    assert st.find(2)[0] == st.find("2")[0] == st.find(2.0)[0] == st.find("Rain at Dawn")[0] == "rain-at-dawn"
    with pytest.raises(ParamError, match=r"preset 4: out of range.*1\.\.3.*night-city, rain-at-dawn"):
        st.find(4)
    with pytest.raises(ParamError, match="not found.*night-city"):
        st.find("nope")
    p = st.load("rain-at-dawn", Registry())
    assert p.slot(2)["slot/prompt"] == "birds chirping at dawn:0.7 | distant rooster:0.3"  # a blend table


def test_user_presets_shadow_examples(tmp_path: Path) -> None:
    st = PresetStore(tmp_path / "user", [ROOT / "presets"])
    e = engine()
    e.handle("/endless/slot/1/gain", [-7.5])
    path = st.store(e, "Night City")
    assert path == tmp_path / "user" / "night-city.toml"
    assert st.names() == ["night-city", "rain-at-dawn", "storm-front"]
    assert st.load("night-city", e.registry).slot(0)["slot/gain"] == -7.5


@pytest.mark.parametrize("text, needle", [
    ("version = 1\ncolour = 1\n", "unknown key 'colour': allowed version, name, description, glide, global, slot"),
    ("version = 1\n[global]\nmaster = 1\n", "[global]: unknown key 'master': allowed master_gain, xfade"),
    ("version = 1\n[[slot]]\nvolume = 1\n", "[[slot]] #1: unknown key 'volume': allowed gain, pan"),
    ("version = 1\n[[slot]]\ngain = 99\n", "gain: /endless/slot/1/gain: 99 out of range"),
    ("version = 1\n[[slot]]\nprompt = { rain = -1 }\n", "blend part 'rain'"),
    ("version = 1\n[global]\ntempo = 120\n", "unknown key 'tempo'"),  # transport is not part of a scene
    ("name = 'x'\n", "version = None"),
    ("version = 1\nglide = -1\n", "glide = -1"),
    ("version = 1\n[[slot]]\nnext = 1\n", "unknown key 'next'"),  # triggers are not state
])
def test_bad_preset_files_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    st = store_with(tmp_path, bad=text)
    e = engine()
    before = dict(e.values)
    with pytest.raises(ParamError) as err:
        st.recall(e, "bad")
    assert str(tmp_path / "user" / "bad.toml") in str(err.value) and needle in str(err.value)
    assert e.values == before  # nothing applied


def test_store_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = PresetStore(tmp_path / "user", ())
    e = engine()
    path = st.store(e, "keep")
    good = path.read_text()
    e.handle("/endless/slot/1/gain", [-20])

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        st.store(e, "keep")
    assert path.read_text() == good and sorted(p.name for p in path.parent.iterdir()) == ["keep.toml"]


def test_store_and_recall_round_trip(tmp_path: Path) -> None:
    e = engine(slots=3)
    for address, value in [("/endless/slot/1/gain", -6.0), ("/endless/slot/2/pan", 0.25),
                           ("/endless/slot/3/mute", True), ("/endless/curve", "sin2"), ("/endless/xfade", 2.5),
                           ("/endless/morph/mode", "xy"), ("/endless/morph/x", 0.9)]:
        e.handle(address, [value])
    st = PresetStore(tmp_path / "user", ())
    st.store(e, "My Scene")
    text = (tmp_path / "user" / "my-scene.toml").read_text()
    assert 'name = "My Scene"' in text and "[[slot]]" in text and "tempo" not in text
    p = st.load("my-scene", e.registry)
    assert preset_to_toml(p, e.registry) == text
    again = parse_preset(text, "x", e.registry, "my-scene")
    assert (again.globals, again.slots, again.name) == (p.globals, p.slots, "My Scene")
    fresh = engine(slots=3)
    result = st.recall(fresh, "my-scene")
    scene_keys = [k for k in e.values if fresh.registry[k[0]].target == "mixer"]
    assert all(fresh.values[k] == e.values[k] for k in scene_keys)
    assert result.changes == 7 and result.skipped == ()
    assert st.recall(fresh, 1).changes == 0  # a recall of the current scene changes nothing


def test_recall_without_a_generator_skips_prompts_and_extra_slots(tmp_path: Path) -> None:
    st = PresetStore(tmp_path / "none", [ROOT / "presets"])
    e = engine(slots=2)
    r = st.recall(e, "storm-front")
    assert e.values[("slot/gain", 0)] == -2.0 and e.values[("slot/prompt", 0)] == ""
    assert r.skipped == ("slot 1 prompt (no generator)", "slot 2 prompt (no generator)",
                         "slot 3 (this instrument has 2)", "slot 4 (this instrument has 2)")


def _dc_engine() -> Engine:
    e = engine(slots=1, xfade=0.01, stagger=False)
    e.push_clip(0, np.full((3 * SR, 2), 0.1, np.float32))
    return e


def test_recall_glides_and_lands_on_its_frame(tmp_path: Path) -> None:
    st = store_with(tmp_path, quiet="version = 1\nglide = 0.5\n[[slot]]\ngain = -60.0\n")
    L = lookahead_samples(SR)  # the output runs L samples behind the mix (the limiter's lookahead)
    # at frame 22050 with the preset's own glide (0.5 s): a linear glide to silence from that sample
    e = _dc_engine()
    st.recall(e, "quiet", frame=SR // 2)
    out = render(e, 1.5, 256)[L:, 0]
    assert np.allclose(out[SR // 4:SR // 2], 0.1, atol=1e-6)
    assert out[SR // 2 + SR // 4] == pytest.approx(0.05, abs=1e-4)
    assert out[SR - 1] == 0.0 < out[SR - 2]
    assert np.all(out[SR:] == 0.0)
    # a glide of 0 given with the recall: the level drops on exactly that sample
    e = _dc_engine()
    st.recall(e, "quiet", glide=0.0, frame=12345)
    out = render(e, 0.5, 100)[L:, 0]
    assert out[12344] == pytest.approx(0.1, abs=1e-6) and np.all(out[12345:] == 0.0)


def test_next_previous_and_midi_actions(tmp_path: Path) -> None:
    st = PresetStore(tmp_path / "none", [ROOT / "presets"])
    e = engine()
    a = Actions(e, st)
    for path, slug in (("next", "night-city"), ("next", "rain-at-dawn"), ("previous", "night-city"),
                       ("previous", "storm-front")):  # wraps
        a.run(f"preset/{path}", ())
        assert a.current == slug
    a.run("preset/recall", (2, 0.0))  # as a MIDI program change or note calls it
    assert a.current == "rain-at-dawn" and e.values[("xfade", None)] == 8.0
    with pytest.raises(ParamError, match="needs MIDI input"):
        a.run("learn", ("/endless/xfade",))
    with pytest.raises(ParamError, match="arming needs the generator"):
        a.run("preset/arm", ("storm-front",))


@pytest.mark.parametrize("path, args", [("preset/recall", ("quiet", 0.0)), ("preset/next", (0.0,))])
def test_quantized_recall_lands_on_the_bar_from_osc_and_midi(tmp_path: Path, path: str, args: tuple[object, ...]) -> None:
    """OSC and MIDI (a sequencer's note, a program change) reach the same action."""
    st = store_with(tmp_path, quiet="version = 1\n[[slot]]\ngain = -60.0\n")
    e = _dc_engine()
    e.handle("/endless/quantize", ["bar"])  # 120 bpm, 4/4: bars every 2 s
    a = Actions(e, st)
    render(e, 0.5, 256)
    a.run(path, args)
    L = lookahead_samples(SR)
    out = render(e, 2.0, 256)[L:, 0]
    bar = 2 * SR - SR // 2  # frame 88200, from the render's start at 0.5 s
    assert out[bar - 1] == pytest.approx(0.1, abs=1e-6) and np.all(out[bar:] == 0.0)


class _Arrivals:
    """The generator's side for a recall test: clips dropped into a scheduler's inbox, as a worker's
    would arrive (its client is never started, so nothing else arrives)."""

    def __init__(self, e: Engine) -> None:
        self.e = e
        self.sched = e.generator

    def play(self, seconds: float, block: int = 256) -> np.ndarray:
        """What `render` does, without waiting for clips (they arrive when the test says)."""
        e = self.e
        out = np.zeros((round(seconds * SR), 2), np.float32)
        for pos in range(0, len(out), block):
            end = min(len(out), pos + block)
            e.schedule_script(e.mixer.frame + end - pos)
            e.pump()
            e.mixer.process(out[pos:end])
        return out

    def arrive(self, level: float, cut: bool) -> None:
        from instrument.clips import Clip, ClipInfo

        assert self.sched is not None
        plan = self.sched.plans[0]
        info = ClipInfo("generator", plan.prompt, 1, "test", 0.0)
        plan.inbox.append(Clip(np.full((30 * SR, 2), level, np.float32), SR, info, cut))
        plan.cut = False


@pytest.mark.parametrize("arrives, cut_at", [(0.7, 2.0), (2.3, 4.0)])
def test_quantized_recall_cuts_its_prompts_on_the_frame_of_its_mix(tmp_path: Path, arrives: float,
                                                                   cut_at: float) -> None:
    """A recall's new prompt cuts in on the bar its mixer settings land on, when its clip is there
    in time (an armed clip), else on the first bar after it arrives; live, a guard keeps changes ahead."""
    from instrument.generator.worker import GeneratorClient, WorkerSpec
    from instrument.scheduler import Scheduler

    st = store_with(tmp_path, scene='version = 1\n[[slot]]\nprompt = "thunder"\ngain = -6.0\n')
    e = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.05, stagger=False),
               Scheduler(GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR)), 1))
    e.guard_frames = 512  # as live
    clips = _Arrivals(e)
    e.handle("/endless/slot/1/prompt", ["rain"])
    clips.arrive(0.2, cut=False)
    clips.arrive(0.3, cut=False)
    e.handle("/endless/quantize", ["bar"])
    clips.play(0.5)
    Actions(e, st).run("preset/recall", ("scene", 0.0))
    assert e.values[("slot/prompt", 0)] == "thunder"  # asked of the generator at once
    clips.play(arrives - 0.5)
    clips.arrive(0.8, cut=True)
    L = lookahead_samples(SR)
    out = clips.play(4.5 - arrives)[L:, 0]
    at = round((cut_at - arrives) * SR)
    g = 10 ** (-6 / 20)
    assert [ev.frame for ev in e.clip_log if ev.cut] == [round(cut_at * SR)]
    assert out[at - 1] == pytest.approx(0.2 * (g if cut_at > 2.0 else 1.0), abs=1e-6)  # the old clip to here
    assert out[at] != out[at - 1]
    assert np.allclose(out[at + SR // 10:], 0.8 * g)  # the new prompt at the preset's gain
    assert e.mixer.slots[0].q_count == 0 and e.stats().transitions == (1,)


# == with the generator ===========================================================================
def _tick_until(e: Engine, cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    gen = e.generator
    assert gen is not None
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out; worker {gen.client.state} {gen.client.error}"
        gen.tick(0.05)


def test_arm_then_recall_plays_the_armed_clip_at_once(tmp_path: Path) -> None:
    """Arm pre-generates; the recall's prompt change takes the armed clip at once (no generation wait)."""
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, threads=1), hang_timeout=60)
    gen = ArmingScheduler(client, 2, base_seed=1)
    e = Engine(MixerConfig(slots=2, sample_rate=SR), gen)
    st = store_with(tmp_path,
                    thunder='version = 1\n[[slot]]\nprompt = "thunder"\nsteps = 2\nlength = 2.0\ngain = -3.0\n'
                            '[[slot]]\nprompt = { wind = 1, sea = 3 }\nsteps = 2\nlength = 2.0\n',
                    bad='version = 1\n[[slot]]\ngain = -9.0\n[[slot]]\nprompt = "rain:x | :2"\n')
    client.start()
    try:
        for s in range(2):
            for key, value in (("steps", 2), ("length", 2.0), ("prompt", "rain")):
                e.handle(f"/endless/slot/{s + 1}/{key}", [value])
        # a bad blend refuses the whole preset before anything changes
        with pytest.raises(ParamError, match="preset bad"):
            st.recall(e, "bad")
        assert e.values[("slot/gain", 0)] == 0.0
        assert st.arm(e, "thunder") == 2
        assert st.arm(e, "thunder") == 0  # already on its way
        _tick_until(e, lambda: gen.armed_ready(0, "thunder") and gen.armed_ready(1, "wind:1 | sea:3"))
        st.recall(e, "thunder")  # no tick in between: the clips are there at once
        for s, prompt in ((0, "thunder"), (1, "wind:1 | sea:3")):
            inbox = gen.plans[s].inbox
            assert len(inbox) == 1 and inbox[0].cut and inbox[0].info.prompt == prompt
        assert gen.arms_used == 2 and e.values[("slot/gain", 0)] == -3.0
        # without arming, a prompt change has to wait for the generator
        e.handle("/endless/slot/1/prompt", ["birds"])
        assert len(gen.plans[0].inbox) == 0 and gen.plans[0].cut
        assert e.pump() >= 1  # the armed clip of slot 2 goes to the mixer
    finally:
        client.stop()


def test_snapshot_has_every_scene_parameter() -> None:
    e = engine(slots=2)
    p = snapshot(e, "x")
    keys = {k for k, _ in p.globals} | {k for k, _ in p.slots[0]}
    assert {"master/gain", "xfade", "curve", "morph/mode", "slot/gain", "slot/prompt", "slot/steps"} <= keys
    assert not keys & {"tempo", "meter", "quantize", "slot/next", "slot/regenerate"}


def test_doctests() -> None:
    import doctest

    from instrument.control import presets

    result = doctest.testmod(presets)
    assert result.failed == 0 and result.attempted > 0
