"""Fallback and first sound (issue 14): a slot the generator has nothing for plays archived clips of
similar prompts, cuts to one at once on a prompt change, loops or fades out when told to; the first
fresh clip after a fallback cuts in; `endless play` sounds from the archive while the model loads.

The archive is real (FLAC files and SQLite in a temp folder, written through `Archive.add`); every
archived clip is a sine at its own frequency, so the output tells which clip played.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from instrument.archive.embed import embed_prompt, load_embedder
from instrument.archive.store import Archive
from instrument.build import build_engine
from instrument.clips import Clip, ClipInfo
from instrument.config import EngineConfig, SourceConfig
from instrument.control.presets import PresetStore
from instrument.engine import Engine
from instrument.errors import ConfigError, ParamError
from instrument.fallback import ArchiveLink
from instrument.generator.errors import ModelError
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.render import render
from instrument.rt import MixerConfig
from instrument.scheduler import Scheduler
from instrument.script import Event
from tests.conftest import ROOT, endless

SR = 44100
RAIN = ["rain on a tin roof", "heavy rain on a metal roof", "light rain on the roof", "rain falling on leaves",
        "rain drops on a window", "soft rain at night", "rain in the forest", "rain storm with wind"]
BIRDS = ["birds singing at dawn", "small birds chirping", "birds in a garden", "forest birds calling",
         "birds near a stream", "birds at sunrise", "seagulls and birds by the sea", "birds flock flying"]
OTHER = ["a dog barking", "city traffic", "church bells ringing", "a piano melody"]
PROMPTS = RAIN + BIRDS + OTHER
FREQ = {p: 200.0 + 40.0 * i for i, p in enumerate(PROMPTS)}  # each archived clip's sine
CLIP_S = 3.0


def sine_clip(prompt: str, seconds: float = CLIP_S) -> Clip:
    t = np.arange(int(seconds * SR)) / SR
    x = 0.2 * np.sin(2 * np.pi * FREQ[prompt] * t)
    ramp = np.linspace(0.0, 1.0, 441)
    x[:441] *= ramp
    x[-441:] *= ramp[::-1]
    audio = np.ascontiguousarray(np.repeat(x[:, None], 2, axis=1), dtype=np.float32)
    return Clip(audio, SR, ClipInfo("generator", prompt, PROMPTS.index(prompt), "test-sine", 0.0, 3, 4.5))


@pytest.fixture(scope="module")
def archive_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of one sine clip per prompt, embedded by the embedder the instrument loads."""
    root = tmp_path_factory.mktemp("archive")
    emb = load_embedder()
    with Archive(root) as a:
        for p in PROMPTS:
            a.add(sine_clip(p), embedding=embed_prompt(emb, p), embedder=emb.id)
    return root


@pytest.fixture
def archive(archive_src: Path, tmp_path: Path) -> Path:
    """A copy per test (play counts change it)."""
    import shutil

    return Path(shutil.copytree(archive_src, tmp_path / "archive"))


def top_k(root: Path, prompt: str, k: int = 8) -> dict[int, str]:
    """The archive's own ranking: id -> prompt of the k clips most similar to `prompt`."""
    emb = load_embedder()
    with Archive(root) as a:
        return {e.id: e.prompt for e, _ in a.similar(embed_prompt(emb, prompt), emb.id, k)}


def down_engine(root: Path | None, prompt: str, lead: float | None = None, slots: int = 1) -> Engine:
    """An engine whose generator is stopped (its worker never started), with the archive at `root`.
    `lead` None: a deterministic render's fallback; a number: live play's."""
    sched = Scheduler(GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR)), slots)
    sched.archive = ArchiveLink(root, slots, SR) if root is not None else None
    sched.fallback_lead = lead
    engine = Engine(MixerConfig(slots=slots, sample_rate=SR, xfade=0.5), sched)
    for s in range(slots):
        engine.handle(f"/endless/slot/{s + 1}/prompt", [prompt])
    return engine


