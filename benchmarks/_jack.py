"""A private JACK dummy server for the benchmarks (the tests have their own fixture in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid


def finish(proc: subprocess.Popen[str], timeout: float, rec: dict[str, object]) -> tuple[str, str]:
    """The output of a run the benchmark started; one that outlives `timeout` is killed and
    `rec["error"]` says so."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rec["error"] = "timed out"
        return proc.communicate()


def read_or_empty(path: str) -> str:
    """A /proc file's text, or "" when the process (or the file) is gone."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The child processes of `pid` (from every thread's /proc children list)."""
    out: list[int] = []
    task = f"/proc/{pid}/task"
    for tid in os.listdir(task) if os.path.isdir(task) else []:
        out += [int(c) for c in read_or_empty(f"{task}/{tid}/children").split()]
    return out


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found: apt-get install jackd2")
    return path


class JackServer:
    """`jackd -d dummy` at `rate` with `block`-frame periods under a unique name; `env` reaches it.
    Stopped (with timeouts) on exit."""

    def __init__(self, block: int, rate: int = 44100, prefix: str = "bench", realtime: bool = False) -> None:
        self.name = f"{prefix}_{os.getpid()}_{block}_{uuid.uuid4().hex[:6]}"
        self.env = dict(os.environ, JACK_DEFAULT_SERVER=self.name, JACK_NO_START_SERVER="1",
                        JACK_NO_AUDIO_RESERVATION="1")
        # -r: no realtime scheduling (as in CI); -R -P 70: jackd and its clients' process threads
        # run SCHED_FIFO (needs the rtprio limit or root), as a tuned audio machine would
        self.cmd = [tool("jackd"), *(["-R", "-P", "70"] if realtime else ["-r"]), "-n", self.name, "-d", "dummy", "-r", str(rate), "-p", str(block),
                    "-C", "0", "-P", "2"]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> JackServer:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            subprocess.run([tool("jack_wait"), "-s", self.name, "-w", "-t", "10"], env=self.env, check=True,
                           capture_output=True, timeout=20)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
