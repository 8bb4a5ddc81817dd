"""Generation speed and numerical parity: our pipeline against the upstream `tangoflux` reference.

What it measures, per precision variant of our pipeline on one device:
  text encode (uncached, and from the conditioning cache), per-step transformer time, VAE decode,
  one clip end to end at batch 1 (T5 cached, as in a set), 4 slots batched, clip RTF
  (generation seconds / clip seconds); and the upstream package's own fp32 generate in the same run
  on identical weights. Parity: relative error and finite ratio of our final latents against
  upstream's fp32 latents for the same seed, per precision; and each VAE precision's audio against
  the fp32 VAE on the same latents.

Why: the instrument must generate as fast as the hardware allows (targets on one H100/H200,
25 steps, guidance 4.5, 645 latents: one clip <= 150 ms end to end, >= 6x faster than upstream,
4 slots batched <= 400 ms, finite ratio 1.0, bf16 latents within 2e-2 of fp32), and an fp16/bf16
speed-up is worth nothing if it changes the numbers.

Weights are random (full size by default on CUDA: the real compute cost); never a claim about sound.

    python benchmarks/bench_generate.py                      # full size on cuda, tiny on cpu
    python benchmarks/bench_generate.py --size tiny --quick  # a smoke run anywhere

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.generator.loading import load_model, resolve_checkpoint  # noqa: E402
from instrument.generator.pipeline import ClipRequest, TangoFluxPipeline  # noqa: E402
from instrument.generator.tiny import (  # noqa: E402
    FULL_CONFIG,
    build_random_checkpoint,
    build_tiny_checkpoint,
    full_t5_config,
)

PROMPT = "gentle rain falling on leaves in a quiet forest with distant thunder"
TARGETS = {"clip_ms": 150.0, "speedup": 6.0, "batch4_ms": 400.0, "finite_ratio": 1.0, "bf16_rel_err": 2e-2}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], dev: torch.device, repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """Median wall seconds of `fn` over `repeats` runs after `warmup` runs; and its last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().cpu(), b.double().cpu()
    return float((a64 - b64).norm() / b64.norm())


def finite_ratio(x: torch.Tensor) -> float:
    return float(torch.isfinite(x).float().mean())


def build(size: str, root: Path) -> Path:
    if size == "tiny":
        return build_tiny_checkpoint(root)
    return build_random_checkpoint(root, FULL_CONFIG, full_t5_config)


def make_pipe(ckpt: Path, dev: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype) -> TangoFluxPipeline:
    model, vae, tok = load_model(resolve_checkpoint(ckpt))
    return TangoFluxPipeline(model, vae, tok, device=dev, dtype=dtype, vae_dtype=vae_dtype, name=ckpt.name)


