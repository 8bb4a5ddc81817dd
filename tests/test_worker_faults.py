"""Issue 12: the generator worker under faults, with the real tiny worker process.

- finding 1: both pipes full at once (large requests in, large clips out) must not deadlock;
- finding 12a: a stopped worker (SIGSTOP) is found within seconds of its missed heartbeats and
  restarted, while a worker busy with long work (loading, a slow step) is never killed;
- deliverable 2: kill -9 mid-send loses no clip and delivers none half-written; and `endless play`
  on JACK keeps playing through a killed and a stopped worker, says so, and ends on time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from instrument.errors import ConfigError
from instrument.generator.protocol import ClipReady, FromWorker, Progress
from instrument.generator.worker import GeneratorClient, WorkerSpec
from tests.test_generator import SR, req, wait_for, watched
from tests.test_osc import encode, parse

ROOT = Path(__file__).resolve().parents[1]


def wait_ready(c: GeneratorClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while c.state not in ("ready", "busy"):
        assert time.monotonic() < deadline, f"not ready in {timeout} s: {c.state} {c.error}"
        c.poll(0.1)


def clips_until(c: GeneratorClient, ids: set[int], timeout: float, on_msg: Any = None) -> dict[int, list[ClipReady]]:
    got: dict[int, list[ClipReady]] = defaultdict(list)
    deadline = time.monotonic() + timeout
    while not ids <= set(got):
        assert time.monotonic() < deadline, f"clips {sorted(ids - set(got))} missing after {timeout} s ({c.state})"
        for m in c.poll(0.05):
            if isinstance(m, ClipReady):
                got[m.id].append(m)
            if on_msg is not None:
                on_msg(m)
    return got


# -- finding 1: no deadlock with both pipes full ------------------------------------------------------
@pytest.mark.timeout(240)
def test_full_pipes_both_ways_do_not_deadlock() -> None:
    c = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, threads=1, max_batch=4), hang_timeout=60)
    c.start()
    try:
        wait_ready(c)
        for i in range(1, 5):  # one batch of four 20 s clips: 28 MB on its way back
            c.submit(req(i, seed=i, seconds=20.0))
        wait_for(c, (Progress,))
        big = "rain on a tin roof " * 420  # 8 KB a request: 8 MB towards a child that is busy, then writing
        took: list[float] = []

        def flood() -> None:
            t0 = time.monotonic()
            for i in range(5, 1005):
                c.submit(req(i, seed=i, prompt=big, seconds=20.0))
            took.append(time.monotonic() - t0)

        th = threading.Thread(target=flood, daemon=True)
        th.start()
        th.join(30)
        if th.is_alive():  # the old protocol: both sides blocked writing into the other's pipe
            if c.pid is not None:
                os.kill(c.pid, signal.SIGKILL)
            th.join(10)
            pytest.fail("submit() blocked for 30 s writing to the worker's pipe while it wrote clips to ours")
        assert took[0] < 5.0, f"1000 submits took {took[0]:.1f} s: the control thread waited on the pipe"
        # the worker goes on: the first batch comes back whole, then the flood's first clips
        got = clips_until(c, {1, 2, 3, 4, 5, 6}, timeout=120)
        assert all(len(v) == 1 and v[0].clip.audio.shape == (20 * SR, 2) for v in got.values())
        c.cancel(tuple(range(7, 1005)))
        t0 = time.monotonic()
        c.stop()
        assert time.monotonic() - t0 < 10 and c.restarts == 0
    finally:
        c.stop()


# -- finding 12a: the heartbeat watchdog --------------------------------------------------------------
@pytest.mark.timeout(240)
def test_a_stopped_worker_is_found_within_seconds_and_restarted() -> None:
    c, events = watched(WorkerSpec(model="tiny", sample_rate=SR, threads=1, heartbeat_timeout=2.0), backoff=(0.1,))
    stopped = None
    try:
        wait_ready(c)
        c.submit(req(1, steps=3))
        stopped = c.pid
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        t0 = time.monotonic()
        while c.restarts == 0:
            assert time.monotonic() - t0 < 30, f"a stopped worker not noticed in 30 s; events {events}"
            c.poll(0.05)
        found = time.monotonic() - t0
        assert 1.5 < found < 2.0 + 3.0, f"found after {found:.1f} s (heartbeat timeout 2 s)"
        assert len(events) == 1 and "heartbeat" in events[0] and "restart" in events[0], events
        # the new worker makes the request the stopped one held
        got = clips_until(c, {1}, timeout=120)
        assert c.pid != stopped and len(got[1]) == 1 and c.restarts == 1
    finally:
        if stopped is not None:
            with_suppressed_kill(stopped)
        c.stop()


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(240)
def test_long_work_in_the_worker_is_not_taken_for_a_hang() -> None:
    """Loading the model (torch's import, the weights) and a step slower than the heartbeat timeout:
    the child's heartbeat thread keeps beating, so the idle-class worker is left alone."""
    c, events = watched(WorkerSpec(model="tiny", sample_rate=SR, threads=1, nice=10, heartbeat_timeout=2.0,
                                   test_delay=3.0), hang_timeout=60, backoff=(0.1,))
    try:
        c.submit(req(1, steps=2))  # 2 steps of more than 3 s each
        got = clips_until(c, {1}, timeout=180)
        assert len(got[1]) == 1 and c.restarts == 0 and events == []
    finally:
        c.stop()


def test_a_heartbeat_timeout_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"heartbeat timeout 0 s: allowed 0.1..3600 s"):
        WorkerSpec(heartbeat_timeout=0)