def heard(audio: np.ndarray, window: float = 0.2) -> list[str]:
    """The archived prompts heard, in order (each window's strongest frequency), consecutive repeats
    merged; a window of silence is "-"."""
    n = int(window * SR)
    out: list[str] = []
    for i in range(0, len(audio) - n + 1, n):
        x = audio[i:i + n, 0].astype(np.float64)
        if np.sqrt(np.mean(x**2)) < 1e-4:
            name = "-"
        else:
            f = np.argmax(np.abs(np.fft.rfft(x * np.hanning(n)))) * SR / n
            name = min(PROMPTS, key=lambda p: abs(FREQ[p] - f))
            assert abs(FREQ[name] - f) < 12, f"{f:.0f} Hz at {i / SR:.1f} s is no archived clip's"
        if not out or out[-1] != name:
            out.append(name)
    return out


def archive_ids(engine: Engine) -> list[int]:
    return [int(ev.source.split(":")[1]) for ev in engine.clip_log if ev.source.startswith("archive:")]


def close(engine: Engine) -> None:
    assert engine.source is not None
    engine.source.close()


# -- a render with the generator stopped ------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_render_with_the_generator_stopped_plays_archived_clips_chosen_by_similarity(archive: Path) -> None:
    cfg = EngineConfig(slots=1, settings={"xfade": 0.5, "steps": 3, "length": 3.0},
                       source=SourceConfig(model="tiny", prompts=("rain on a tin roof",), archive=archive))
    engine = build_engine(cfg, SR, deterministic=True)
    assert engine.generator is not None and engine.generator.archive is not None
    engine.generator.client.stop()  # the generator is down: the render must not wait for it
    try:
        out = render(engine, 20.0, 512)
    finally:
        close(engine)
    ids = archive_ids(engine)
    assert [ev.source.startswith("archive:") for ev in engine.clip_log] == [True] * len(engine.clip_log)
    best = top_k(archive, "rain on a tin roof")
    assert set(best.values()) == set(RAIN)  # the built-in embedder ranks every rain prompt first
    assert len(ids) >= 7 and set(ids) <= set(best), [best.get(i, i) for i in ids]
    assert len(set(ids)) >= 4  # drawn at random among them...
    assert all(ids[i] not in ids[max(0, i - 4):i] for i in range(len(ids)))  # ...never one of the last four
    played = [best[i] for i in ids]
    said = heard(out)
    assert said == played[:len(said)] and len(said) >= len(played) - 1, (said, played)  # the audio is theirs
    assert engine.stats().starvations == (0,)
    with Archive(archive) as a:  # each counted as played
        assert sum(e.plays for e in a.entries(100)) == len(ids)


def test_the_archive_fallback_renders_the_same_every_time(archive: Path) -> None:
    outs, logs = [], []
    for _ in range(2):
        engine = down_engine(archive, "rain on a tin roof | birds singing at dawn")
        try:
            outs.append(render(engine, 12.0, 1024))
        finally:
            close(engine)
        logs.append(list(engine.clip_log))
    assert logs[0] == logs[1] and len(logs[0]) >= 4
    assert np.array_equal(outs[0], outs[1])


def test_a_prompt_change_cuts_to_a_similar_archived_clip_at_once(archive: Path) -> None:
    engine = down_engine(archive, "rain on a tin roof")
    engine.load_script([Event(2.0, "/endless/slot/1/prompt", ("birds singing at dawn",))])
    try:
        out = render(engine, 5.0, 512)
    finally:
        close(engine)
    cuts = [ev for ev in engine.clip_log if ev.cut]
    assert len(cuts) == 1 and cuts[0].frame == 2 * SR, engine.clip_log  # on the change's own frame
    assert cuts[0].prompt in BIRDS and cuts[0].source.startswith("archive:")
    assert all(ev.prompt in RAIN for ev in engine.clip_log if ev.frame < 2 * SR)
    assert all(ev.prompt in BIRDS for ev in engine.clip_log if ev.frame >= 2 * SR)
    after = heard(out[int(2.6 * SR):])  # after the 0.5 s crossfade (and the limiter's look-ahead)
    assert after[0] == cuts[0].prompt, after
    assert heard(out[int(1.5 * SR):2 * SR])[-1] in RAIN  # the old prompt played up to the change


