"""Flooding costs audio? A live `endless play --demo` on a JACK dummy server (256 frames, jackd
without realtime priority), flooded with RATE gain changes a second over OSC (UDP loopback) for
SECONDS, without and with a subscriber attached (which gets every echo and the status), against an
idle run of the same length. Figures per run: underflows (from `--stats`), ping round trips during
the run (p50/max), datagrams the subscriber received.

    python benchmarks/bench_flood.py [--seconds 70] [--rate 10000]

Prints a table and a final JSON line
`{"bench": "flood", "runs": [{"mode", "seconds", "rate", "underflows", "ping_p50_ms", "ping_max_ms", "echoes"}]}`.
Issue 12 (finding 5) measured 3-13 underflows idle, 29 flooded and 127 flooded with a subscriber
(pings up to 1.1 s) over 70 s before changes were coalesced per parameter.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jack import JackServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _msg(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pinger:
    """Pings the instrument every `every` s from its own socket; keeps the round trips."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.rtts: list[float] = []

    def ping(self, token: int, timeout: float = 5.0) -> float | None:
        t0 = time.perf_counter()
        self.sock.sendto(_msg("/endless/ping", token), ("127.0.0.1", self.port))
        self.sock.settimeout(timeout)
        while True:
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                return None
            for m in OscPacket(data).messages:
                if m.message.address == "/endless/pong" and list(m.message.params) == [token]:
                    return time.perf_counter() - t0

    def run(self, stop: threading.Event, every: float = 0.1) -> None:
        token = 1_000_000
        while not stop.is_set():
            token += 1
            rtt = self.ping(token, timeout=2.0)
            self.rtts.append(2.0 if rtt is None else rtt)
            stop.wait(every)


def flood(port: int, rate: int, stop: threading.Event) -> None:
    """RATE changes a second to slot 1's gain, in 1 ms batches."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = np.random.default_rng(0)
    values = rng.uniform(-40.0, 0.0, 4096)
    packets = [_msg("/endless/slot/1/gain", float(v)) for v in values]
    sent, t0 = 0, time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - t0) * rate)
        while sent < due:
            sock.sendto(packets[sent % len(packets)], ("127.0.0.1", port))
            sent += 1
        time.sleep(0.001)
    sock.close()


def subscriber(port: int, stop: threading.Event, got: list[int]) -> None:
    """Subscribes (renewing every second) and reads everything sent to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    renew = 0.0
    while not stop.is_set():
        if time.monotonic() >= renew:
            sock.sendto(_msg("/endless/subscribe"), ("127.0.0.1", port))
            renew = time.monotonic() + 1.0
        try:
            sock.recvfrom(65536)
            got[0] += 1
        except TimeoutError:
            pass
    sock.sendto(_msg("/endless/unsubscribe"), ("127.0.0.1", port))
    sock.close()


def run(mode: str, seconds: float, rate: int, tmp: Path) -> dict[str, Any]:
    port = _free_port()
    stats = tmp / f"{mode}.json"
    with JackServer(256, prefix="flood") as jack:
        proc = subprocess.Popen([sys.executable, "-m", "instrument", "play", "--demo", "--slots", "4",
                                 "--seconds", str(seconds + 5), "--device", "system", "--latency", "low",
                                 "--osc-port", str(port), "--stats", str(stats)],
                                env=jack.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pinger = Pinger(port)
        deadline = time.monotonic() + 60
        while pinger.ping(1, timeout=0.5) is None:  # up and answering
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _, err = proc.communicate()
                raise SystemExit(f"endless play did not start: {err.strip()[-2000:]}")
        stop = threading.Event()
        echoes = [0]
        threads = [threading.Thread(target=pinger.run, args=(stop,), daemon=True)]
        if mode != "idle":
            threads.append(threading.Thread(target=flood, args=(port, rate, stop), daemon=True))
        if mode == "flood+subscriber":
            threads.append(threading.Thread(target=subscriber, args=(port, stop, echoes), daemon=True))
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(5)
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise SystemExit(f"endless play exited {proc.returncode}: {err.strip()[-2000:]}")
    st = json.loads(stats.read_text())
    rtt = np.array(pinger.rtts or [0.0]) * 1e3
    return {"mode": mode, "seconds": seconds, "rate": 0 if mode == "idle" else rate, "underflows": st["underflows"],
            "ping_p50_ms": round(float(np.percentile(rtt, 50)), 2), "ping_max_ms": round(float(rtt.max()), 2),
            "echoes": echoes[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=70.0, help="length of each flood (default 70, as measured)")
    ap.add_argument("--rate", type=int, default=10_000, help="gain changes a second (default 10000)")
    ap.add_argument("--modes", default="idle,flood,flood+subscriber", help="comma-separated runs")
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for mode in args.modes.split(","):
            runs.append(run(mode, args.seconds, args.rate, Path(d)))
    print(f"{'mode':<18}{'seconds':>8}{'rate/s':>8}{'underflows':>11}{'ping p50':>10}{'ping max':>10}{'echoes':>9}")
    for r in runs:
        print(f"{r['mode']:<18}{r['seconds']:>8g}{r['rate']:>8}{r['underflows']:>11}{r['ping_p50_ms']:>8.2f}ms"
              f"{r['ping_max_ms']:>8.1f}ms{r['echoes']:>9}")
    print(json.dumps({"bench": "flood", "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
