"""Faults of the audio server: the JACK server dying under a running `endless play` (issue 12 finding 2).

Each test starts its own jackd (dummy driver), so killing it touches no other test's server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import ROOT, _need

pytestmark = pytest.mark.jack


class Jack:
    """A private jackd (dummy driver, 256-frame periods) and the env that reaches it.

    jackd keeps its servers in a registry of 8 entries, and a server killed with -9 leaves its entry
    behind, reclaimed only by the next server of the same name: so these servers take one of a few
    fixed names (one not running now), and `stop()` starts a server killed with -9 once more under
    its name and stops it cleanly, which frees the entry."""

    NAMES = tuple(f"endless_fault_{os.getuid()}_{i}" for i in range(3))

    def __init__(self) -> None:
        for name in self.NAMES:
            if self._start(name):
                return
        pytest.fail(f"no jackd started under any of {', '.join(self.NAMES)} (are 3 fault tests running?)")

    def _start(self, name: str) -> bool:
        self.name = name
        self.env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1", JACK_NO_AUDIO_RESERVATION="1")
        self.proc = subprocess.Popen([_need("jackd"), "-r", "-n", name, "-d", "dummy", "-r", "44100", "-p", "256",
                                      "-C", "0", "-P", "2"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        up = subprocess.run([_need("jack_wait"), "-s", name, "-w", "-t", "10"], env=self.env, capture_output=True,
                            timeout=20).returncode == 0
        if up and self.proc.poll() is None:
            return True  # ours (another test's server of this name would have made ours exit)
        self.stop(reclaim=False)
        return False

    def ports(self, connections: bool = False) -> list[str]:
        """The server's ports (`connections`: only those connected to another)."""
        r = subprocess.run([_need("jack_lsp"), "-c", "-s", self.name], env=self.env, capture_output=True, text=True,
                           timeout=10)
        ports: list[str] = []
        connected: set[str] = set()
        for line in r.stdout.splitlines():
            if line.startswith((" ", "\t")):  # a connection of the port above
                connected.add(ports[-1])
            elif line.strip():
                ports.append(line.strip())
        return [p for p in ports if p in connected] if connections else ports

    def stop(self, reclaim: bool = True) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        killed = self.proc.wait(timeout=10) == -signal.SIGKILL
        if killed and reclaim and self._start(self.name):  # frees the registry entry the killed one left
            self.stop(reclaim=False)


@pytest.fixture
def jack() -> Iterator[Jack]:
    j = Jack()
    try:
        yield j
    finally:
        j.stop()


def _play(jack: Jack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "instrument", "play", "--demo", "--seconds", "60", "--device",
                             "system", "--osc-port", "0", *args], env=jack.env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_playing(jack: Jack, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Until the player's output ports are connected to the system's (its stream has started: the
    ports appear at the stream's open, the connections at its start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if any(not p.startswith("system:") for p in jack.ports(connections=True)):
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"endless play did not open its stream in {timeout} s: {proc.communicate()}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_jack_server_dying_ends_play_with_one_line(jack: Jack, tmp_path: Path, sig: signal.Signals) -> None:
    """Before: `endless play --seconds 60` ran on for minutes after jackd died (ping and status still
    answered, PortAudio's stop hung). Now: the control loop sees no callback for 2 s, says so in one
    line, finishes the recording and exits with its own code, well before the set's end."""
    rec = tmp_path / "set.wav"
    proc = _play(jack, "--record", str(rec))
    try:
        _wait_playing(jack, proc)
        time.sleep(2)
        os.kill(jack.proc.pid, sig)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 10, (took, err)
    assert proc.returncode == 6, (proc.returncode, err)
    ours = [line for line in err.splitlines() if line.startswith("endless:")]
    assert ours[-1].startswith("endless: error: the audio device stopped calling back"), err
    assert "JACK server gone?" in ours[-1] and "Traceback" not in err
    assert sum("stopped calling back" in line for line in err.splitlines()) == 1, err
    assert out.startswith("played "), out  # the set's summary, as at any end
    audio, sr = sf.read(rec)  # the recording is a whole file, up to where the audio stopped
    assert sr == 44100 and 1.5 * sr < len(audio) < 30 * sr


@pytest.mark.timeout(180)
def test_ctrl_c_after_the_jack_server_died_does_not_hang(jack: Jack) -> None:
    """Before: Ctrl-C hung inside PortAudio's stop once the server was gone. The stop now runs with
    a time limit, and PortAudio's exit handler is left out when it hung."""
    proc = _play(jack)
    try:
        _wait_playing(jack, proc)
        os.kill(jack.proc.pid, signal.SIGKILL)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 10 and proc.returncode in (0, 6, 130), (took, proc.returncode, err)
    assert "Traceback" not in err, err


def test_a_stream_that_fails_to_start_gives_one_line_and_is_never_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JACK server dying between the stream's open and its start: PortAudio's start fails, and
    closing that stream would fail an assertion inside PortAudio (pa_jack.c CleanUpStream) and abort
    the process (found by the test above under load). Now: one AudioDeviceError line, the stream
    left open, and sounddevice's exit handler (which would close it) taken off."""
    import atexit

    import sounddevice

    from instrument import audio
    from instrument.engine import Engine
    from instrument.errors import AudioDeviceError
    from instrument.rt import MixerConfig

    calls: list[str] = []

    class DeadServerStream:
        def __init__(self, *a: object) -> None:
            calls.append("open")

        def start(self) -> None:
            raise sounddevice.PortAudioError("Error starting stream: Unanticipated host error [PaErrorCode -9999]")

        def stop(self) -> None:
            calls.append("stop")

        def close(self) -> None:
            calls.append("close")

    unregistered: list[object] = []
    monkeypatch.setattr(audio, "Stream", DeadServerStream)
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    out = audio.Output(Engine(MixerConfig(slots=1, sample_rate=44100)))
    with pytest.raises(AudioDeviceError) as e, out:
        pytest.fail("started")
    msg = str(e.value)
    assert msg.startswith("cannot start the output stream (Error starting stream") and "\n" not in msg
    assert "is the audio server still running?" in msg and "start endless play again" in msg
    assert calls == ["open"] and unregistered == [sounddevice._exit_handler]
    assert out.shut(stalled=False) is False and calls == ["open"]  # put away once: never closed later