def test_live_a_slot_falls_back_before_it_runs_dry_never_starving(archive: Path) -> None:
    engine = down_engine(archive, "rain on a tin roof", lead=1.0)  # as `endless play` does
    sched = engine.generator
    assert sched is not None and sched.archive is not None and sched.plays_while_loading()
    buf = np.zeros((512, 2), np.float32)
    for _ in range(int(7.0 * SR / 512)):
        sched.tick()
        assert sched.archive.loader.wait(0, 10)  # live, the loader is seconds ahead: here, in step
        engine.pump()
        engine.mixer.process(buf)
    close(engine)
    frames = [ev.frame for ev in engine.clip_log]
    assert frames[0] == 0  # the slot starts from the archive at once
    # the next clip goes out once the first has less than the crossfade (0.5 s) + 1 s left, not sooner
    due = int((CLIP_S - 1.5) * SR)
    assert due < frames[1] <= due + 512, frames
    assert len(frames) >= 3 and engine.stats().starvations == (0,)


def test_fallback_loop_plays_the_slots_own_clip_and_silence_fades_out(archive: Path) -> None:
    engine = down_engine(archive, "rain on a tin roof")
    try:
        render(engine, 1.0, 512)  # the first archived clip plays, the next waits behind it
        engine.handle("/endless/slot/1/fallback", ["loop"])
        n = len(engine.clip_log)
        out = render(engine, 8.0, 512)
    finally:
        close(engine)
    assert len(engine.clip_log) == n and engine.stats().starvations[0] >= 2  # nothing new: it loops
    said = heard(out[int(3 * SR):])
    assert len(said) == 1 and said[0] in RAIN  # one clip, over and over, never silence

    engine = down_engine(archive, "rain on a tin roof")
    try:
        render(engine, 1.0, 512)
        engine.handle("/endless/slot/1/fallback", ["silence"])
        out = render(engine, 8.0, 512)
    finally:
        close(engine)
    assert engine.clip_log[-1].source == "silence"
    said = heard(out)
    assert said[-1] == "-" and all(p in RAIN for p in said[:-1]), said
    level = np.sqrt(np.mean(out[:, 0].astype(np.float64).reshape(-1, 441) ** 2, axis=1))  # per 10 ms
    gone = int(np.flatnonzero(level > 1e-4)[-1])
    full = float(np.median(level[gone - 150:gone - 60]))
    fading = level[gone - 100:gone + 1]
    assert ((fading > 0.1 * full) & (fading < 0.9 * full)).sum() >= 20  # a fade over the crossfade, not a cut


def test_no_archive_and_loop_end_a_render_with_a_down_generator_as_before(archive: Path) -> None:
    engine = down_engine(None, "rain on a tin roof")  # --no-archive
    try:
        with pytest.raises(ModelError, match=r"slot\(s\) 1 have nothing to play"):
            render(engine, 1.0, 512)
    finally:
        close(engine)


# -- live: the first fresh clip after a fallback cuts in; generated clips are archived --------------
def fresh_after_fallback(kinds: list[str]) -> bool:
    """A fresh clip, then an archived one (the slot ran dry), then a fresh one again."""
    if "generator" not in kinds:
        return False
    rest = kinds[kinds.index("generator") + 1:]
    return "archive" in rest and "generator" in rest[rest.index("archive"):]


