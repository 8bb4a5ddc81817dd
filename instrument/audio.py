"""Live audio output: device lookup, the stream, the control loop.

The device callback is C (instrument.rt's rt_callback): it applies the commands waiting, mixes
the next block into PortAudio's buffer, taps it for the recorder and counts underflow flags.
Everything else (clip loading, script scheduling, status) runs on the control loop in `play()`,
which also watches the callbacks: none for `stall` seconds (the JACK server gone, a device
unplugged) ends the set with `AudioStalledError`, and no PortAudio call may hang the exit.
"""

from __future__ import annotations

import atexit
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from instrument.engine import Engine
from instrument.errors import AudioDeviceError
from instrument.priority import realtime_audio
from instrument.render import Recorder
from instrument.rt import Mixer, Stream
from instrument.rt.mixer import UNDERFLOW

log = logging.getLogger(__name__)

STALL_S = 2.0  # no device callback for this long while the stream runs: the device is gone
STOP_WAIT_S = 3.0  # how long a stream's stop may take before it is given up as hung


class AudioStalledError(AudioDeviceError):
    """The audio device stopped calling back mid-set (the JACK server gone, a device unplugged).
    `summary`: the set up to there."""

    exit_code = 6

    def __init__(self, message: str, summary: PlaySummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def _sd() -> Any:
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise AudioDeviceError(f"PortAudio is not installed ({e}): run `sudo apt-get install libportaudio2` "
                               "(Debian/Ubuntu) or `brew install portaudio` (macOS)") from None
    return sd


def output_devices() -> list[dict[str, Any]]:
    """Every device with output channels: index, name, host API, channels, default rate."""
    sd = _sd()
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_output_channels"] > 0:
            out.append({"index": i, "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                        "channels": d["max_output_channels"], "samplerate": d["default_samplerate"],
                        "default": i == sd.default.device[1]})
    return out


def find_device(spec: str | int | None) -> int | None:
    """Resolve `--device` (index, or a case-insensitive part of the name) to an index."""
    if spec is None or spec == "":
        return None
    devices = output_devices()
    names = "; ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if isinstance(spec, int) or str(spec).isdigit():
        idx = int(spec)
        if any(d["index"] == idx for d in devices):
            return idx
        raise AudioDeviceError(f"--device {spec}: no output device with that index (outputs: {names}); "
                               "see `endless devices`")
    hits = [d for d in devices if str(spec).lower() in d["name"].lower()]
    if not hits:
        raise AudioDeviceError(f"--device {spec!r}: no output device matches (outputs: {names}); "
                               "see `endless devices`")
    return int(hits[0]["index"])


def device_rate(device: int | None) -> int:
    sd = _sd()
    try:
        info = sd.query_devices(device, "output")
    except Exception as e:
        raise AudioDeviceError(f"no audio output device ({e}): connect one, start JACK, or use "
                               "`endless render` to write a file instead") from None
    return int(info["default_samplerate"])


class CallbackTimes:
    """How long the device callbacks ran, for the whole set: the control loop drains the core's
    callback log (the last RT_TIMINGS callbacks) into a fixed histogram of 1 us bins."""

    BINS = 100_000  # up to 100 ms; longer ones land in the last bin (and in `max_us`)

    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer
        self.hist = np.zeros(self.BINS, np.int64)
        self.next = 0  # the number of the next callback to count
        self.missed = 0  # callbacks that left the log before they were counted
        self.max_us = 0.0
        self.underflow_times: list[int] = []  # CLOCK_MONOTONIC ns of the callbacks flagged (the first 10000)
        self.first_ns = 0  # when the first callback ran

    def drain(self) -> None:
        first, log = self.mixer.callback_log(self.next)
        self.missed += first - self.next
        if len(log):
            if first == 0:
                self.first_ns = int(log["start_ns"][0])
            us = log["ns"] / 1000.0
            np.add.at(self.hist, np.minimum(us.astype(np.int64), self.BINS - 1), 1)
            self.max_us = max(self.max_us, float(us.max()))
            flagged = log["start_ns"][(log["status"] & UNDERFLOW) != 0]
            self.underflow_times += [int(t) for t in flagged[:10000 - len(self.underflow_times)]]
        self.next = first + len(log)

    def percentile(self, q: float) -> float:
        """The q-th percentile in us (the upper edge of its 1 us bin); nan before any callback."""
        n = int(self.hist.sum())
        if n == 0:
            return float("nan")
        return float(np.searchsorted(np.cumsum(self.hist), q / 100 * n) + 1)


@dataclass
class PlaySummary:
    seconds: float
    underflows: int
    starvations: int
    callbacks: int
    clips_dropped: int
    recorder_overflows: int
    callback_median_us: float = float("nan")
    callback_p99_us: float = float("nan")
    callback_max_us: float = float("nan")
    period_us: float = float("nan")  # the device's mean block length
    underflow_times_ns: tuple[int, ...] = ()  # when the flagged callbacks ran (CLOCK_MONOTONIC)
    first_callback_ns: int = 0  # when the first callback ran (CLOCK_MONOTONIC)
    audio_tid: int = 0  # Linux: the callback's thread id
    recording_errors: tuple[str, ...] = ()  # recordings the disk refused ("recording stopped: disk full after ...")
    first_clip_ns: int = 0  # when the first generated clip arrived (CLOCK_MONOTONIC; 0: none)

    def line(self) -> str:
        return (f"played {self.seconds:.1f} s: {self.underflows} underflows, {self.starvations} starvations, "
                f"{self.clips_dropped} clips dropped, {self.recorder_overflows} recorder overflows; "
                f"callback median {self.callback_median_us:.0f} us, p99 {self.callback_p99_us:.0f} us, "
                f"max {self.callback_max_us:.0f} us of a {self.period_us:.0f} us period"
                + "".join(f"; {e}" for e in self.recording_errors))


class Output:
    """The device stream of an Engine's mixer: PortAudio calls the C core (instrument.rt) directly,
    so nothing here runs on the audio thread. Counters come from the core's telemetry."""

    def __init__(self, engine: Engine, device: int | None = None, blocksize: int = 0,
                 latency: str | float = "low") -> None:
        self.engine = engine
        self.mixer = engine.mixer
        self._shut = False
        try:
            self.stream = Stream(self.mixer, device, blocksize, latency)
        except OSError as e:  # PortAudio library missing
            raise AudioDeviceError(f"PortAudio is not installed ({e}): run `sudo apt-get install libportaudio2` "
                                   "(Debian/Ubuntu) or `brew install portaudio` (macOS)") from None
        except Exception as e:
            raise AudioDeviceError(f"cannot open output device {device if device is not None else '(default)'} "
                                   f"at {engine.cfg.sample_rate} Hz: {e}; see `endless devices`") from None

    @property
    def underflows(self) -> int:
        return self.mixer.underflows

    @property
    def callbacks(self) -> int:
        return self.mixer.callbacks

    def __enter__(self) -> Output:
        try:
            self.stream.start()
        except Exception as e:  # e.g. the JACK server died between the stream's open and its start
            self._shut = True
            self._abandon()
            raise AudioDeviceError(f"cannot start the output stream ({e}): is the audio server still running? "
                                   "restart it (or reconnect the device), then start endless play again") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.shut(stalled=False)

    def shut(self, stalled: bool) -> bool:
        """Stop and close the stream, giving up after STOP_WAIT_S (1 s once `stalled`): with its
        server gone, PortAudio's JACK stop, abort and close never return. A hung one is left to its
        own daemon thread, and PortAudio's exit handler (which would wait on that stream forever)
        is taken off, so the process still ends. Returns whether the stream shut (once: later calls
        return at once)."""
        if self._shut:
            return False
        self._shut = True
        stream = self.stream

        stopped = threading.Event()

        def shut() -> None:
            try:
                stream.stop()
            except Exception as e:  # the server gone: the stream is then not closed (see _abandon)
                log.debug("the audio stream's stop failed: %s", e)
                return
            stopped.set()
            try:
                stream.close()
            except Exception as e:
                log.debug("the audio stream's close failed: %s", e)

        t = threading.Thread(target=shut, name="endless-stream-stop", daemon=True)
        t.start()
        t.join(1.0 if stalled else STOP_WAIT_S)
        if not t.is_alive() and stopped.is_set():
            return True
        log.debug("the audio stream did not stop: left open, PortAudio's exit handler removed")
        self._abandon()
        return False

    @staticmethod
    def _abandon() -> None:
        """Leave a stream that failed to start or stop open for good: closing a JACK stream whose server
        died fails an assertion inside PortAudio (pa_jack.c CleanUpStream), which aborts the process,
        and PortAudio's exit handler would close it too, so that handler is taken off."""
        handler = getattr(_sd(), "_exit_handler", None)
        if handler is not None:
            atexit.unregister(handler)


class Watchdog:
    """Whether the device still calls back: the callback count must move within `stall` seconds."""

    def __init__(self, mixer: Mixer, stall: float = STALL_S) -> None:
        self.mixer = mixer
        self.stall = stall
        self.seen = mixer.callbacks
        self.since = time.monotonic()

    def stalled(self, now: float) -> bool:
        n = self.mixer.callbacks
        if n != self.seen:
            self.seen, self.since = n, now
        return now - self.since > self.stall


def play(engine: Engine, device: int | None = None, blocksize: int = 0, latency: str | float = "low",
         seconds: float | None = None, recorder: Recorder | None = None,
         status: Callable[[Engine, Output], None] | None = None, lookahead: float = 0.5,
         ticks: Sequence[Callable[[Engine], object]] = (), wake: threading.Event | None = None,
         stop: threading.Event | None = None, stall: float = STALL_S) -> PlaySummary:
    """Play until `seconds` of output have been produced (None: until Ctrl-C or `stop` is set).

    The control loop: `ticks` (what OSC and MIDI left in their inboxes), due script events,
    timed changes handed to the mixer, clip queues topped up, status; it sleeps 10 ms, or less
    when `wake` is set by an arriving message. Each tick holds `engine.lock`. `recorder`: one made
    before the stream starts (it taps from the first frame). No device callback for `stall` s
    raises AudioStalledError (with the summary) once the stream is put away."""
    sr = engine.cfg.sample_rate
    with engine.lock:  # inputs may already be live (OSC started first): they queue meanwhile
        gen = engine.generator
        if gen is not None and gen.plays_while_loading():  # first sound at once, fresh clips cut in
            log.info("playing from the archive while the model loads")
        elif gen is not None:
            log.info("loading the model (the first start of a CUDA backend also compiles it)...")
            gen.wait_ready()
        engine.apply_due(0)
        engine.schedule_script(int(lookahead * sr))
        engine.pump()
    limit = None if seconds is None else int(round(seconds * sr))
    out = Output(engine, device, blocksize, latency)
    last_status = 0.0
    times = CallbackTimes(engine.mixer)
    # The audio thread never needs the GIL; the control threads do (OSC and MIDI apply messages on
    # arrival). A thread that wants it waits for the holder's switch interval (5 ms by default: most
    # of a 256-frame period) and for any full garbage collection: hand it over sooner, and keep what
    # exists now out of later collections (`python benchmarks/bench_control.py` measures MIDI p99
    # 8.9 ms without these, see the README for with).
    gc.collect()
    gc.freeze()
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    stalled: AudioStalledError | None = None
    promoted = False  # the audio thread asked for realtime scheduling (once its id is known)
    try:
        with out:
            watch = Watchdog(engine.mixer, stall)
            while (limit is None or engine.mixer.frame < limit) and not (stop is not None and stop.is_set()):
                with engine.lock:  # input threads apply messages between ticks (OSC and MIDI `immediate`)
                    for tick in ticks:
                        tick(engine)
                    engine.apply_due(engine.mixer.frame)
                    engine.schedule_script(engine.mixer.frame + int(lookahead * sr))
                    engine.pump()
                times.drain()
                if not promoted and engine.mixer.audio_tid:
                    promoted = True
                    log.info("%s", realtime_audio(engine.mixer.audio_tid))
                now = time.monotonic()
                if watch.stalled(now):
                    stalled = AudioStalledError(
                        f"the audio device stopped calling back (JACK server gone?): no callback for {stall:g} s, "
                        f"{engine.mixer.frame / sr:.1f} s into the set, which ends there: restart the audio server "
                        "or reconnect the device, then start endless play again")
                    out.shut(stalled=True)
                    break
                if status is not None and now - last_status > 0.25:  # a terminal write: not under the lock
                    status(engine, out)
                    last_status = now
                if wake is not None:
                    wake.wait(0.01)
                    wake.clear()
                else:
                    time.sleep(0.01)
    except KeyboardInterrupt:
        pass
    finally:
        sys.setswitchinterval(switch_interval)
    times.drain()
    st = engine.stats()
    calls = max(1, out.callbacks)
    summary = PlaySummary(engine.mixer.frame / sr, out.underflows, sum(st.starvations), out.callbacks,
                       st.clips_dropped, recorder.overflows if recorder else 0, times.percentile(50),
                       times.percentile(99), times.max_us, engine.mixer.frame / calls / sr * 1e6,
                       tuple(times.underflow_times), times.first_ns, engine.mixer.audio_tid,
                       (recorder.error,) if recorder is not None and recorder.error is not None else (),
                       engine.generator.stats.first_clip_ns if engine.generator is not None else 0)
    if stalled is not None:
        stalled.summary = summary
        raise stalled
    return summary
