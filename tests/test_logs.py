"""Issue 12, deliverable 4: bounded logs. No input makes the log grow without bound: a repeated
message (ours, or python-osc's one warning per argument it cannot parse) is rate-limited with a
count, and `endless play --log-file PATH` writes a file that rotates at its size."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage

from instrument import logs
from instrument.errors import ConfigError
from tests.conftest import endless


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Each test sees logs.py's limits alone: the OSC server's own filter for python-osc (installed
    on the root logger once any OSC server ran in this process) is taken off meanwhile."""
    root = logging.getLogger()
    handlers, level, filters = list(root.handlers), root.level, list(root.filters)
    root.filters.clear()
    yield
    root.filters[:] = filters
    logs.setup(stream=io.StringIO())  # takes ours off again (and flushes them)
    for h, _ in list(logs._INSTALLED):
        root.removeHandler(h)
    logs._INSTALLED.clear()
    root.handlers[:] = handlers
    root.setLevel(level)


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def _lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


@pytest.mark.timeout(60)
def test_100k_identical_warnings_write_a_bounded_number_of_lines(restore_logging: None) -> None:
    buf = io.StringIO()
    (limit,) = logs.setup(stream=buf)
    log = logging.getLogger("instrument.test")
    t0 = time.monotonic()
    for _ in range(100_000):
        log.warning("slot %d: too loud", 1)
    seconds = time.monotonic() - t0
    limit.flush()
    lines = _lines(buf)
    # per second: PER_KEY lines, and one summary line when the second is over
    assert len(lines) <= (logs.PER_KEY + 1) * (int(seconds / logs.PERIOD) + 2), (len(lines), seconds)
    assert lines[0] == "endless: slot 1: too loud"
    held = [ln for ln in lines if "(repeated" in ln]
    assert held and held[-1].startswith("endless: slot 1: too loud (repeated ")
    counted = sum(int(ln.split("(repeated ")[1].split()[0]) for ln in held)
    assert counted + len(lines) - len(held) == 100_000 == counted + (len(lines) - len(held))  # every one counted
    assert limit.suppressed == counted


@pytest.mark.timeout(60)
def test_python_osc_warning_per_argument_is_bounded(restore_logging: None) -> None:
    """The finding: `/endless/ping` with type tag `,` + 60,000 `x` logged 60,000 lines per datagram.
    A template per tag letter (python-osc formats its own text) is caught by the per-logger limit."""
    buf = io.StringIO()
    (limit,) = logs.setup(stream=buf)
    records = _Count()
    logging.getLogger().addHandler(records)
    tags = "x" * 60_000 + "".join(chr(c) for c in range(ord("A"), ord("Z") + 1)) * 100
    dgram = b"/endless/ping\0\0\0" + (("," + tags).encode() + b"\0" * (4 - (len(tags) + 1) % 4))
    t0 = time.monotonic()
    for _ in range(3):
        OscMessage(dgram)
    windows = int((time.monotonic() - t0) / logs.PERIOD) + 2
    limit.flush()
    lines = _lines(buf)
    # per second: PER_LOGGER lines, and a count for each of the 27 texts and for the logger
    assert 0 < len(lines) <= (logs.PER_LOGGER + 30) * windows, (len(lines), windows)
    assert any("(repeated " in ln for ln in lines) and any("more lines from root not shown" in ln for ln in lines)
    logging.getLogger().removeHandler(records)
    assert records.n > 3 * 60_000  # what python-osc logged: every one of it shown or counted
    assert limit.suppressed + sum(1 for ln in lines if "repeated" not in ln and "not shown" not in ln) == records.n


def test_the_limit_opens_again_after_its_period(restore_logging: None) -> None:
    buf = io.StringIO()
    logs.setup(stream=buf, per_key=2, period=0.2)
    log = logging.getLogger("instrument.test")
    for _ in range(10):
        log.warning("tick")
    time.sleep(0.25)
    log.warning("tock")  # a new window: the count of the last one comes first
    lines = _lines(buf)
    assert lines[:2] == ["endless: tick", "endless: tick"] and lines[3:] == ["endless: tock"], lines
    assert lines[2].startswith("endless: tick (repeated 8 times in "), lines


def test_the_log_file_rotates_at_its_size(restore_logging: None, tmp_path: Path) -> None:
    path = tmp_path / "endless.log"
    logs.setup(stream=io.StringIO(), log_file=path, max_bytes=20_000, backups=2, per_logger=10**9)
    log = logging.getLogger("instrument.test")
    for i in range(3000):
        log.warning(f"message {i} with some text to fill the file")  # each its own template: none held back
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["endless.log", "endless.log.1", "endless.log.2"], files
    assert all(p.stat().st_size <= 20_000 for p in tmp_path.iterdir())
    assert "message 2999 " in path.read_text()


def test_a_log_file_that_cannot_be_written_names_the_flag(restore_logging: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--log-file .*nowhere.*: cannot write"):
        logs.setup(stream=io.StringIO(), log_file=tmp_path / "nowhere" / "x.log")


@pytest.mark.timeout(120)
def test_play_log_file(jack_env: dict[str, str], noise_folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "play.log"
    r = endless("play", "--clips", str(noise_folder), "--slots", "2", "--seconds", "1", "--device", "system",
                "--osc-port", "0", "--log-file", str(path), env=jack_env, timeout=100)
    assert r.returncode == 0, r.stderr
    assert path.exists() and "INFO" in path.read_text(), path.read_text()
    bad = endless("play", "--clips", str(noise_folder), "--seconds", "1", "--log-file", str(tmp_path / "no" / "x.log"),
                  env=jack_env, timeout=100)
    assert bad.returncode != 0 and "--log-file" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