@pytest.mark.timeout(300)
def test_fresh_clips_cut_in_after_archived_ones_and_are_archived(archive: Path) -> None:
    # a worker slower than real time (1 s a step, 3 steps for a 3 s clip): the slot runs dry between clips
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, max_batch=1, threads=1, test_delay=1.0))
    client.start()
    sched = Scheduler(client, 1)
    sched.archive = ArchiveLink(archive, 1, SR)
    engine = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.5), sched)
    for key, value in {"steps": 3, "length": 3.0, "prompt": "rain on a tin roof"}.items():
        engine.handle(f"/endless/slot/1/{key}", [value])
    buf = np.zeros((512, 2), np.float32)
    t0, deadline = time.monotonic(), time.monotonic() + 240
    try:
        while not fresh_after_fallback([ev.source.split(":")[0] for ev in engine.clip_log]):
            assert time.monotonic() < deadline, f"no fresh clip after a fallback in 240 s: {engine.clip_log}"
            engine.pump()
            engine.mixer.process(buf)  # at real time: the audio clock does not wait for anything
            time.sleep(max(0.0, t0 + engine.mixer.frame / SR - time.monotonic()))
    finally:
        sched.close()  # the writer drains: every clip made is in the archive
    log = list(engine.clip_log)
    first = next(i for i, ev in enumerate(log) if ev.source == "generator")
    assert first > 0 and all(ev.source.startswith("archive:") for ev in log[:first])  # while the model loaded
    assert log[first].cut  # the first fresh clip crossfades in at once...
    later = [ev for ev in log[first + 1:] if ev.source == "generator" and ev.frame > log[first].frame]
    covered = [ev for ev in later if any(a.source.startswith("archive:") and log[first].frame < a.frame < ev.frame
                                         for a in log)]
    assert covered and covered[0].cut  # ...and so does the first after the slot ran dry and fell back
    made = sched.stats.clips + sched.stats.stale
    with Archive(archive) as a:
        kept = [e for e in a.entries(1000) if e.model != "test-sine"]
    assert len(kept) == made >= 2 and {e.blend for e in kept} == {"rain on a tin roof"}


# -- the parameter: OSC, presets, CLI -----------------------------------------------------------------
def test_the_fallback_parameter_goes_through_osc_and_presets(archive: Path, tmp_path: Path) -> None:
    engine = down_engine(archive, "rain on a tin roof", slots=2)
    sched = engine.generator
    assert sched is not None
    try:
        assert [p.fallback for p in sched.plans] == ["archive", "archive"]
        engine.handle("/endless/slot/2/fallback", ["silence"])
        engine.handle("/endless/slot/1/fallback/normalized", [0.5])  # the middle choice: loop
        assert [p.fallback for p in sched.plans] == ["loop", "silence"]
        with pytest.raises(ParamError, match=r"slot/1/fallback: 'echo' is not one of archive, loop, silence"):
            engine.handle("/endless/slot/1/fallback", ["echo"])
        store = PresetStore(tmp_path / "presets", example_dirs=())
        text = store.store(engine, "quiet").read_text()
        assert 'fallback = "silence"' in text and 'fallback = "loop"' in text
        engine.handle("/endless/slot/1/fallback", ["archive"])
        engine.handle("/endless/slot/2/fallback", ["archive"])
        store.recall(engine, "quiet")
        assert [p.fallback for p in sched.plans] == ["loop", "silence"]
        assert engine.values[("slot/fallback", 1)] == "silence"
    finally:
        close(engine)


def test_archive_settings_are_checked_with_one_line_errors(tmp_path: Path) -> None:
    for kwargs, said in [({"archive_max_clips": 0}, "--archive-max-clips 0: allowed 1..10000000"),
                         ({"archive_max_gb": -1.0}, "--archive-max-gb -1.0: allowed 0.001..100000 GB"),
                         ({"archive": tmp_path, "no_archive": True}, "--archive and --no-archive: give one"),
                         ({"archive": tmp_path, "demo": True}, "the archive keeps generated clips"),
                         # a typo is an exit at once, even where play would choose the backend only later
                         ({"backend": "cdua"}, "--backend cdua: allowed auto, cuda, mps, coreml, cpu")]:
        with pytest.raises(ConfigError, match=said):
            SourceConfig(**kwargs)  # type: ignore[arg-type]
    r = endless("render", "--seconds", "1", "--out", str(tmp_path / "x.wav"), "--archive-max-clips", "0")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "endless: error: --archive-max-clips 0: allowed 1..10000000 (leave it out for no limit)"]


