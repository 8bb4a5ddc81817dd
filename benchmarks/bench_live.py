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

Where late blocks come from (Linux): a sampler reads the host's steal time and every thread's
run-queue wait (/proc/<pid>/task/<tid>/schedstat) of jackd, `endless` and the generator worker
every 20 ms; each underflow (its time and our audio thread's id come from `endless play --stats`)
is matched with the 40 ms before it: our audio thread waited for a CPU, jackd's threads did, the
vCPU was stolen by the host, or none of these was seen. The JSON's "late" has each one's detail
(the waits, the steal, the three threads that ran most).

Target: 0 underflows in every run. On a shared 2-core VM, jackd's own late wake-ups (it has no
realtime priority here) can still cost an xrun now and then: the load average is printed per run.
The last line of stdout is JSON: {"bench": "live", "runs": [...], "target_met": ...}.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _jack import (  # benchmarks/_jack.py (the script folder is on sys.path)
    JackServer,
    children,
    finish,
    read_or_empty,
)

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


# -- where late blocks come from (Linux) ----------------------------------------------------------------
# Every SAMPLE_S the sampler reads the host's steal time (/proc/stat: CPU time the hypervisor gave to
# another guest) and, for every thread of jackd, of `endless` and of its children (the generator
# worker), /proc/<pid>/task/<tid>/schedstat: nanoseconds on a CPU and waiting on a run queue. An
# underflow is flagged on the callback after the late cycle, so each one is matched with the window
# WINDOW_S before it: did our audio thread (its tid comes from `--stats`) wait for a CPU, did jackd's
# threads, was the vCPU stolen, and which threads ran meanwhile.
SAMPLE_S = 0.02
KERNEL_THREADS = ("kdamond", "kswapd", "kcompactd", "khugepaged")  # reclaim and compaction run on a CPU too
WINDOW_S = 0.04
WAITED_MS = 2.0  # a wait this long in one window is a cause (the period is 5.8 ms)
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Sampler(threading.Thread):
    """Samples steal and per-thread run/wait times of jackd, endless and its children."""

    def __init__(self, jackd: int, endless: int) -> None:
        super().__init__(daemon=True)
        self.roots = {"jackd": jackd, "endless": endless}
        self.samples: list[tuple[int, int, dict[int, tuple[str, int, int]]]] = []  # (t_ns, steal_ns, tid -> ...)
        self.stop = threading.Event()

    def _procs(self) -> dict[int, str]:
        procs = {pid: name for name, pid in self.roots.items()}
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):  # the kernel's memory threads
            comm = read_or_empty(f"/proc/{pid}/comm").strip()
            if comm.startswith(KERNEL_THREADS):
                procs[pid] = comm
        for child in children(self.roots["endless"]):
            procs[child] = "worker" if "spawn_main" in read_or_empty(f"/proc/{child}/cmdline") else "endless-child"
        return procs

    def run(self) -> None:
        procs: dict[int, str] = {}
        k = 0
        while not self.stop.is_set():
            if k % 50 == 0:  # the worker may restart
                procs = self._procs()
            k += 1
            t = time.monotonic_ns()
            cpu = read_or_empty("/proc/stat").split("\n", 1)[0].split()
            steal = int(cpu[8]) * 1_000_000_000 // USER_HZ if len(cpu) > 8 else 0
            threads: dict[int, tuple[str, int, int]] = {}
            for pid, name in procs.items():
                tids = os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []
                for tid in tids:
                    f = read_or_empty(f"/proc/{pid}/task/{tid}/schedstat").split()
                    if len(f) >= 2:
                        threads[int(tid)] = (name, int(f[0]), int(f[1]))
            self.samples.append((t, steal, threads))
            self.stop.wait(SAMPLE_S)

    def explain(self, underflows_ns: list[int], audio_tid: int) -> dict[str, Any]:
        """For each underflow: the audio thread's and jackd's run-queue waits, steal, and the threads
        that ran most, in the window before it; and a count per cause."""
        ts = [s[0] for s in self.samples]
        causes = {"audio_thread_waited": 0, "jackd_waited": 0, "steal": 0, "kernel_mm": 0, "none_seen": 0}
        detail = []
        for tu in underflows_ns:
            i0 = max(0, bisect.bisect_right(ts, tu - int(WINDOW_S * 1e9)) - 1)
            i1 = min(len(ts) - 1, bisect.bisect_left(ts, tu))
            if i1 <= i0:
                continue
            a, b = self.samples[i0], self.samples[i1]
            d = {tid: (v[0], v[1] - a[2][tid][1], v[2] - a[2][tid][2]) for tid, v in b[2].items() if tid in a[2]}
            audio = d.get(audio_tid, ("", 0, 0))[2] / 1e6
            jack = max((w for n, _, w in d.values() if n == "jackd"), default=0) / 1e6
            steal = (b[1] - a[1]) / 1e6
            ran = sorted(((r / 1e6, n, tid) for tid, (n, r, _) in d.items()), reverse=True)[:3]
            kernel = max((r for n, r, _ in d.values() if n.startswith(KERNEL_THREADS)), default=0) / 1e6
            hit = False
            if audio >= WAITED_MS:
                causes["audio_thread_waited"] += 1
                hit = True
            if jack >= WAITED_MS:
                causes["jackd_waited"] += 1
                hit = True
            if steal > 0:
                causes["steal"] += 1
                hit = True
            if kernel >= WAITED_MS:
                causes["kernel_mm"] += 1
            causes["none_seen"] += not hit
            detail.append({"window_ms": round((b[0] - a[0]) / 1e6, 1), "audio_wait_ms": round(audio, 2),
                           "jackd_wait_ms": round(jack, 2), "steal_ms": round(steal, 1),
                           "kernel_mm_ran_ms": round(kernel, 2),
                           "ran_ms": [(n, tid, round(r, 1)) for r, n, tid in ran]})
        return {"causes": causes, "underflows": detail}


