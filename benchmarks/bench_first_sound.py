"""First sound: how soon does a start make sound, and how soon does the first generated clip come?

Runs of the real CLI, as a user starts it:

  cpu   `endless play --model tiny` on a private `jackd -d dummy` (256 frames, no realtime), the
        worker behind a deliberate load delay ($ENDLESS_LOAD_DELAY, default 20 s: a model that
        takes long to load, as the full-size one does on a CPU), with an archive of clips
        (`--archive DIR`, populated here) and without one (`--no-archive`). first_sound_s: from
        just before the process starts to the first output sample above -60 dBFS (the recording
        taps the output from its first frame; its first frame left the device at the stream's
        first callback, `--stats` first_callback_ns, CLOCK_MONOTONIC, the same clock as here);
        first_clip_s: to the first generated clip's arrival (`--stats` first_clip_ns).
  cuda  (where torch sees a GPU) `endless render --model DIR --backend cuda --seconds 25 --length 10
        --stats FILE` on the full-size architecture with random weights, first with an empty compile
        cache (cold), then again with the cache the first start left (warm). first_clip_s: from just
        before the process starts to the first generated clip's arrival (`--stats` first_clip_ns; the
        worker makes its first batch before compiling); full_speed_s: to the end of the compile
        (`--stats` compiled_ns). 25 s of 10 s clips outlasts the compile, so the cold run leaves the
        cache the warm one reads. No audio device there: first_sound_s is null.

Targets: first sound <= 2 s with an archive; a warm CUDA start to the first generated clip <= 10 s.

    .venv/bin/python benchmarks/bench_first_sound.py               # cpu runs (and cuda where present)
    python3 benchmarks/bench_first_sound.py --cuda-only            # on the GPU machine

The last line of stdout is JSON: {"bench": "first_sound", "runs": [{"backend", "archive", "cache",
"first_sound_s", "first_clip_s"}, ...], "target_met": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _jack import JackServer, finish  # noqa: E402

PROMPTS = ("rain on a tin roof", "heavy rain and thunder", "wind in pine trees", "waves on a pebble beach",
           "birds at dawn", "a crackling fire", "city traffic at night", "a distant train")
SILENT_DB = -60.0
PHASES = re.compile(r"compile cache|generator|ready|loaded|took|import", re.I)  # the render's lines worth keeping
RATE = 44100


def endless_cmd() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "endless"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "instrument.cli"]


def populate(root: Path, clips: int = 24, seconds: float = 6.0) -> None:
    """An archive of `clips` clips (noise shaped differently per prompt), as a past set would leave."""
    from instrument.archive.embed import embed_prompt, load_embedder
    from instrument.archive.store import Archive
    from instrument.clips import Clip, ClipInfo

    emb = load_embedder(None)
    arc = Archive(root)
    rng = np.random.default_rng(7)
    try:
        for i in range(clips):
            prompt = PROMPTS[i % len(PROMPTS)]
            noise = rng.standard_normal((int(seconds * RATE), 2)).astype(np.float32) * 0.1
            clip = Clip(np.ascontiguousarray(noise), RATE, ClipInfo("generator", prompt, i, "tiny", 0.1, 25, 4.5))
            arc.add(clip, embedding=embed_prompt(emb, prompt), embedder=emb.id)
    finally:
        arc.close()


def first_loud_frame(path: Path) -> int | None:
    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    loud = np.flatnonzero(np.abs(audio).max(axis=1) > 10 ** (SILENT_DB / 20))
    return int(loud[0]) if loud.size else None


def run_cpu(work: Path, archive: Path | None, seconds: float, delay: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"backend": "cpu", "model": "tiny", "archive": archive is not None, "cache": None,
                           "load_delay_s": delay}
    stats, take = work / "stats.json", work / f"take_{archive is not None}.wav"
    for p in (stats, take):
        p.unlink(missing_ok=True)
    where = ["--archive", str(archive)] if archive is not None else ["--no-archive"]
    cmd = [*endless_cmd(), "play", "--model", "tiny", "--slots", "4", "--steps", "4", "--length", "4",
           "--seconds", str(seconds), "--record", str(take), "--stats", str(stats), "--device", "system",
           "--osc-port", "0", *where]
    with JackServer(256, prefix="first") as server:
        env = dict(server.env, ENDLESS_LOAD_DELAY=str(delay))
        t0 = time.monotonic_ns()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
        out, err = finish(proc, seconds + delay + 240, rec)
    if proc.returncode != 0 and "error" not in rec:
        rec["error"] = f"exit {proc.returncode}: " + (err.strip().splitlines() or ["no output"])[-1]
    if stats.exists() and take.exists():
        st = json.loads(stats.read_text())
        stream = (st["first_callback_ns"] - t0) / 1e9
        loud = first_loud_frame(take)
        rec["stream_start_s"] = round(stream, 3)
        rec["first_sound_s"] = None if loud is None else round(stream + loud / RATE, 3)
        rec["first_clip_s"] = round((st["first_clip_ns"] - t0) / 1e9, 3) if st.get("first_clip_ns") else None
        rec["underflows"] = st["underflows"]
    return rec


def run_cuda(work: Path, model_dir: Path, cache: Path, label: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"backend": "cuda", "model": "full-size random", "archive": False, "cache": label,
                           "first_sound_s": None}
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    stats = work / f"cuda_{label}.json"
    cmd = [*endless_cmd(), "render", "--model-dir", str(model_dir), "--backend", "cuda", "--slots", "1",
           "--seconds", "25", "--length", "10", "--out", str(work / f"cuda_{label}.wav"), "--no-archive",
           "--stats", str(stats)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=work)
    timeline: list[str] = []  # when each of the render's log lines came: where the start-up goes

    def read() -> None:
        assert proc.stderr is not None
        for ln in proc.stderr:
            if PHASES.search(ln) and len(timeline) < 20:
                timeline.append(f"{time.monotonic() - t0:6.1f} s {ln.strip()[:160]}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(900)
    except subprocess.TimeoutExpired:
        proc.kill()
        rec["error"] = "timed out"
    reader.join(10)
    rec["wall_s"] = round(time.monotonic() - t0, 2)
    rec["timeline"] = timeline
    if proc.returncode != 0:
        rec["error"] = f"exit {proc.returncode}: " + (timeline[-1] if timeline else "no output")
    try:
        st = json.loads(stats.read_text())
    except (OSError, ValueError):
        st = {}
    start_ns = int(t0 * 1e9)
    rec["first_clip_s"] = round((st["first_clip_ns"] - start_ns) / 1e9, 2) if st.get("first_clip_ns") else None
    rec["full_speed_s"] = round((st["compiled_ns"] - start_ns) / 1e9, 2) if st.get("compiled_ns") else None
    rec["cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6, 1)
    return rec


PHASES_CODE = """
import json, sys, time
t = time.perf_counter(); marks = {}
import torch; marks["import torch"] = time.perf_counter() - t
from instrument.generator.compile_cache import compile_and_warm
from instrument.generator.loading import load_pipeline
from instrument.generator.pipeline import ClipRequest
pipe = load_pipeline(sys.argv[1], device="cuda", dtype=torch.bfloat16, vae_dtype=torch.float16)
torch.cuda.synchronize(); marks["the model loaded"] = time.perf_counter() - t
pipe([ClipRequest("rain", seed=1, duration=10.0)], steps=25); torch.cuda.synchronize()
marks["first 10 s clip (eager)"] = time.perf_counter() - t
compile_and_warm(pipe, [1, 4]); torch.cuda.synchronize(); marks["compiled, sizes 1 and 4"] = time.perf_counter() - t
pipe([ClipRequest("rain", seed=2, duration=10.0)], steps=25); torch.cuda.synchronize()
marks["a 10 s clip compiled"] = time.perf_counter() - t
print(json.dumps(marks))
"""


def phases(model_dir: Path, cache: Path) -> dict[str, float]:
    """Where a warm start's time goes, in one fresh process (cumulative seconds at each mark)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    proc = subprocess.run([sys.executable, "-c", PHASES_CODE, str(model_dir)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}  # type: ignore[dict-item]
    return {k: round(v, 2) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def cuda_runs(work: Path) -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    from instrument.generator.tiny import FULL_CONFIG, build_random_checkpoint, full_t5_config

    model_dir = build_random_checkpoint(work / "ckpt", FULL_CONFIG, full_t5_config)
    cache = work / "cache"
    cache.mkdir()
    runs = [run_cuda(work, model_dir, cache, "cold"), run_cuda(work, model_dir, cache, "warm")]
    runs[-1]["warm_phases_s"] = phases(model_dir, cache)  # in-process: imports, load, compile, a clip
    print(f"warm start, cumulative seconds in one process: {runs[-1]['warm_phases_s']}", file=sys.stderr)
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    cols = ("backend", "archive", "cache", "first_sound_s", "first_clip_s", "full_speed_s", "underflows")
    rows = [" ".join(f"{c:>14}" for c in cols)]
    for r in runs:
        rows.append(" ".join(f"{'-' if r.get(c) is None else r[c]!s:>14}" for c in cols)
                    + (f"  FAILED: {r['error']}" if "error" in r else ""))
    return "\n".join(rows)


def met(runs: list[dict[str, Any]]) -> bool:
    ok = all("error" not in r for r in runs)
    for r in runs:
        if r["backend"] == "cpu" and r["archive"]:
            ok = ok and r.get("first_sound_s") is not None and r["first_sound_s"] <= 2.0
        if r["backend"] == "cuda" and r["cache"] == "warm":
            ok = ok and r.get("first_clip_s") is not None and r["first_clip_s"] <= 10.0
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=40.0, help="seconds each cpu run plays (default 40)")
    ap.add_argument("--load-delay", type=float, default=20.0, help="the cpu runs' model load delay (default 20 s)")
    ap.add_argument("--cuda-only", action="store_true", help="only the cuda runs (on the GPU machine)")
    ap.add_argument("--no-cuda", action="store_true", help="skip the cuda runs")
    args = ap.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="first_sound_") as d:
        work = Path(d)
        if not args.cuda_only:
            if shutil.which("jackd") is None:
                raise SystemExit("jackd not found: apt-get install jackd2 (make test installs it)")
            archive = work / "archive"
            populate(archive)
            for arc in (archive, None):
                runs.append(run_cpu(work, arc, args.seconds, args.load_delay))
                print(f"{runs[-1]}", file=sys.stderr, flush=True)
        if not args.no_cuda:
            runs += cuda_runs(work)
    print(table(runs))
    print(json.dumps({"bench": "first_sound", "runs": runs, "target_met": met(runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
