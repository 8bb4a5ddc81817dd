"""Shared fixtures: a real JACK server (dummy driver) with a unique name, and small clip folders."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

# Tests never write to the user's data folder: the archive's default folder (`--archive` not given) is
# a temporary one for the session, in this process and every `endless` it starts (a process the tests
# start that imports this module keeps its parent's folder, and leaves its removal to the parent).
_TEST_ARCHIVE = os.path.join(tempfile.gettempdir(), "endless-test-archive-")
if not os.environ.get("ENDLESS_ARCHIVE", "").startswith(_TEST_ARCHIVE):
    os.environ["ENDLESS_ARCHIVE"] = tempfile.mkdtemp(prefix="endless-test-archive-")
    atexit.register(shutil.rmtree, os.environ["ENDLESS_ARCHIVE"], True)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: run `make test` (it installs jackd2), or apt-get install jackd2")
    return path


@pytest.fixture(scope="session")
def jack_env() -> Iterator[dict[str, str]]:
    """Start `jackd -d dummy` at 44.1 kHz with 256-frame periods; yield the env that reaches it."""
    name = f"endless_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1", JACK_NO_AUDIO_RESERVATION="1")
    proc = subprocess.Popen([_need("jackd"), "-r", "-n", name, "-d", "dummy", "-r", "44100", "-p", "256",
                             "-C", "0", "-P", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        subprocess.run([_need("jack_wait"), "-s", name, "-w", "-t", "10"], env=env, check=True,
                       capture_output=True, timeout=20)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def endless(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (so PortAudio sees the JACK env from its first call)."""
    return subprocess.run([sys.executable, "-m", "instrument", *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write_noise_folder(root: Path, slots: int = 4, clips: int = 3, seconds: float = 3.0, rate: int = 44100,
                       seed: int = 0) -> Path:
    """One subfolder per slot of uncorrelated noise clips with 10 ms fades, peak about -12 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    fade = np.linspace(0, 1, int(0.01 * rate))
    for s in range(slots):
        d = root / f"slot{s + 1}"
        d.mkdir(parents=True, exist_ok=True)
        for c in range(clips):
            x = rng.standard_normal((n, 2)) * 0.06
            x[: len(fade)] *= fade[:, None]
            x[-len(fade):] *= fade[::-1, None]
            sf.write(d / f"c{c}.wav", x.astype(np.float32), rate, subtype="FLOAT")
    return root


@pytest.fixture
def noise_folder(tmp_path: Path) -> Path:
    return write_noise_folder(tmp_path / "clips")
