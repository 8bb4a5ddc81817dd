"""Does live play drop out while the model generates? `endless play` on a JACK dummy server, counted.

Why: the device callback is C (instrument/rt/core.c) and never waits for Python, so a late block
can only come from the machine: the audio threads not getting a CPU in time. This runs the real
CLI, as a user would, on its own `jackd -d dummy` server without realtime priority (256 frames,
44.1 kHz, as in CI), and reads the summary line `endless play` prints at the end of a set:
underflows (PortAudio's output-underflow flags: JACK xruns), starvations (a slot ran out of clips)
and the callback durations C logged (median, p99, max over the whole set).

Runs (each `--seconds`, default 60):
  tiny x3      `--model tiny --slots 8`: the tiny TangoFlux stand-in generating in its worker
               process, as `endless play` sets it up on a CPU
  tiny 16      the same with 16 slots
  tiny + OSC   8 slots while an OSC client sends 1000 `/endless/slot/1/gain` changes a second
  demo         `--demo --slots 8`: no generator (the floor)

    .venv/bin/python benchmarks/bench_live.py                 # six runs of 60 s, ~8 minutes
    .venv/bin/python benchmarks/bench_live.py --seconds 20    # shorter runs
    .venv/bin/python benchmarks/bench_live.py --only demo     # one kind of run

Target: 0 underflows in every run. On a shared 2-core VM, jackd's own late wake-ups (it has no
realtime priority here) can still cost an xrun now and then: the load average is printed per run.
The last line of stdout is JSON: {"bench": "live", "runs": [...], "target_met": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _jack import JackServer  # benchmarks/_jack.py (the script folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
ENDLESS = ROOT / ".venv" / "bin" / "endless"
RATE = 44100
BLOCK = 256
SUMMARY = re.compile(r"played ([\d.]+) s: (\d+) underflows, (\d+) starvations, (\d+) clips dropped.*?"
                     r"callback median (\d+) us, p99 (\d+) us, max (\d+) us of a (\d+) us period")

# name -> (slots, source, OSC messages a second)
RUNS: dict[str, tuple[int, str, int]] = {
    "tiny": (8, "tiny", 0),
    "tiny16": (16, "tiny", 0),
    "osc": (8, "tiny", 1000),
    "demo": (8, "demo", 0),
}
DEFAULT = ["tiny", "tiny", "tiny", "tiny16", "osc", "demo"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def osc_flood(port: int, rate: int, stop: threading.Event) -> int:
    """Send `rate` slot-1 gain changes a second (in bursts of rate/100 every 10 ms) until stopped."""
    from pythonosc.udp_client import SimpleUDPClient

    client = SimpleUDPClient("127.0.0.1", port)
    burst = max(1, rate // 100)
    sent = 0
    t = time.monotonic()
    while not stop.is_set():
        for _ in range(burst):
            client.send_message("/endless/slot/1/gain", random.uniform(-30.0, 0.0))
            sent += 1
        t += burst / rate
        time.sleep(max(0.0, t - time.monotonic()))
    return sent


def run_one(server: JackServer, name: str, seconds: float) -> dict[str, Any]:
    slots, source, osc_rate = RUNS[name]
    port = free_udp_port()
    src = ["--demo"] if source == "demo" else ["--model", source]
    cmd = [str(ENDLESS), "play", *src, "--slots", str(slots), "--seconds", str(seconds), "--device", "system",
           "--latency", "low", "--osc-port", str(port)]
    rec: dict[str, Any] = {"run": name, "slots": slots, "source": source, "osc_rate": osc_rate, "seconds": seconds}
    stop = threading.Event()
    sent = [0]
    flood = None
    if osc_rate:
        flood = threading.Thread(target=lambda: sent.__setitem__(0, osc_flood(port, osc_rate, stop)), daemon=True)
    proc = subprocess.Popen(cmd, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if flood is not None:
        flood.start()
    try:
        out, err = proc.communicate(timeout=seconds + 240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        rec["error"] = "timed out"
        return rec
    finally:
        stop.set()
        if flood is not None:
            flood.join(timeout=5)
    rec["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if osc_rate:
        rec["osc_sent"] = sent[0]
    m = SUMMARY.search(out)
    if proc.returncode != 0 or m is None:
        tail = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
        rec["error"] = f"exit {proc.returncode}: {tail}"
        return rec
    played, under, starv, dropped, med, p99, mx, period = m.groups()
    rec.update(seconds=float(played), underflows=int(under), starvations=int(starv), clips_dropped=int(dropped),
               callback_median_us=int(med), callback_p99_us=int(p99), callback_max_us=int(mx),
               period_us=int(period))
    return rec


def table(runs: list[dict[str, Any]]) -> str:
    head = (f"{'run':>7} {'slots':>5} {'source':>6} {'osc/s':>6} {'seconds':>7} {'underflows':>10} "
            f"{'starved':>7} {'cb_med_us':>9} {'cb_p99_us':>9} {'cb_max_us':>9} {'med_%':>6} {'p99_%':>6} {'load':>5}")
    rows = [head, "-" * len(head)]
    for r in runs:
        if "error" in r:
            rows.append(f"{r['run']:>7} {r['slots']:5d} {r['source']:>6} {r['osc_rate']:6d}  FAILED: {r['error']}")
            continue
        p = r["period_us"]
        rows.append(f"{r['run']:>7} {r['slots']:5d} {r['source']:>6} {r['osc_rate']:6d} {r['seconds']:7.1f} "
                    f"{r['underflows']:10d} {r['starvations']:7d} {r['callback_median_us']:9d} "
                    f"{r['callback_p99_us']:9d} {r['callback_max_us']:9d} {100 * r['callback_median_us'] / p:6.2f} "
                    f"{100 * r['callback_p99_us'] / p:6.2f} {r['load_avg_1m']:5.2f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of play per run (default 60)")
    ap.add_argument("--only", choices=sorted(RUNS), action="append",
                    help="run only this kind (repeatable; default: tiny x3, tiny16, osc, demo)")
    args = ap.parse_args(argv)
    if not ENDLESS.exists():
        raise SystemExit(f"{ENDLESS} not found: run `make test` (or `make play`) first, which builds the venv")
    runs: list[dict[str, Any]] = []
    for name in args.only or DEFAULT:
        with JackServer(BLOCK, RATE, "bench_live") as server:  # a fresh server per run: no xrun carried over
            runs.append(run_one(server, name, args.seconds))
        r = runs[-1]
        print(f"{name}: " + (r.get("error") or f"{r['underflows']} underflows, {r['starvations']} starvations, "
                             f"callback p99 {r['callback_p99_us']} us"), file=sys.stderr, flush=True)
    print(table(runs))
    met = all("error" not in r and r["underflows"] == 0 for r in runs)
    keys = ("slots", "source", "osc_rate", "seconds", "underflows", "starvations", "callback_median_us",
            "callback_p99_us", "callback_max_us", "period_us")
    out = [{k: r.get(k) for k in keys} | {k: r[k] for k in ("run", "load_avg_1m", "osc_sent", "error") if k in r}
           for r in runs]
    print(f"\ntarget: 0 underflows in every run -> {'met' if met else 'NOT met'}")
    print(json.dumps({"bench": "live", "runs": out, "target_met": met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