def bench_ours(name: str, pipe: TangoFluxPipeline, args: argparse.Namespace, dev: torch.device,
               compile_mode: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"variant": name, "dtype": str(pipe.dtype).replace("torch.", "")}
    t0 = time.perf_counter()
    if compile_mode is not None:
        pipe.compile(None if compile_mode == "default" else compile_mode)
    req = ClipRequest(PROMPT, seed=0, duration=args.duration, guidance=args.guidance)
    steps = args.steps

    def encode_uncached() -> Any:
        pipe.conditioner.clear_cache()
        return pipe.conditioner.encode(PROMPT)

    rec["text_encode_ms"] = timed(encode_uncached, dev, args.repeats)[0] * 1e3
    pipe.condition(PROMPT)  # warm the cache: in a set each prompt is encoded once
    rec["text_cached_ms"] = timed(lambda: pipe.condition(PROMPT), dev, args.repeats)[0] * 1e3
    # warm-up doubles as compilation for batch 1 (and is timed for the record)
    tw = time.perf_counter()
    pipe([req], steps)
    sync(dev)
    rec["first_call_s"] = time.perf_counter() - tw
    rec["compile_s"] = time.perf_counter() - t0 if compile_mode else 0.0
    denoise_s, latents = timed(lambda: pipe.denoise([req], steps), dev, args.repeats, warmup=0)
    rec["per_step_ms"] = denoise_s / steps * 1e3
    rec["vae_ms"] = timed(lambda: pipe.decode(latents, [args.duration]), dev, args.repeats)[0] * 1e3
    clip_s, clips = timed(lambda: pipe([req], steps), dev, args.repeats, warmup=0)
    rec["clip_ms"] = clip_s * 1e3
    rec["clip_rtf"] = clip_s / args.duration
    reqs4 = [ClipRequest(PROMPT, seed=s, duration=args.duration, guidance=args.guidance) for s in range(4)]
    if not args.quick:
        batch_s, _ = timed(lambda: pipe(reqs4, steps), dev, max(1, args.repeats // 2), warmup=1)
        rec["batch4_ms"] = batch_s * 1e3
        rec["batch4_clips_per_s"] = 4 / batch_s
    rec["latents"] = latents.float().cpu()
    rec["audio_finite"] = finite_ratio(torch.from_numpy(clips[0].clip.audio))
    return rec


def bench_upstream(ckpt: Path, args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    """Upstream's TangoFlux (fp32) on the same weights: inference_flow + VAE decode, as its generate()."""
    from diffusers import AutoencoderOobleck
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.generator_fixtures import import_upstream, upstream_model

    import_upstream()
    model = upstream_model(ckpt).to(dev)
    cfg = json.loads((ckpt / "config.json").read_text()).get("vae_config") or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        vae = AutoencoderOobleck(**cfg)
    vae.load_state_dict(load_file(str(ckpt / "vae.safetensors")))
    vae = vae.to(dev).eval()

    def generate() -> torch.Tensor:
        torch.manual_seed(0)
        with torch.no_grad():
            lat = model.inference_flow(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                       duration=args.duration, disable_progress=True)
            wave = vae.decode(lat.transpose(2, 1)).sample.cpu()[0]
        return lat, wave[:, : int(args.duration * 44100)]

    gen_s, (latents, _) = timed(generate, dev, args.repeats)
    out = {"variant": "upstream fp32", "dtype": "float32", "clip_ms": gen_s * 1e3, "clip_rtf": gen_s / args.duration,
           "latents": latents.float().cpu()}
    return out


def vae_precisions(ckpt: Path, latents: torch.Tensor, args: argparse.Namespace, dev: torch.device) -> list[dict[str, Any]]:
    out = []
    ref = None
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        if dev.type == "cpu" and dt != torch.float32:
            continue
        pipe = make_pipe(ckpt, dev, torch.float32, dt)
        ms, audio = timed(lambda p=pipe: p.decode(latents, [args.duration]), dev, args.repeats)
        a = torch.from_numpy(audio[0])
        if ref is None:
            ref = a
        out.append({"vae_dtype": str(dt).replace("torch.", ""), "vae_ms": ms * 1e3, "finite_ratio": finite_ratio(a),
                    "rel_err_vs_fp32": rel_err(a, ref)})
        del pipe
        gc.collect()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", choices=("auto", "full", "tiny"), default="auto")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--duration", type=float, default=10.0, help="clip seconds (645 latents are denoised always)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="fp32,bf16,compile:default,compile:reduce-overhead",
                    help="comma list of our variants: fp32, bf16, compile:MODE (bf16 + torch.compile; cuda only)")
    ap.add_argument("--no-vae-sweep", action="store_true", help="skip the VAE precision comparison")
    ap.add_argument("--vae-dtype", default="auto", help="VAE precision for our variants (auto: float16 on cuda)")
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no batch-4 run")
    ap.add_argument("--checkpoint", type=Path, help="use this checkpoint folder instead of building one")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 2
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    size = ("full" if dev.type == "cuda" else "tiny") if args.size == "auto" else args.size
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the parity reference
    torch.backends.cudnn.allow_tf32 = False

    tmp = tempfile.TemporaryDirectory(prefix="endless-bench-")
    t = time.perf_counter()
    ckpt = args.checkpoint or build(size, Path(tmp.name) / size)
    print(f"checkpoint: {size} random weights in {time.perf_counter() - t:.1f} s; device {gpu}; torch {torch.__version__}",
          flush=True)

    records: list[dict[str, Any]] = []
    variants: list[tuple[str, torch.dtype, str | None]] = []
    for v in [v for v in args.variants.split(",") if v]:
        if v == "fp32":
            variants.append(("ours fp32", torch.float32, None))
        elif dev.type != "cuda":
            continue  # bf16 and compile are for the GPU
        elif v == "bf16":
            variants.append(("ours bf16", torch.bfloat16, None))
        elif v.startswith("compile:"):
            variants.append((f"ours bf16 {v}", torch.bfloat16, v.split(":", 1)[1]))
        else:
            ap.error(f"--variants: unknown variant {v!r}")
    vae_dtype = getattr(torch, ("float16" if dev.type == "cuda" else "float32") if args.vae_dtype == "auto"
                        else args.vae_dtype)
    for name, dtype, mode in variants:
        pipe = make_pipe(ckpt, dev, dtype, vae_dtype)
        try:
            records.append(bench_ours(name, pipe, args, dev, mode))
        except Exception as e:  # a compile mode that fails here is reported, not fatal
            records.append({"variant": name, "error": repr(e)[:300]})
        print(f"  done: {name}", flush=True)
        del pipe
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    up = None
    if not args.no_upstream:
        up = bench_upstream(ckpt, args, dev)
        records.append(up)
    ref = up["latents"] if up is not None else records[0]["latents"]
    for r in records:
        if "latents" in r:
            r["latent_rel_err"] = rel_err(r["latents"], ref)
            r["finite_ratio"] = finite_ratio(r["latents"])
            del r["latents"]
    vae = [] if args.no_vae_sweep else vae_precisions(ckpt, _ref_latents(ckpt, dev, args), args, dev)

    # -- table ---------------------------------------------------------------------------------
    cols = ["variant", "text_encode_ms", "text_cached_ms", "per_step_ms", "vae_ms", "clip_ms", "clip_rtf",
            "batch4_ms", "latent_rel_err", "finite_ratio", "compile_s"]
    print(f"\n{size} TangoFlux, {args.steps} steps, guidance {args.guidance}, {args.duration:g} s clips, {gpu}")
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in records:
        if "error" in r:
            print(f"{r['variant']:>14} | FAILED: {r['error']}")
            continue
        print(" | ".join(f"{_fmt(r.get(c)):>14}" for c in cols))
    print("\nVAE precision on identical latents:")
    for v in vae:
        print(f"  {v['vae_dtype']:>9}: {v['vae_ms']:8.2f} ms  finite {v['finite_ratio']:.4f}  rel err {v['rel_err_vs_fp32']:.2e}")

    ok = [r for r in records if "error" not in r and r["variant"].startswith("ours")]
    best = min(ok, key=lambda r: r["clip_ms"])
    bf16 = [r for r in ok if r["dtype"] == "bfloat16"]
    summary: dict[str, Any] = {"best_variant": best["variant"], "clip_ms": best["clip_ms"],
                               "batch4_ms": best.get("batch4_ms")}
    met: dict[str, bool] = {"clip_ms": best["clip_ms"] <= TARGETS["clip_ms"],
                            "finite_ratio": all(r["finite_ratio"] == 1.0 for r in ok)}
    if best.get("batch4_ms") is not None:
        met["batch4_ms"] = best["batch4_ms"] <= TARGETS["batch4_ms"]
    if up is not None:
        summary["upstream_ms"] = up["clip_ms"]
        summary["speedup"] = up["clip_ms"] / best["clip_ms"]
        met["speedup"] = summary["speedup"] >= TARGETS["speedup"]
    if bf16:
        summary["bf16_rel_err"] = max(r["latent_rel_err"] for r in bf16)
        met["bf16_rel_err"] = summary["bf16_rel_err"] <= TARGETS["bf16_rel_err"]
    print("\nsummary: " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items()))
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    print(json.dumps({"bench": "generate", "device": gpu, "size": size, "steps": args.steps, "guidance": args.guidance,
                      "duration": args.duration, "torch": torch.__version__, "records": records, "vae": vae,
                      "summary": summary, "targets": TARGETS, "met": met, "target_met": all(met.values())}))
    return 0


def _ref_latents(ckpt: Path, dev: torch.device, args: argparse.Namespace) -> torch.Tensor:
    """fp32 latents to decode for the VAE precision comparison."""
    pipe = make_pipe(ckpt, dev, torch.float32, torch.float32)
    lat = pipe.denoise([ClipRequest(PROMPT, seed=0, duration=args.duration, guidance=args.guidance)],
                       2 if args.quick else args.steps)
    del pipe
    gc.collect()
    return lat


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
