"""Core ML against MPS on a Mac: parity and speed of the converted transformer, in one command.

What it measures, for the MPS fp32 path and for the Core ML package under each compute-unit setting
(ALL, CPU_AND_GPU, CPU_AND_NE by default), all in one run on one Mac:
  - parity on the gate's fixed inputs (the transformer calls of a short real denoising run: two
    clips, four rows, three steps) against the PyTorch fp32 transformer on MPS: finite ratio first,
    then relative error, PSNR and max abs error, with the gate's named thresholds;
  - the transformer alone: median seconds per denoising step at batch 2 (one clip with CFG);
  - one clip end to end (T5 cached as in a set, 25 steps, guidance 4.5, 18 s decoded by the VAE on
    MPS fp32): seconds and RTF (generation seconds / clip seconds);
  - drift: relative error of the Core ML clip's final latents against the MPS clip's (same seed),
    and the finite ratio of its audio;
  - Core ML load time (the first load compiles the package; later loads reuse the .mlmodelc).

Why: TangoFlux Endless reports 18 s clips at 25 steps in 5.06 s (RTF 0.281) through Core ML on an
M2 Ultra against 8.05 s on MPS fp32, with parity resting on one random forward pass. This puts our
numbers for the same question, and the parity behind them, on the page with the command that made
them (docs/coreml.md says where to publish them).

    python benchmarks/bench_coreml_mac.py                          # TangoFlux (endless fetch-model first)
    python benchmarks/bench_coreml_mac.py --model tiny --quick     # a smoke run of the whole path
    python benchmarks/bench_coreml_mac.py --random-full            # full size, random weights: speed only

Converts the package first when there is no up-to-date one (minutes, once). Prints a table, then one
line of JSON. Off macOS it prints why it cannot run and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.coreml import COMPUTE_UNITS, TARGETS, default_target, unavailable_reason  # noqa: E402

PROMPT = "gentle rain falling on leaves in a quiet forest with distant thunder"
CLIP_SECONDS = 18.0  # as TangoFlux Endless's published numbers
STEPS = 25
GUIDANCE = 4.5


def _mac() -> str:
    try:
        chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        chip = platform.machine()
    return f"{chip}, macOS {platform.mac_ver()[0]}"


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """Median wall seconds of `fn` over `repeats` runs after `warmup` runs; and its last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tangoflux", help="tangoflux (default), tiny, or a checkpoint folder")
    ap.add_argument("--random-full", action="store_true", help="full-size random weights (speed only)")
    ap.add_argument("--package", type=Path, help="a converted package (default: convert or reuse the cached one)")
    ap.add_argument("--target", choices=TARGETS, help="package target (default: the newest this Mac runs)")
    ap.add_argument("--units", default="ALL,CPU_AND_GPU,CPU_AND_NE", help="compute-unit settings, comma-separated")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 4 steps, ALL only")
    args = ap.parse_args()
    args.target = args.target or default_target()
    if args.quick:
        args.repeats, args.steps, args.units = 1, 4, "ALL"
    units = [u.strip() for u in args.units.split(",") if u.strip()]
    bad = [u for u in units if u not in COMPUTE_UNITS]
    if bad:
        ap.error(f"--units {','.join(bad)}: allowed {', '.join(COMPUTE_UNITS)}")

    why_not = unavailable_reason()
    if why_not is None:
        import torch

        if not torch.backends.mps.is_available():
            why_not = "PyTorch sees no MPS device (T5, the VAE and the reference transformer run there)"
    if why_not is not None:
        print(f"bench_coreml_mac: {why_not}; nothing measured")
        print(json.dumps({"bench": "coreml_mac", "skipped": why_not}))
        return 2

    import torch

    from instrument.coreml.convert import convert_main, convert_transformer
    from instrument.coreml.runtime import (
        MAX_REL_ERROR,
        MIN_FINITE_RATIO,
        MIN_PSNR_DB,
        make_coreml_transformer,
        parity_gate,
    )
    from instrument.coreml.traced import pipeline_call
    from instrument.generator.backends import choose_model
    from instrument.generator.loading import load_pipeline
    from instrument.generator.pipeline import ClipRequest
    from instrument.generator.tiny import FULL_CONFIG, build_random_checkpoint, full_t5_config

    def sync() -> None:
        torch.mps.synchronize()

    tmp = tempfile.TemporaryDirectory(prefix="bench-coreml-")
    t0 = time.perf_counter()
    if args.random_full:
        model = str(build_random_checkpoint(Path(tmp.name) / "full", FULL_CONFIG, full_t5_config))
        package = args.package or convert_transformer(Path(model), Path(tmp.name) / "full.mlpackage",
                                                      target=args.target, source_name="random-full")
    else:
        model = choose_model(args.model).model  # "tiny", our copy of TangoFlux, the hub id, or a folder
        package = args.package or convert_main(args.model, None, args.target, force=False)
    prepare_s = time.perf_counter() - t0
    pipe = load_pipeline(model, device="mps")
    reference = pipe.model.transformer
    request = ClipRequest(PROMPT, seed=0, duration=CLIP_SECONDS, guidance=GUIDANCE)
    pipe.condition(PROMPT)  # T5 cached, as in a set

    step_kw = pipeline_call(pipe, [request])  # one batch-2 transformer call as the pipeline makes it

    def step() -> Any:
        return pipe.model.transformer(**step_kw)

    def clip() -> Any:
        return pipe([request], steps=args.steps)[0]

    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        step_s, _ = timed(step, sync, max(args.repeats, 3))
        clip_s, mps_clip = timed(clip, sync, args.repeats)
    rows.append({"path": "mps fp32", "units": "-", "load_s": None, "finite": 1.0, "rel_err": 0.0, "psnr_db": None,
                 "step_ms": 1e3 * step_s, "clip_s": clip_s, "rtf": clip_s / CLIP_SECONDS, "drift": 0.0, "gate": "-"})

    for u in units:
        t = time.perf_counter()
        module = make_coreml_transformer(package, u, pipe, gate=False)
        load_s = time.perf_counter() - t
        if module is None:
            rows.append({"path": "coreml", "units": u, "error": "did not load (see the log above)"})
            continue
        gate = parity_gate(module, pipe)
        pipe.model.transformer = module
        try:
            with torch.no_grad():
                step_s, _ = timed(step, sync, max(args.repeats, 3))
                clip_s, c = timed(clip, sync, args.repeats)
        finally:
            pipe.model.transformer = reference
        drift = float((c.latents.double() - mps_clip.latents.double()).norm() / mps_clip.latents.double().norm())
        audio_finite = float(torch.from_numpy(c.clip.audio).isfinite().float().mean())
        rows.append({"path": "coreml", "units": u, "load_s": load_s, "finite": gate.finite_ratio,
                     "rel_err": gate.rel_error, "psnr_db": gate.psnr_db, "max_abs": gate.max_abs,
                     "step_ms": 1e3 * step_s, "clip_s": clip_s, "rtf": clip_s / CLIP_SECONDS, "drift": drift,
                     "audio_finite": audio_finite, "gate": "pass" if gate.passed else f"FAIL ({gate.reason})"})
        del module

    mac = _mac()
    print(f"\n{mac}; model {model}; package {package} ({args.target}); {args.steps} steps, guidance {GUIDANCE}, "
          f"{CLIP_SECONDS:g} s clips; prepared in {prepare_s:.0f} s")
    print(f"gate thresholds: finite ratio >= {MIN_FINITE_RATIO}, relative error <= {MAX_REL_ERROR:g}, "
          f"PSNR >= {MIN_PSNR_DB:g} dB\n")
    head = f"{'path':10} {'units':11} {'load s':>7} {'finite':>8} {'rel err':>9} {'PSNR dB':>8} {'step ms':>8} " \
           f"{'clip s':>7} {'RTF':>6} {'drift':>9}  gate"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['path']:10} {r['units']:11} {r['error']}")
            continue
        load = f"{r['load_s']:.1f}" if r["load_s"] is not None else "-"
        psnr = f"{r['psnr_db']:.1f}" if r["psnr_db"] is not None else "-"
        print(f"{r['path']:10} {r['units']:11} {load:>7} {r['finite']:>8.6f} {r['rel_err']:>9.2e} {psnr:>8} "
              f"{r['step_ms']:>8.1f} {r['clip_s']:>7.2f} {r['rtf']:>6.3f} {r['drift']:>9.2e}  {r['gate']}")
    import coremltools

    print(json.dumps({"bench": "coreml_mac", "mac": mac, "model": model, "target": args.target,
                      "steps": args.steps, "guidance": GUIDANCE, "clip_seconds": CLIP_SECONDS,
                      "versions": {"torch": torch.__version__, "coremltools": coremltools.__version__},
                      "thresholds": {"finite_ratio": MIN_FINITE_RATIO, "rel_error": MAX_REL_ERROR,
                                     "psnr_db": MIN_PSNR_DB},
                      "rows": rows}))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
