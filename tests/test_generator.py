"""The generator worker as a real subprocess, the scheduler, and renders with the tiny model."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from instrument.engine import Engine
from instrument.generator.protocol import ClipReady, Dropped, Failed, FromWorker, Progress, Request
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.render import render
from instrument.rt import MixerConfig
from instrument.scheduler import Scheduler
from instrument.script import Event

SR = 44100
FAST = {"steps": 3, "length": 3.0}


def wait_for(client: GeneratorClient, kinds: tuple[type, ...], timeout: float = 120.0) -> list[FromWorker]:
    seen: list[FromWorker] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = client.poll(0.1)
        seen += msgs
        if any(isinstance(m, kinds) for m in msgs):
            return seen
    raise AssertionError(f"no {kinds} within {timeout} s; state {client.state}, error {client.error}")


@pytest.fixture
def client():  # type: ignore[no-untyped-def]
    c = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, threads=1, nice=3), hang_timeout=60)
    c.start()
    yield c
    c.stop()


def watched(spec: WorkerSpec, **kw: Any) -> tuple[GeneratorClient, list[str]]:
    """A started client whose event lines (restarts, failures) are kept in the list."""
    c = GeneratorClient(spec, **kw)
    events: list[str] = []
    c.on_event = events.append
    c.start()
    return c, events


def req(i: int, seed: int = 1, prompt: str = "rain on a roof", **kw: object) -> Request:
    return Request(i, 0, prompt, seed, int(kw.get("steps", 3)), 4.5, float(kw.get("seconds", 3.0)),
                   priority=bool(kw.get("priority", False)))


def test_worker_makes_normalised_clips_and_reports_progress(client: GeneratorClient) -> None:
    client.submit(req(1))
    seen = wait_for(client, (ClipReady,))
    msg = next(m for m in seen if isinstance(m, ClipReady))
    clip = msg.clip
    steps = [m.step for m in seen if isinstance(m, Progress)]
    assert steps == [1, 2, 3]
    assert clip.audio.shape == (3 * SR, 2) and clip.audio.dtype == np.float32 and clip.sample_rate == SR
    assert np.isfinite(clip.audio).all()
    assert msg.loudness <= -20.0 + 1e-6 and np.abs(clip.audio).max() <= 10 ** (-1 / 20) + 1e-6
    info = clip.info  # how it was made rides with the clip
    assert (info.source, info.prompt, info.seed, info.model, info.steps) == ("generator", "rain on a roof", 1, "tiny", 3)
    assert info.guidance == 4.5 and info.gen_seconds > 0 and not clip.cut
    assert client.state == "ready" and client.ready is not None and client.ready.model == "tiny"
    # the worker runs below the instrument's priority (`endless play --generator-nice`, default 10)
    assert client.pid is not None
    assert os.getpriority(os.PRIO_PROCESS, client.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
    if sys.platform == "linux":  # and in the idle class, every thread of it (torch's too): preempted at once,
        # but the heartbeat's, asleep but for a beat: starved, it would look like a hang (test_worker_faults.py)
        tids = [int(t) for t in os.listdir(f"/proc/{client.pid}/task")]
        idle = [t for t in tids if os.sched_getscheduler(t) == os.SCHED_IDLE]
        assert len(tids) > 2 and len(idle) == len(tids) - 1
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in idle} == {os.getpriority(os.PRIO_PROCESS, client.pid)}
    client.submit(req(2))  # the same seed and prompt: the same clip
    again = next(m for m in wait_for(client, (ClipReady,)) if isinstance(m, ClipReady))
    assert np.array_equal(again.clip.audio, clip.audio)
    client.submit(req(3, seed=2))
    other = next(m for m in wait_for(client, (ClipReady,)) if isinstance(m, ClipReady))
    assert not np.allclose(other.clip.audio, clip.audio)


def test_cancel_between_steps() -> None:
    c = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, threads=1, test_delay=0.3))
    c.start()
    try:
        c.submit(req(1, steps=50))
        wait_for(c, (Progress,))
        c.cancel((1,))
        seen = wait_for(c, (Dropped,), timeout=30)
        assert any(isinstance(m, Dropped) and m.reason == "cancelled" for m in seen)
        assert not any(isinstance(m, ClipReady) for m in seen)
    finally:
        c.stop()


def test_killed_worker_restarts_and_resends(client: GeneratorClient) -> None:
    client.submit(req(1))
    wait_for(client, (Progress,))
    first_pid = client.pid
    client.kill()
    seen = wait_for(client, (ClipReady,), timeout=120)
    assert client.restarts == 1 and client.pid != first_pid
    assert any(isinstance(m, ClipReady) and m.id == 1 for m in seen)


def test_hung_worker_is_restarted() -> None:
    c, events = watched(WorkerSpec(model="tiny", sample_rate=SR, threads=1, test_delay=30), hang_timeout=3,
                        backoff=(0.1,))
    try:
        c.submit(req(1))
        deadline = time.monotonic() + 60
        while c.restarts == 0 and time.monotonic() < deadline:
            c.poll(0.1)
        assert c.restarts == 1 and any("hung" in e for e in events)
    finally:
        c.stop()


def test_missing_weights_fail_once_without_restart_loop(tmp_path: Path) -> None:
    c = GeneratorClient(WorkerSpec(model=str(tmp_path / "nothing"), sample_rate=SR))
    c.start()
    try:
        seen = wait_for(c, (Failed,), timeout=60)
        fail = next(m for m in seen if isinstance(m, Failed))
        assert fail.fatal and "--model tiny" in fail.message and c.state == "failed"
        time.sleep(0.5)
        c.poll(0.1)
        assert c.restarts == 0
    finally:
        c.stop()


# -- scheduler + render -----------------------------------------------------------------------------
def gen_engine(slots: int = 2, seed: int = 0, xfade: float = 0.5) -> Engine:
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, max_batch=1, threads=1))
    client.start()
    engine = Engine(MixerConfig(slots=slots, sample_rate=SR, xfade=xfade), Scheduler(client, slots, base_seed=seed))
    for s in range(slots):
        for key, v in FAST.items():
            engine.handle(f"/endless/slot/{s + 1}/{key}", [v])
        engine.handle(f"/endless/slot/{s + 1}/prompt", [f"texture {s}"])
    return engine


def test_prompt_change_cuts_in_on_its_frame_and_queues_stay_bounded() -> None:
    engine = gen_engine()
    change = 5.0
    engine.load_script([Event(change, "/endless/slot/1/prompt", ("thunder:0.7 | rain:0.3",))])
    try:
        out = render(engine, 12.0, 512)
    finally:
        engine.source.close()  # type: ignore[union-attr]
    log = list(engine.clip_log)
    slot0 = [e for e in log if e.slot == 0]
    after = [e for e in slot0 if e.frame >= int(change * SR)]
    assert after and after[0].prompt == "thunder:0.7 | rain:0.3" and after[0].cut
    assert after[0].frame == int(change * SR)  # deterministic render: on the event's frame
    assert all(e.prompt == "thunder:0.7 | rain:0.3" for e in after)
    assert all(e.prompt == "texture 0" for e in slot0 if e.frame < int(change * SR))
    st = engine.stats()
    assert sum(st.starvations) == 0 and max(st.queue_depths) <= 2
    assert np.isfinite(out).all() and np.abs(out[SR:]).max() > 0.01


@pytest.mark.parametrize("quantize, cut_at", [("off", 3.1), ("beat", 3.5)])
def test_prompt_change_with_a_full_queue_is_generated_at_once_and_cuts_on_time(quantize: str,
                                                                              cut_at: float) -> None:
    engine = gen_engine(slots=1)
    sched = engine.generator
    assert sched is not None
    sched.fed_timeout = 60.0  # a render that waits for a clip nobody asked for fails here, not in 10 min
    engine.handle("/endless/quantize", [quantize])
    engine.handle("/endless/slot/1/length", [10.0])
    try:
        render(engine, 1.0, 512)
        deadline = time.monotonic() + 120
        while engine.pending(0) < 2:  # the queue fills up behind the playing clip
            assert time.monotonic() < deadline, "the queue never filled"
            sched.tick(0.05)
            engine.pump()
        render(engine, 0.5, 512)
        assert engine.mixer.slots[0].q_count == 2
        engine.load_script([Event(3.1, "/endless/slot/1/prompt", ("thunder",))])
        render(engine, 3.0, 512)
    finally:
        sched.close()
    cuts = [(ev.prompt, ev.frame) for ev in engine.clip_log if ev.cut]
    assert cuts == [("thunder", round(cut_at * SR))]
    assert all(ev.prompt == "thunder" for ev in engine.clip_log if ev.frame >= cut_at * SR)
    assert engine.stats().starvations == (0,)


def test_render_is_deterministic_and_survives_a_killed_worker() -> None:
    a = gen_engine(seed=5)
    try:
        ref = render(a, 8.0, 1024)
    finally:
        a.source.close()  # type: ignore[union-attr]
    b = gen_engine(seed=5)
    sched = b.generator
    assert sched is not None
    killed = []

    def progress(done: int, total: int) -> None:
        if not killed and done > total // 3:
            sched.client.kill()
            killed.append(done)

    try:
        out = render(b, 8.0, 1024, progress)
    finally:
        b.source.close()  # type: ignore[union-attr]
    assert killed and sched.client.restarts >= 1
    assert np.array_equal(out, ref)  # nothing lost, nothing different


def test_live_blend_weights_move_the_conditioning_and_keep_the_parts() -> None:
    from instrument.errors import ParamError

    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR))  # never started: no clips needed
    engine = Engine(MixerConfig(slots=1, sample_rate=SR), Scheduler(client, 1))
    plan = engine.generator.plans[0]  # type: ignore[union-attr]
    engine.handle("/endless/slot/1/prompt", ["rain | thunder"])
    gen = plan.generation
    engine.handle("/endless/slot/1/weights", [0.2, 0.8])
    assert plan.prompt == "rain:0.2 | thunder:0.8" and plan.generation == gen + 1
    engine.handle("/endless/slot/1/weights", [0, 1])
    assert plan.prompt == "thunder" and plan.parts == ("rain", "thunder")
    engine.handle("/endless/slot/1/weights", [1, 1])  # a part at 0 comes back
    assert plan.prompt == "rain:0.5 | thunder:0.5"
    with pytest.raises(ParamError, match="3 given for a prompt of 2 part"):
        engine.handle("/endless/slot/1/weights", [1, 1, 1])
    assert plan.prompt == "rain:0.5 | thunder:0.5"  # unchanged