# -- deliverable 2: kill -9 --------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_kill_9_mid_send_loses_no_clip_and_delivers_none_half_written() -> None:
    c, events = watched(WorkerSpec(model="tiny", sample_rate=SR, threads=1, max_batch=4), hang_timeout=60,
                        backoff=(0.1,))
    try:
        wait_ready(c)
        for i in range(1, 9):  # two batches of four 20 s clips (7 MB each)
            c.submit(req(i, seed=i, seconds=20.0))
        killed: list[int] = []

        def kill_at_first_clip(m: FromWorker) -> None:
            if isinstance(m, ClipReady) and not killed and c.pid is not None:
                killed.append(c.pid)  # the rest of its batch is being written now
                os.kill(c.pid, signal.SIGKILL)

        got = clips_until(c, set(range(1, 9)), timeout=240, on_msg=kill_at_first_clip)
        assert killed and c.restarts == 1 and c.pid != killed[0]
        assert len(events) == 1 and "died" in events[0]
        for i, msgs in got.items():
            assert len(msgs) == 1, f"clip {i} came {len(msgs)} times"
            clip = msgs[0].clip
            assert clip.audio.shape == (20 * SR, 2) and np.isfinite(clip.audio).all(), i
            assert clip.info.seed == i and msgs[0].loudness <= -20.0 + 1e-6  # post-processed whole
        assert c.outstanding == {}
    finally:
        c.stop()


# -- deliverable 2: a live set on JACK through both faults --------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_of(pid: int) -> int | None:
    """The generator worker: the child of `pid` that multiprocessing spawned (not its resource tracker)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            return int(d)
    return None


class Status:
    """Subscribes to the instrument's OSC status and keeps the generator's state as it changes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.state = ""
        self.changes: list[tuple[float, str]] = []
        self._renewed = 0.0

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if time.monotonic() - self._renewed > 20:
                self.sock.sendto(encode("/endless/subscribe"), ("127.0.0.1", self.port))
                self._renewed = time.monotonic()
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionRefusedError):
                continue
            for address, args in parse(data):
                if address == "/endless/status/generator/state" and args[0] != self.state:
                    self.state = args[0]
                    self.changes.append((time.monotonic(), self.state))

    def until(self, states: tuple[str, ...], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.state not in states:
            assert time.monotonic() < deadline, f"no {states} in {timeout} s: {self.changes}"
            self.pump(0.1)
        return time.monotonic()


@pytest.mark.jack
@pytest.mark.timeout(400)
def test_play_keeps_playing_through_a_killed_and_a_stopped_worker(jack_env: dict[str, str], tmp_path: Path) -> None:
    seconds, port = 50, _free_port()
    rec, stats = tmp_path / "rec.wav", tmp_path / "stats.json"
    out, err = (tmp_path / "out.txt").open("w"), (tmp_path / "err.txt").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "instrument", "play", "--model", "tiny", "--slots", "2",
                             "--length", "20", "--steps", "3", "--seconds", str(seconds), "--record", str(rec),
                             "--stats", str(stats), "--osc-port", str(port)],
                            env=jack_env, cwd=ROOT, stdout=out, stderr=err)
    status = Status(port)
    stopped: int | None = None
    try:
        status.until(("ready", "busy"), timeout=180)
        while not rec.exists() or rec.stat().st_size < 3 * SR * 8:  # 3 s played and recorded
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()
            status.pump(0.2)
        first = _worker_of(proc.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)  # under load: two slots asking for clips
        status.until(("restarting",), timeout=10)
        status.until(("ready", "busy"), timeout=120)
        status.pump(1.0)
        stopped = _worker_of(proc.pid)
        assert stopped is not None and stopped != first
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.monotonic()
        t_found = status.until(("restarting",), timeout=30)
        assert t_found - t_stop < 3.0 + 3.0, f"the stopped worker found after {t_found - t_stop:.1f} s"
        status.until(("ready", "busy"), timeout=120)
        rc = proc.wait(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if stopped is not None:
            with_suppressed_kill(stopped)
        status.sock.close()
        out.close()
        err.close()
    stderr, stdout = (tmp_path / "err.txt").read_text(), (tmp_path / "out.txt").read_text()
    assert rc == 0, stderr
    said = [line for line in stderr.splitlines() if "generator" in line and "restarting" in line]
    assert len(said) == 2 and "died" in said[0] and "heartbeat" in said[1], said
    # (a slot that runs dry while the worker reloads twice loops its clip and counts a starvation:
    # sound either way, which the recording shows)
    assert "2 restarts" in stdout + stderr and "Traceback" not in stderr
    audio, sr = sf.read(rec, dtype="float32")
    assert sr == SR and abs(len(audio) - seconds * SR) <= 4096  # the whole set, recorded
    w = SR // 2  # every half second once the first clips have faded in: the audio never stopped
    rms = [float(np.sqrt(np.mean(audio[i:i + w] ** 2))) for i in range(0, len(audio) - w, w)]
    up = next(i for i, r in enumerate(rms) if r > 10 ** (-35 / 20))
    assert up * w < 20 * SR and min(rms[up:]) > 10 ** (-50 / 20), \
        f"a silent half second after {up / 2} s: {20 * np.log10(min(rms[up:]) + 1e-12):.0f} dBFS"
