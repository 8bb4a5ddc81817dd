"""Soak: does a long set stay clean, its memory flat and its recording whole?

Two runs of the real CLI, as a user would run them, with the same control script (8 slots, one
slot's prompt changed every 20 s, round robin over a list of prompts):

  live     `endless play --model tiny --slots 8 --script S --record FILE --seconds N --stats F` on a
           private `jackd -d dummy` (256 frames, 44.1 kHz, no realtime priority, as in CI), N = 600
  offline  `endless render --model tiny --slots 8 --script S --seconds M --out FILE`, M = 7200 (two
           hours of audio, faster than real time)

Figures: underflows (PortAudio's output-underflow flags, from `--stats`, with their times) and jackd's
xruns by cause, from its verbose log: the dummy driver's own (its timer late: jackd's thread, which
runs without realtime priority here, waited for a CPU) and a client's (a process callback not
finished in its period: ours, if any); an underflow within 0.25 s of a driver xrun is that xrun
reaching every client (`underflows_at_driver_xruns`), the rest are the instrument's
(`underflows_ours`); starvations; resident memory (VmRSS from
/proc) of the main process and of the generator worker (its largest child) after warm-up (a third
of the run, at most 160 s: until the script has changed every slot's prompt once; `--warmup`) and at the end (the last sample while the worker ran), and
their growth; the recording's length against the run's; the archive's size (every generated clip
is archived into the run's own folder, capped at ARCHIVE_GB: the figure shows the cap holding).

Targets: 0 underflows of the instrument's own, RSS growth <= 5 % after warm-up, the recording complete
(within a block).

    .venv/bin/python benchmarks/soak.py                                  # 10 min live + 2 h offline
    .venv/bin/python benchmarks/soak.py --seconds 60 --offline-seconds 120   # the make-test version

The last line of stdout is JSON: {"bench": "soak", "runs": [{"mode", "seconds", "underflows",
"starvations", "rss_start_mb", "rss_end_mb", "recorded_s", ...}, ...], "target_met": ...}.
`--baseline SECONDS` adds a live run with no model (`--demo`) and an idle-class busy loop on every CPU: the
xruns a non-realtime jackd gets on this machine under full load, whatever the instrument does.
Both modes stream their audio to the file as they go (`render` writes block by block), so the
memory target holds for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import soundfile as sf
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
SLOTS = 8
EVERY_S = 20.0
ARCHIVE_GB = 1.0  # each run archives every clip into its own folder, capped here
PROMPTS = ("rain on a tin roof", "wind through pine trees", "distant thunder rolling", "a creek over stones",
           "night insects in a field", "waves on a pebble beach", "a crackling campfire", "birdsong at dawn",
           "city traffic far away", "a heavy storm:0.6 | soft rain:0.4")
WROTE = re.compile(r"wrote .*?: .*? (\d+) starvations")
XRUN = re.compile(r"xrun", re.IGNORECASE)


def write_script(path: Path, seconds: float) -> int:
    """One prompt change every EVERY_S seconds, slot after slot; returns the number of events."""
    lines = []
    t, k = EVERY_S, 0
    while t < seconds:
        lines.append(json.dumps({"t": t, "address": f"/endless/slot/{k % SLOTS + 1}/prompt",
                                 "args": [PROMPTS[k % len(PROMPTS)]]}))
        t, k = t + EVERY_S, k + 1
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident memory (VmRSS, or one of its parts: RssAnon, RssFile, RssShmem) in MB."""
    m = re.search(rf"{field}:\s+(\d+) kB", read_or_empty(f"/proc/{pid}/status"))
    return int(m.group(1)) / 1024 if m else None