def run_one(server: JackServer, name: str, seconds: float) -> dict[str, Any]:
    slots, source, osc_rate = RUNS[name]
    port = free_udp_port()
    src = ["--demo"] if source == "demo" else ["--model", source, "--no-archive"]  # never the user's archive
    stats_file = Path(tempfile.mkdtemp(prefix="bench_live_")) / "stats.json"
    cmd = [str(ENDLESS), "play", *src, "--slots", str(slots), "--seconds", str(seconds), "--device", "system",
           "--latency", "low", "--osc-port", str(port), "--stats", str(stats_file)]
    rec: dict[str, Any] = {"run": name, "slots": slots, "source": source, "osc_rate": osc_rate, "seconds": seconds}
    stop = threading.Event()
    sent = [0]
    flood = None
    if osc_rate:
        flood = threading.Thread(target=lambda: sent.__setitem__(0, osc_flood(port, osc_rate, stop)), daemon=True)
    proc = subprocess.Popen(cmd, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    sampler = Sampler(server.proc.pid if server.proc else 0, proc.pid) if sys.platform == "linux" else None
    if sampler is not None:
        sampler.start()
    if flood is not None:
        flood.start()
    try:
        out, err = finish(proc, seconds + 240, rec)
    finally:
        stop.set()
        if flood is not None:
            flood.join(timeout=5)
        if sampler is not None:
            sampler.stop.set()
            sampler.join(timeout=5)
    if "error" in rec:
        return rec
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
    if sampler is not None and stats_file.exists():
        st = json.loads(stats_file.read_text())
        rec["late"] = sampler.explain(st["underflow_times_ns"], st["audio_tid"])
        rec["late"]["audio_tid_known"] = bool(st["audio_tid"])
        rec["underflow_at_s"] = [round((t - st["first_callback_ns"]) / 1e9, 2) for t in st["underflow_times_ns"]]
    return rec


def late_cell(r: dict[str, Any]) -> str:
    c = r.get("late", {}).get("causes")
    if not c:
        return "-"
    return (f"{c['audio_thread_waited']} / {c['jackd_waited']} / {c['steal']} / {c['none_seen']}"
            f"  (kernel memory thread ran: {c['kernel_mm']})")


def table(runs: list[dict[str, Any]]) -> str:
    head = (f"{'run':>7} {'slots':>5} {'source':>6} {'osc/s':>6} {'seconds':>7} {'underflows':>10} "
            f"{'starved':>7} {'cb_med_us':>9} {'cb_p99_us':>9} {'cb_max_us':>9} {'med_%':>6} {'p99_%':>6} {'load':>5}"
            "  late: ours waited / jackd waited / steal / none seen")
    rows = [head, "-" * len(head)]
    for r in runs:
        if "error" in r:
            rows.append(f"{r['run']:>7} {r['slots']:5d} {r['source']:>6} {r['osc_rate']:6d}  FAILED: {r['error']}")
            continue
        p = r["period_us"]
        rows.append(f"{r['run']:>7} {r['slots']:5d} {r['source']:>6} {r['osc_rate']:6d} {r['seconds']:7.1f} "
                    f"{r['underflows']:10d} {r['starvations']:7d} {r['callback_median_us']:9d} "
                    f"{r['callback_p99_us']:9d} {r['callback_max_us']:9d} {100 * r['callback_median_us'] / p:6.2f} "
                    f"{100 * r['callback_p99_us'] / p:6.2f} {r['load_avg_1m']:5.2f}  " + late_cell(r))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of play per run (default 60)")
    ap.add_argument("--realtime", action="store_true",
                    help="start jackd with realtime priority (-R -P 70; needs rtprio or root), to tell the "
                         "scheduling of jackd and our JACK thread apart from everything else")
    ap.add_argument("--only", choices=sorted(RUNS), action="append",
                    help="run only this kind (repeatable; default: tiny x3, tiny16, osc, demo)")
    args = ap.parse_args(argv)
    if not ENDLESS.exists():
        raise SystemExit(f"{ENDLESS} not found: run `make test` (or `make play`) first, which builds the venv")
    runs: list[dict[str, Any]] = []
    for name in args.only or DEFAULT:
        with JackServer(BLOCK, RATE, "bench_live", realtime=args.realtime) as server:  # a fresh server per run: no xrun carried over
            runs.append(run_one(server, name, args.seconds))
        r = runs[-1]
        print(f"{name}: " + (r.get("error") or f"{r['underflows']} underflows, {r['starvations']} starvations, "
                             f"callback p99 {r['callback_p99_us']} us"), file=sys.stderr, flush=True)
    print(table(runs))
    met = all("error" not in r and r["underflows"] == 0 for r in runs)
    keys = ("slots", "source", "osc_rate", "seconds", "underflows", "starvations", "callback_median_us",
            "callback_p99_us", "callback_max_us", "period_us")
    out = [{k: r.get(k) for k in keys} | {k: r[k] for k in ("run", "load_avg_1m", "osc_sent", "underflow_at_s", "late", "error")
                                       if k in r}
           for r in runs]
    print(f"\ntarget: 0 underflows in every run -> {'met' if met else 'NOT met'}")
    print(json.dumps({"bench": "live", "realtime_jackd": args.realtime, "runs": out, "target_met": met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