# -- first sound: `endless play` from the archive while the model loads -----------------------------
@pytest.mark.jack
@pytest.mark.timeout(300)
def test_play_sounds_from_the_archive_at_once_and_archives_what_it_makes(jack_env: dict[str, str], archive: Path,
                                                                         tmp_path: Path) -> None:
    rec, stats = tmp_path / "rec.wav", tmp_path / "stats.json"
    before = {p.name for p in (archive / "clips").iterdir()}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "instrument", "play", "--model", "tiny", "--slots", "1",
                             "--prompt", "rain on a tin roof", "--steps", "3", "--length", "3", "--xfade", "0.5",
                             "--archive", str(archive), "--seconds", "120", "--record", str(rec),
                             "--stats", str(stats), "--device", "system", "--osc-port", "0"],
                            env=jack_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not {p.name for p in (archive / "clips").glob("*.flac")} - before:  # a generated clip kept
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no generated clip archived in 240 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the set ends, the writer drains
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 130) and "Traceback" not in err, err
    audio, sr = sf.read(rec, dtype="float32")
    first = int(np.flatnonzero(np.abs(audio[:, 0]) > 10 ** (-50 / 20))[0])  # -50 dBFS: the fade-in under way
    st = json.loads(stats.read_text())
    first_sound = st["first_callback_ns"] / 1e9 + first / sr - started  # both CLOCK_MONOTONIC
    assert 0 < first_sound < 10, f"first sound {first_sound:.1f} s after the start"  # benchmark: the real figure
    assert heard(audio[first + sr // 2:first + sr])[0] in RAIN  # it was the archive's
    with Archive(archive) as a:
        kept = [e for e in a.entries(1000) if e.model != "test-sine"]
    assert kept and {e.blend for e in kept} == {"rain on a tin roof"} and "tiny" in kept[0].model


def test_a_late_generator_that_cannot_be_made_fails_in_one_line_and_the_set_plays_on(archive: Path) -> None:
    from instrument.generator.late import LateClient

    def no_gpu() -> WorkerSpec:
        raise ConfigError("--backend cuda: torch sees no CUDA GPU here: use --backend auto or cpu")

    said: list[str] = []
    client = LateClient(no_gpu)
    client.on_event = said.append
    sched = Scheduler(client, 1)
    sched.archive = ArchiveLink(archive, 1, SR)
    engine = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.5), sched)
    engine.handle("/endless/slot/1/prompt", ["rain on a tin roof"])
    client.start()
    assert client.state == "loading" and sched.plays_while_loading()
    deadline = time.monotonic() + 10
    buf = np.zeros((512, 2), np.float32)
    try:
        while client.state == "loading" or engine.mixer.frame < 2 * SR:
            assert time.monotonic() < deadline
            engine.pump()
            engine.mixer.process(buf)
            time.sleep(0.001)
    finally:
        sched.close()
    assert client.state == "stopped" and client.error == "--backend cuda: torch sees no CUDA GPU here: use " \
        "--backend auto or cpu"
    assert said == ["the generator failed: --backend cuda: torch sees no CUDA GPU here: use --backend auto or cpu"]
    assert engine.clip_log and all(ev.source.startswith("archive:") for ev in engine.clip_log)


def test_live_fallback_does_not_wait_for_a_loading_embedder(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sentence-transformers imports torch (seconds): live, while it loads, a slot's clip is matched by
    the words of the archived prompts, so the first sound never waits for the model; a render waits."""
    import threading

    import instrument.archive.embed as embed_mod
    from instrument.fallback import ArchiveLoader, LazyEmbedder

    release = threading.Event()
    real = embed_mod.load_embedder

    def slow_load(model: str | None = None) -> object:
        release.wait(30)
        return real(model)

    monkeypatch.setattr(embed_mod, "load_embedder", slow_load)
    with Archive(archive) as arc:
        emb = LazyEmbedder()
        quick = ArchiveLoader(arc, emb, 1, SR, quick=True)
        slow = ArchiveLoader(arc, emb, 1, SR, quick=False)
        try:
            quick.want(0, "heavy rain on a roof")
            assert quick.wait(0, 10) and not emb.loaded
            clip = quick.take(0, "heavy rain on a roof")
            assert clip is not None and clip.info.prompt in RAIN  # by its words: a rain clip
            slow.want(0, "heavy rain on a roof")
            assert not slow.wait(0, 0.5)  # the render's loader waits for the embedder
            release.set()
            assert slow.wait(0, 30)
            assert (slow.take(0, "heavy rain on a roof") or clip).info.prompt in RAIN
        finally:
            release.set()
            quick.close()
            slow.close()