class Memory(threading.Thread):
    """Samples the RSS of a process and of its children (the generator worker) every `every` s."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float, float]] = []  # (t, main MB, worker MB)
        self.parts: list[tuple[float, float, float]] = []  # the main process's (RssAnon, RssFile, RssShmem) MB
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            main = rss_mb(self.pid)
            if main is None:
                return
            worker = max((r for c in children(self.pid) if (r := rss_mb(c)) is not None), default=0.0)
            self.samples.append((time.monotonic() - self.t0, main, worker))
            anon, file, shmem = (rss_mb(self.pid, f) or 0.0 for f in ("RssAnon", "RssFile", "RssShmem"))
            self.parts.append((anon, file, shmem))

    def figures(self, warmup: float) -> dict[str, Any]:
        """RSS after warm-up (the first sample at or after `warmup` s) and at the end (the last sample
        while the worker still ran: not the shutdown), and their growth."""
        top = max((s[2] for s in self.samples), default=0.0)
        after = [k for k, s in enumerate(self.samples) if s[2] >= top / 2 and s[0] >= warmup]  # while it ran
        if len(after) < 2:
            return {"rss_start_mb": None, "rss_end_mb": None, "worker_rss_start_mb": None,
                    "worker_rss_end_mb": None, "rss_growth_pct": None, "worker_rss_growth_pct": None}
        (_, m0, w0), (_, m1, w1) = self.samples[after[0]], self.samples[after[-1]]
        (a0, f0, s0), (a1, f1, s1) = self.parts[after[0]], self.parts[after[-1]]
        minutes = [s for k, s in enumerate(self.samples) if k == 0 or int(s[0] // 60) != int(self.samples[k - 1][0] // 60)]
        return {"rss_anon_file_shmem_start_mb": [round(a0, 1), round(f0, 1), round(s0, 1)],
                "rss_anon_file_shmem_end_mb": [round(a1, 1), round(f1, 1), round(s1, 1)],
                "rss_by_minute_mb": [round(s[1], 1) for s in minutes],
                "rss_start_mb": round(m0, 1), "rss_end_mb": round(m1, 1), "worker_rss_start_mb": round(w0, 1),
                "worker_rss_end_mb": round(w1, 1), "rss_growth_pct": round(100 * (m1 - m0) / m0, 2),
                "worker_rss_growth_pct": round(100 * (w1 - w0) / w0, 2) if w0 else None,
                "rss_peak_mb": round(max(self.samples[k][1] for k in after), 1)}


def warmup_of(seconds: float, warmup: float | None = None) -> float:
    """Until the script has changed every slot's prompt once (SLOTS x EVERY_S = 160 s: by then every
    slot holds its queue of clips and its archived stand-in), at most a third of the run."""
    return min(SLOTS * EVERY_S, seconds / 3) if warmup is None else warmup


DRIVER_XRUN = re.compile(r"JackTimedDriver::Process XRun")  # the dummy driver's own timer was late
CLIENT_XRUN = re.compile(r"JackEngine::XRun: client = (.*) was not finished")  # a client was late
MATCH_S = 0.25  # an underflow this close to a driver xrun was that xrun (PortAudio flags the next callback)


class LoggedJack(JackServer):
    """The benchmarks' JACK server, verbose (`-v`: jackd names the cause of each xrun), its output
    kept in `log` and every xrun line time-stamped (CLOCK_MONOTONIC) as it arrives: the dummy
    driver's own xruns (its timer late: jackd's thread waited for a CPU) told from a client's (a
    process callback not finished in its period)."""

    def __init__(self, log: Path) -> None:
        super().__init__(BLOCK, RATE, "soak")
        self.cmd = [self.cmd[0], "-v", *self.cmd[1:]]
        self.log = log
        self.xrun_lines: list[tuple[int, str]] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> LoggedJack:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        subprocess.run(["jack_wait", "-s", self.name, "-w", "-t", "10"], env=self.env, check=True,
                       capture_output=True, timeout=20)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log, "wb") as f:
            for raw in self.proc.stdout:
                f.write(raw)
                line = raw.decode(errors="replace")
                if XRUN.search(line):
                    self.xrun_lines.append((time.monotonic_ns(), line.strip()))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._reader is not None:
            self._reader.join(5)

    def xruns(self) -> dict[str, Any]:
        """jackd's xruns by cause: when each came (ns), and the late clients' names."""
        driver = [t for t, ln in self.xrun_lines if DRIVER_XRUN.search(ln)]
        clients = [(t, m.group(1)) for t, ln in self.xrun_lines if (m := CLIENT_XRUN.search(ln))]
        return {"driver": driver, "client": [t for t, _ in clients], "clients": sorted({c for _, c in clients})}


def split_underflows(underflow_ns: list[int], driver_ns: list[int]) -> tuple[int, int]:
    """(underflows within MATCH_S of one of the driver's own xruns, the rest): the first are the
    server's lateness reaching every client; the rest are the instrument's."""
    at_driver = sum(1 for u in underflow_ns if any(abs(u - d) <= MATCH_S * 1e9 for d in driver_ns))
    return at_driver, len(underflow_ns) - at_driver


def archive_flags(where: Path) -> list[str]:
    """Every generated clip archived, as in a set, into the run's own folder (never the user's), at
    most ARCHIVE_GB: the figure shows the archive staying within its limit."""
    return ["--archive", str(where), "--archive-max-gb", str(ARCHIVE_GB)]


def dir_mb(where: Path) -> float | None:
    if not where.exists():
        return None
    return round(sum(f.stat().st_size for f in where.rglob("*") if f.is_file()) / 1e6, 1)


BURN = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass\n"


def run_live(seconds: float, work: Path, script: Path, warmup: float | None = None,
             baseline: bool = False) -> dict[str, Any]:
    """`baseline`: the same set with no model (`--demo`: built-in textures, nothing generated, so no
    prompt script) and one
    busy loop per CPU in the idle class, as the generator's worker is: the xruns this machine's
    scheduling gives a non-realtime jackd under full load, whatever the instrument does."""
    rec: dict[str, Any] = {"mode": "live-baseline" if baseline else "live", "seconds": seconds}
    mode = rec["mode"]
    stats, take, archive = work / f"{mode}-stats.json", work / f"{mode}.wav", work / f"archive_{mode}"
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(os.cpu_count() or 1)] if baseline else []
    model = ["--demo"] if baseline else ["--model", "tiny"]
    with LoggedJack(work / f"{mode}-jackd.log") as server, contextlib.ExitStack() as stack:
        for b in burners:
            stack.callback(b.kill)
        steer = [] if baseline else ["--script", str(script)]  # prompts need a generator
        cmd = [str(ENDLESS), "play", *model, "--slots", str(SLOTS), *steer,
               "--record", str(take), "--seconds", str(seconds), "--device", "system", "--latency", "low",
               "--osc-port", "0", "--stats", str(stats), *([] if baseline else archive_flags(archive))]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=work)
        mem = Memory(proc.pid)
        mem.start()
        out, err = finish(proc, seconds + 240, rec)
        mem.stop.set()
        mem.join(5)
        rec["wall_s"] = round(time.monotonic() - t0, 1)
    xr = server.xruns()
    rec |= {"jackd_xruns": len(xr["driver"]) + len(xr["client"]), "driver_xruns": len(xr["driver"]),
            "client_xruns": len(xr["client"]), "late_clients": xr["clients"],
            "client_xruns_at_s": [round((t - t0 * 1e9) / 1e9, 2) for t in xr["client"]]}
    rec |= mem.figures(warmup_of(seconds, warmup))
    if proc.returncode != 0 and "error" not in rec:
        rec["error"] = f"exit {proc.returncode}: " + (err.strip().splitlines() or ["no output"])[-1]
    if stats.exists():
        st = json.loads(stats.read_text())
        at_driver, ours = split_underflows(list(st["underflow_times_ns"]), xr["driver"])
        rec |= {"underflows_at_driver_xruns": at_driver, "underflows_ours": ours}
        rec |= {"played_s": round(st["seconds"], 3), "underflows": st["underflows"],
                "starvations": st["starvations"], "clips_dropped": st["clips_dropped"],
                "recorder_overflows": st["recorder_overflows"], "callback_p99_us": st["callback_p99_us"]}
    rec["recorded_s"] = round(sf.info(str(take)).duration, 3) if take.exists() else None
    rec["archive_mb"] = dir_mb(archive)
    rec["load_avg_1m"] = round(os.getloadavg()[0], 2)
    said = [ln for ln in out.strip().splitlines() if not ln.startswith("Jack: ")]  # libjack echoes a verbose server
    rec["tail"] = (said or [""])[-1][:300]
    return rec


def run_offline(seconds: float, work: Path, script: Path, warmup: float | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"mode": "offline", "seconds": seconds, "underflows": 0,  # no device: none possible
                           "underflows_ours": 0}
    out_file = work / "offline.wav"
    cmd = [str(ENDLESS), "render", "--model", "tiny", "--slots", str(SLOTS), "--script", str(script),
           "--seconds", str(seconds), "--out", str(out_file), *archive_flags(work / "archive_offline")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
    mem = Memory(proc.pid)
    mem.start()
    out, err = finish(proc, max(600.0, seconds * 2), rec)
    mem.stop.set()
    mem.join(5)
    wall = time.monotonic() - t0
    rec["wall_s"] = round(wall, 1)
    rec["x_real_time"] = round(seconds / wall, 2)
    rec |= mem.figures(warmup_of(wall, warmup))
    if proc.returncode != 0 and "error" not in rec:
        rec["error"] = f"exit {proc.returncode}: " + (err.strip().splitlines() or ["no output"])[-1]
    m = WROTE.search(out)
    rec["starvations"] = int(m.group(1)) if m else None
    rec["recorded_s"] = round(sf.info(str(out_file)).duration, 3) if out_file.exists() else None
    rec["archive_mb"] = dir_mb(work / "archive_offline")
    return rec


def table(runs: list[dict[str, Any]]) -> str:
    cols = ("mode", "seconds", "underflows", "underflows_ours", "driver_xruns", "client_xruns", "starvations",
            "rss_start_mb", "rss_end_mb",
            "rss_growth_pct", "worker_rss_start_mb", "worker_rss_end_mb", "recorded_s", "archive_mb", "wall_s")
    rows = [" ".join(f"{c:>12}" for c in cols)]
    for r in runs:
        rows.append(" ".join(f"{'-' if r.get(c) is None else r[c]!s:>12}" for c in cols)
                    + (f"  FAILED: {r['error']}" if "error" in r else ""))
    return "\n".join(rows)


def met(r: dict[str, Any]) -> bool:
    """The targets: no error, 0 underflows of the instrument's own (those not at one of the dummy
    driver's own xruns), RSS growth <= 5 % after warm-up, recording complete."""
    complete = r.get("recorded_s") is not None and abs(r["recorded_s"] - r["seconds"]) <= BLOCK / RATE
    if r["mode"] == "live-baseline":
        return "error" not in r  # a measure of the machine, not of the instrument
    growth_ok = r.get("rss_growth_pct") is not None and r["rss_growth_pct"] <= 5.0
    return "error" not in r and r.get("underflows_ours") == 0 and growth_ok and complete


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600.0, help="seconds of live play (default 600; 0: skip)")
    ap.add_argument("--offline-seconds", type=float, default=7200.0,
                    help="seconds of offline render (default 7200; 0: skip)")
    ap.add_argument("--baseline", type=float, default=0.0, metavar="SECONDS",
                    help="also a live run this long with no model and idle-class busy loops on every CPU "
                         "(see run_live; default 0: none)")
    ap.add_argument("--warmup", type=float,
                    help="seconds of each run before its RSS counts as warm (default: until every slot has had a prompt change, 160 s, at most a third of the run)")
    args = ap.parse_args(argv)
    if not ENDLESS.exists():
        raise SystemExit(f"{ENDLESS} not found: run `make test` (or `make play`) first, which builds the venv")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="soak_") as d:
        work = Path(d)
        script = work / "soak.jsonl"
        n = write_script(script, max(args.seconds, args.offline_seconds))
        print(f"script: {n} prompt changes, one every {EVERY_S:g} s over {SLOTS} slots", file=sys.stderr)
        if args.seconds > 0:
            runs.append(run_live(args.seconds, work, script, args.warmup))
            print(f"live: {runs[-1]}", file=sys.stderr, flush=True)
        if args.baseline > 0:
            runs.append(run_live(args.baseline, work, script, args.warmup, baseline=True))
            print(f"live-baseline: {runs[-1]}", file=sys.stderr, flush=True)
        if args.offline_seconds > 0:
            runs.append(run_offline(args.offline_seconds, work, script, args.warmup))
            print(f"offline: {runs[-1]}", file=sys.stderr, flush=True)
    print(table(runs))
    print(json.dumps({"bench": "soak", "runs": runs, "target_met": all(met(r) for r in runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
