"""The mixer's invariants: block-size independence, crossfade curves, smoothing, starvation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from instrument.engine import Engine
from instrument.errors import ParamError
from instrument.render import render
from instrument.rt import OP_FLUSH, Command, MixerConfig

SR = 44100


def noise(seconds: float, seed: int, amp: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((int(seconds * SR), 2)) * amp).astype(np.float32)


def sine(seconds: float, freq: float, amp: float = 0.3, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = amp * np.sin(2 * np.pi * freq * t + phase)
    return np.stack([x, x], axis=1).astype(np.float32)


def engine(slots: int = 1, xfade: float = 0.05, curve: str = "equal_power", **kw: object) -> Engine:
    return Engine(MixerConfig(slots=slots, sample_rate=SR, xfade=xfade, curve=curve, **kw))  # type: ignore[arg-type]


def rms_db_windows(x: np.ndarray, win: int) -> np.ndarray:
    n = len(x) // win
    w = x[: n * win].reshape(n, win, 2)
    return 10 * np.log10(np.mean(w.astype(np.float64) ** 2, axis=(1, 2)))


# -- block-size independence ------------------------------------------------------------------------
def _scenario(blocksize: int, seconds: float) -> np.ndarray:
    e = engine(slots=3, xfade=0.02, queue_capacity=16)
    for s in range(3):
        for k in range(8):
            e.push_clip(s, noise(0.05 + 0.013 * k + 0.007 * s, seed=10 * s + k))
    # timed changes land on exact frames whatever the block size
    e.handle("/endless/slot/2/gain", [-12], frame=1234)
    e.handle("/endless/slot/1/pan", [0.5], frame=2000)
    e.handle("/endless/xfade", [0.035], frame=3001)  # mid-fade for some slot
    e.handle("/endless/slot/3/mute", [1], frame=4500)
    e.handle("/endless/morph/mode", ["line"], frame=5000)
    e.handle("/endless/morph/position", [0.7], frame=5003)
    e.handle("/endless/master/gain", [4.0], frame=6000)
    e.handle("/endless/slot/1/next", [], frame=7000)
    return render(e, seconds, blocksize)


@pytest.mark.parametrize("blocksize", [1, 2, 3, 5, 17])
def test_small_blocks_equal_whole_buffer(blocksize: int) -> None:
    whole = _scenario(4096, 0.2)
    assert np.array_equal(_scenario(blocksize, 0.2), whole)


@pytest.mark.parametrize("blocksize", [31, 64, 100, 255, 256, 257, 511, 1000, 1024, 2047, 4095, 4096])
def test_blocks_equal_whole_buffer(blocksize: int) -> None:
    whole = _scenario(4096, 0.5)
    got = _scenario(blocksize, 0.5)
    assert np.abs(whole).max() > 0.05  # something plays
    assert np.array_equal(got, whole)


# -- crossfade curves -------------------------------------------------------------------------------
def test_equal_power_keeps_rms_of_uncorrelated_noise() -> None:
    e = engine(xfade=1.0, curve="equal_power", stagger=False)
    a, b = noise(3.0, 1), noise(3.0, 2)
    e.push_clip(0, a)
    e.push_clip(0, b)
    out = render(e, 4.5, 512)
    L = e.mixer.limiter.latency
    # fade-in ends at 1 s; the a->b fade runs 2..3 s. Measure 1.1 .. 4.4 s in 50 ms windows.
    seg = out[int(1.1 * SR) + L:int(4.4 * SR) + L]
    db = rms_db_windows(seg, int(0.05 * SR))
    ref = 10 * np.log10(np.mean(a.astype(np.float64) ** 2))
    assert e.stats().transitions[0] == 2  # a->b at 2 s, and b into itself (starved) at 4 s
    assert np.max(np.abs(db - ref)) <= 1.0, np.max(np.abs(db - ref))


def test_sin2_between_identical_material_keeps_amplitude() -> None:
    F = int(0.5 * SR)
    x = sine(4.0, 220.0)
    a, b = x[: 2 * SR], x[2 * SR - F: 4 * SR - F]  # a's last F samples are b's first F
    for curve, ok in (("sin2", True), ("equal_power", False)):
        e = engine(xfade=0.5, curve=curve, stagger=False)
        e.push_clip(0, a.copy())
        e.push_clip(0, b.copy())
        out = render(e, 3.0, 256)
        L = e.mixer.limiter.latency
        seg = out[int(0.6 * SR) + L:int(2.8 * SR) + L]
        ref = x[int(0.6 * SR):int(2.8 * SR)]
        win = int(0.05 * SR)
        dev = np.abs(rms_db_windows(seg, win) - rms_db_windows(ref, win))
        assert (dev.max() <= 0.1) == ok, (curve, dev.max())


# -- smoothing --------------------------------------------------------------------------------------
def test_gain_step_is_smoothed() -> None:
    e = engine(xfade=0.05)
    dc = np.full((3 * SR, 2), 0.25, np.float32)
    e.push_clip(0, dc)
    e.handle("/endless/slot/1/gain", [-60], frame=0)
    e.handle("/endless/slot/1/gain", [0], frame=SR)
    out = render(e, 2.0, 256)
    glide = int(round(e.registry["slot/gain"].smoothing * SR))
    step = np.abs(np.diff(out[SR // 2:, 0].astype(np.float64)))
    assert out[SR // 2:SR, 0].max() == 0.0  # off before the step
    assert step.max() <= 0.25 / glide * 1.001
    assert np.isclose(out[-1, 0], 0.25, atol=1e-6)  # and it arrives
    ramp = np.flatnonzero((out[:, 0] > 1e-6) & (out[:, 0] < 0.25 - 1e-6))
    assert ramp[-1] - ramp[0] >= glide - 2


@pytest.mark.parametrize("new_xfade", [0.25, 0.05, 8.0])
def test_xfade_change_mid_fade_stays_continuous(new_xfade: float) -> None:
    e = engine(xfade=1.0, curve="equal_power", stagger=False)
    a = np.full((3 * SR, 2), 0.2, np.float32)
    b = np.full((6 * SR, 2), 0.3, np.float32)
    e.push_clip(0, a)
    e.push_clip(0, b)
    e.handle("/endless/xfade", [new_xfade], frame=int(2.5 * SR))  # a->b fade runs 2..3 s
    out = render(e, 4.0, 333).astype(np.float64)
    step = np.abs(np.diff(out[int(1.5 * SR):, 0]))
    slowest = min(1.0, 0.5, new_xfade) * SR  # the fade never runs faster than its shortest form
    assert step.max() <= 0.5 * (np.pi / 2) / slowest * 2 + 1e-6, step.max()
    assert np.isclose(out[int(3.5 * SR), 0], 0.3, atol=1e-6)  # b alone once the fade is over
    assert e.stats().starvations == (0,)


# -- starvation -------------------------------------------------------------------------------------
def test_starvation_neither_silent_nor_clicking() -> None:
    e = engine(xfade=0.5, stagger=False)
    clip = sine(2.0, 110.0, amp=0.3)
    e.push_clip(0, clip)  # one clip, nothing after it
    out = render(e, 8.0, 512).astype(np.float64)
    st = e.stats()
    assert st.starvations[0] >= 3
    L = e.mixer.limiter.latency
    seg = out[int(0.6 * SR) + L:]
    db = rms_db_windows(seg, int(0.05 * SR))
    assert db.min() > 10 * np.log10(0.3**2 / 2) - 3.5  # never silent, never dips more than 3.5 dB
    source_step = np.abs(np.diff(clip[:, 0].astype(np.float64))).max()
    assert np.abs(np.diff(seg[:, 0])).max() <= 2 * source_step  # no discontinuity


# -- limiter ----------------------------------------------------------------------------------------
def test_limiter_ceiling_and_transparency() -> None:
    e = engine(slots=4, xfade=0.05, stagger=False)
    for s in range(4):
        e.push_clip(s, noise(2.0, s, amp=0.6))
    e.handle("/endless/autolevel", [0], frame=0)
    e.handle("/endless/master/gain", [6], frame=0)
    loud = render(e, 1.5, 512)
    assert np.abs(loud).max() <= 10 ** (-1 / 20) + 1e-7
    assert e.stats().limiter_db > 3
    q = engine(xfade=0.05, stagger=False)
    quiet = noise(1.0, 9, amp=0.05)
    q.push_clip(0, quiet)
    out = render(q, 0.5, 512)
    L = q.mixer.limiter.latency
    fade_end = int(0.05 * SR)
    assert np.array_equal(out[fade_end + L:], quiet[fade_end:len(out) - L])


# -- mix controls -----------------------------------------------------------------------------------
def _levels(e: Engine, seconds: float = 0.6) -> np.ndarray:
    out = render(e, seconds, 512)
    return np.sqrt(np.mean(out[-SR // 10:].astype(np.float64) ** 2, axis=0))


def _four(**kw: object) -> Engine:
    e = engine(slots=4, xfade=0.05, stagger=False, **kw)
    for s in range(4):
        e.push_clip(s, sine(2.0, 110.0 * (s + 1), amp=0.1))
    return e


def test_mute_solo_and_pan() -> None:
    e = _four()
    for s in range(4):
        e.handle(f"/endless/slot/{s + 1}/mute", [1], frame=0)
    assert _levels(e).max() < 1e-6
    e = _four()
    e.handle("/endless/slot/3/solo", [1], frame=0)
    e.handle("/endless/slot/3/pan", [1.0], frame=0)
    left, right = _levels(e)
    assert left < 1e-6 < right


def test_morph_line_and_xy_focus_one_slot() -> None:
    for mode, args in (("line", [("position", 1 / 3)]), ("xy", [("x", 1.0), ("y", 0.0)])):
        e = _four()
        e.handle("/endless/morph/mode", [mode], frame=0)
        for name, v in args:
            e.handle(f"/endless/morph/{name}", [v], frame=0)
        out = render(e, 0.6, 512)[-8192:, 0].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        freqs = np.fft.rfftfreq(len(out), 1 / SR)
        peak = freqs[np.argmax(spectrum)]
        assert abs(peak - 220.0) < 10, (mode, peak)  # slot 2 (220 Hz) only
        others = [spectrum[np.argmin(np.abs(freqs - f))] for f in (110, 330, 440)]
        assert max(others) < 1e-3 * spectrum.max()


def test_autolevel_holds_level_when_slots_come_and_go() -> None:
    one = engine(slots=4, xfade=0.05, stagger=False)
    one.push_clip(0, noise(2.0, 1))
    four = engine(slots=4, xfade=0.05, stagger=False)
    for s in range(4):
        four.push_clip(s, noise(2.0, s + 1))
    a, b = _levels(one, 1.0).mean(), _levels(four, 1.0).mean()
    assert abs(20 * np.log10(b / a)) < 0.5


def test_queue_full_drops_clip_and_flush_returns_buffers() -> None:
    e = engine(queue_capacity=2)
    for k in range(4):
        e.push_clip(0, noise(1.0, k))
    render(e, 0.01, 256)  # all four arrive before the first block: two fit, two are dropped
    st = e.stats()
    assert st.clips_dropped == 2 and st.queue_depths == (1,)  # then one starts playing
    e.handle("/endless/slot/1/flush", [])
    render(e, 0.01, 256)
    e.pump()
    assert e.stats().queue_depths == (0,)
    assert e.buffers_returned == 3  # two dropped + one flushed come back to the control side


def test_clips_come_back_to_the_control_side_and_a_full_way_is_refused_not_dropped() -> None:
    """The audio thread never frees a clip: every buffer comes back through the return ring. If the
    control side stops taking them back, clip ids run out and a push is refused (reported, nothing
    queued), never lost; once the clips are taken back, pushes go through again."""
    e = engine(queue_capacity=2)
    clip = noise(0.01, 1)
    sent = 0
    for _ in range(3000):  # nothing takes the clips back (no pump)
        if not e.push_clip(0, clip.copy()):
            break
        sent += 1
        e.mixer.send(Command(OP_FLUSH, 0))
        e.mixer.process(np.zeros((64, 2), np.float32))
    assert 0 < sent < 3000 and e.stats().commands_rejected == 1
    assert e.mixer.returns_lost == 0
    e.pump()
    assert e.buffers_returned == sent  # every one, flushed or played out
    assert e.push_clip(0, clip.copy())


def test_next_trigger_crossfades_now_and_ignores_empty_queue() -> None:
    e = engine(xfade=0.05, stagger=False)
    e.push_clip(0, sine(3.0, 110.0))
    e.push_clip(0, sine(3.0, 440.0))
    e.handle("/endless/slot/1/next", [], frame=SR // 2)
    e.handle("/endless/slot/1/next", [], frame=SR)  # queue empty now: ignored
    out = render(e, 1.2, 512)
    assert e.stats().transitions == (1,)
    assert e.mixer.slots[0].nexts_ignored == 1
    tail = out[-8192:, 0].astype(np.float64)
    freqs = np.fft.rfftfreq(len(tail), 1 / SR)
    assert abs(freqs[np.argmax(np.abs(np.fft.rfft(tail * np.hanning(len(tail)))))] - 440) < 10


# -- the look-ahead ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lookahead", [0.00025, 0.00075, 0.003])
def test_lookahead_delays_by_its_samples_and_the_ceiling_holds(lookahead: float) -> None:
    """A click in silence leaves the limiter L samples later; loud clips with +6 dB of master stay
    under the -1 dBFS ceiling with the limiter working, quiet ones pass untouched."""
    for amp, master, works in ((0.05, 0.0, False), (0.3, 6.0, True)):
        e = engine(slots=2, xfade=0.02, queue_capacity=16, lookahead=lookahead)
        assert e.mixer.limiter.latency == round(lookahead * SR)
        for s in range(2):
            for k in range(4):
                e.push_clip(s, noise(0.1, seed=10 * s + k, amp=amp))
        e.handle("/endless/master/gain", [master], frame=2000)
        out = render(e, 0.5, 256)
        assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-6
        assert (e.stats().limiter_db > 3) == works
    e = engine(xfade=0.01, lookahead=lookahead, stagger=False)
    click = np.zeros((SR // 10, 2), np.float32)
    click[3000] = 0.5  # after the clip's 10 ms fade-in
    e.push_clip(0, click)
    first = int(np.flatnonzero(np.abs(render(e, 0.09, 64)[:, 0]) > 0.1)[0])
    assert first == 3000 + round(lookahead * SR)


# -- the audio thread's room ------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])


def test_the_rt_package_imports_nothing_else_of_the_instrument() -> None:
    r = _python("import sys, instrument.rt; print(sorted(m for m in sys.modules if m.startswith('instrument')))")
    assert r.returncode == 0, r.stderr
    loaded = eval(r.stdout)
    assert loaded and all(m == "instrument" or m.startswith("instrument.rt") for m in loaded), loaded


def test_a_missing_core_fails_with_how_to_build_it() -> None:
    """No fallback: without the compiled core nothing plays, and the error says what to run."""
    r = _python("import sys; sys.modules['instrument.rt._core'] = None; import instrument.engine")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "ImportError: the audio core" in last and "is not built" in last and "make test" in last


def test_registry_codes_are_the_audio_threads() -> None:
    from instrument.params import PARAMS
    from instrument.rt import CURVES, MORPH_MODES, MixerConfig

    choices = {p.key: p.choices for p in PARAMS}
    assert choices["curve"] == CURVES and choices["morph/mode"] == MORPH_MODES
    autolevel = next(p.smoothing for p in PARAMS if p.key == "autolevel")
    assert engine().mixer.cfg.autolevel_glide == autolevel
    assert MixerConfig().autolevel_glide is None  # no second default: the engine takes the registry's
    defaults = {p.key: p.default for p in PARAMS}
    plain = Engine(MixerConfig(slots=1)).cfg
    assert (plain.xfade, plain.curve) == (defaults["xfade"], defaults["curve"])


# -- the recorder's tap -----------------------------------------------------------------------------
def test_tap_copies_exactly_the_frames_asked_for() -> None:
    e = engine(xfade=0.01)
    e.push_clip(0, noise(1.0, 3))
    assert e.mixer.tap_start(1000)
    out = np.zeros((4096, 2), np.float32)
    e.mixer.process(out[:300])  # the tap starts with the next block and splits none
    e.mixer.process(out[300:])
    got = e.mixer.tap_read()
    assert np.array_equal(got, out[:1000]) and not e.mixer.tapping
    assert len(e.mixer.tap_read()) == 0


def test_a_full_tap_drops_whole_blocks_and_counts_them_never_blocking() -> None:
    e = engine(xfade=0.01, tap_seconds=0.02)  # 882 frames of ring
    e.push_clip(0, noise(1.0, 4))
    e.mixer.tap_start()
    out = np.zeros((256 * 6, 2), np.float32)
    for k in range(6):  # nobody reads: blocks 4, 5 and 6 do not fit
        e.mixer.process(out[256 * k:256 * (k + 1)])
    assert e.mixer.tap_overflows == 3
    assert np.array_equal(e.mixer.tap_read(), out[:768])
    e.mixer.process(np.zeros((256, 2), np.float32))  # room again
    assert len(e.mixer.tap_read()) == 256 and e.mixer.tap_overflows == 3
    assert e.mixer.tap_stop()
    e.mixer.process(np.zeros((256, 2), np.float32))
    assert not e.mixer.tapping and len(e.mixer.tap_read()) == 0


def test_a_full_command_ring_refuses_and_reports() -> None:
    e = engine(command_capacity=4)
    for addr in ("slot/1/pan", "slot/1/mute", "slot/1/solo", "master/gain"):  # 4 parameters (1's coalesce: test_flood)
        e.handle(f"/endless/{addr}", [1])
    with pytest.raises(ParamError, match="command queue is full"):
        e.handle("/endless/slot/1/gain", [-9.0])
    assert e.stats().commands_rejected == 1 and e.values[("slot/gain", 0)] == 0.0  # nothing half-applied
    e.mixer.process(np.zeros((64, 2), np.float32))  # the audio thread takes them
    e.handle("/endless/slot/1/gain", [-9.0])


def test_recorder_writes_what_the_tap_gave_and_a_second_one_is_refused(tmp_path: Path) -> None:
    import soundfile as sf

    from instrument.errors import ConfigError
    from instrument.render import Recorder

    e = engine(xfade=0.01)
    e.push_clip(0, noise(1.0, 5))
    rec = Recorder(tmp_path / "a.wav", e.mixer, frames=3000)
    with pytest.raises(ConfigError, match="already recording to .*a.wav"):
        Recorder(tmp_path / "b.wav", e.mixer)
    out = np.zeros((4096, 2), np.float32)
    for k in range(0, 4096, 512):  # as the callback would, block by block
        e.mixer.process(out[k:k + 512])
    rec.close()
    got, sr = sf.read(tmp_path / "a.wav", dtype="float32")
    assert sr == SR and np.array_equal(got, out[:3000]) and rec.overflows == 0
    Recorder(tmp_path / "c.wav", e.mixer).close()  # the tap is free again


def test_numpy_asks_for_no_huge_pages_in_the_instrument() -> None:
    """khugepaged collapsing our clips held a CPU ahead of the audio thread (bench_live): numpy's
    madvise for huge pages is off once `instrument` is imported first, as the CLI does."""
    r = _python("import instrument, numpy as np\n"
                "core = getattr(np, '_core', None) or np.core\n"
                "print(core.multiarray._set_madvise_hugepage(False))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
