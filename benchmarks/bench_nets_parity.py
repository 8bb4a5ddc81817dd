"""Our model modules against diffusers' and transformers' at full size, on the GPU, per dtype.

The tests (tests/test_nets_parity.py) hold our Flux transformer, Oobleck decoder and T5 encoder to
the libraries' in fp32 on a CPU at small sizes; this runs the full-size shapes (TangoFlux's
transformer 6 + 18 blocks, Flan-T5-large's encoder, the real Oobleck decoder) with the same random
weights on CUDA in fp32, bf16 and fp16, and reports the relative error of ours against theirs.

    python3 benchmarks/bench_nets_parity.py          # on the GPU machine (the CPU works, slowly)

The last line is JSON: {"bench": "nets_parity", "device", "runs": [{"module", "dtype", "rel_error"}],
"target_met"} with the target: fp32 <= 1e-5 (TF32 off), bf16 and fp16 <= 1e-2 (the same kernels in
the same order give 0); the decoder in fp16 is compared with diffusers' in fp32, and must be no
further off than 1.5x diffusers' own fp16 decoder.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instrument.generator.oobleck import OobleckConfig, load_decoder  # noqa: E402
from tests.generator_fixtures import flux_pair, t5_pair  # noqa: E402 (the tests' pairs: the same weights)

TARGET = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / b64.norm())


def flux(device: str) -> list[dict[str, Any]]:
    ref, ours = flux_pair(1, in_channels=64, num_layers=6, num_single_layers=18, attention_head_dim=128,
                          num_attention_heads=8, joint_attention_dim=1024, pooled_projection_dim=1024)
    g = torch.Generator().manual_seed(2)
    b, t, seq = 2, 65, 645
    mask = torch.ones(b, t + seq, dtype=torch.bool)
    mask[0, 10:t] = False  # a short prompt's padding
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ref.to(device, dtype)
        ours.to(device, dtype)
        inputs = dict(hidden_states=torch.randn(b, seq, 64, generator=g).to(device, dtype),
                      encoder_hidden_states=torch.randn(b, t, 1024, generator=g).to(device, dtype),
                      pooled_projections=torch.randn(b, 1024, generator=g).to(device, dtype),
                      timestep=torch.rand(b, generator=g).to(device), txt_ids=torch.zeros(t, 3, device=device),
                      img_ids=torch.arange(seq, device=device)[:, None].repeat(1, 3).float(),
                      joint_attention_kwargs={"attention_mask": mask[:, None, None, :].to(device)},
                      return_dict=False)
        with torch.no_grad():
            rows.append({"module": "flux transformer (6+18 blocks)", "dtype": str(dtype)[6:],
                         "rel_error": rel(ours(**inputs)[0], ref(**inputs)[0])})
    return rows


def t5(device: str) -> list[dict[str, Any]]:
    ref, ours = t5_pair(3, vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                        feed_forward_proj="gated-gelu")
    ids = torch.randint(2, 32128, (2, 64), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    ref.to(device)
    ours.to(device)  # the pipeline runs T5 in fp32 only
    with torch.no_grad():
        got = ours(ids.to(device), mask.to(device))[0]
        want = ref(input_ids=ids.to(device), attention_mask=mask.to(device))[0]
    return [{"module": "T5 encoder (Flan-T5-large shape)", "dtype": "float32", "rel_error": rel(got, want)}]


def vae_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random VAE weights that keep the decoder near-linear, as tiny.py's: a random Snake stack at
    full size otherwise amplifies any rounding difference ~100x (and so would say nothing)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        x = torch.randn(v.shape, generator=g)
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "weight_g":
            out[k] = (0.3 if ".res_unit" in k else 1.0) * (1.0 + 0.05 * x)
        elif leaf in ("alpha", "beta"):
            out[k] = 0.1 * x
        elif leaf == "bias":
            out[k] = 0.02 * x
        else:
            out[k] = x / max(1, v[0].numel()) ** 0.5
    return out


def oobleck(device: str) -> list[dict[str, Any]]:
    """fp32 against diffusers in fp32; fp16 (the pipeline's VAE dtype on CUDA): ours and diffusers'
    each against diffusers in fp32, since ours folds the weight norm once in fp32 where diffusers
    computes it in fp16 at every call (so ours should be no further off)."""
    from diffusers.models.autoencoders.autoencoder_oobleck import AutoencoderOobleck

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = AutoencoderOobleck().eval()
    state = vae_state(ref, 5)
    ref.load_state_dict(state)
    ours = load_decoder(OobleckConfig(), state, "random").eval()
    z = torch.randn(1, 64, 40, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = ref.to(device, torch.float32).decode(z.to(device)).sample.float()
        rows = [{"module": "Oobleck decoder", "dtype": "float32",
                 "rel_error": rel(ours.to(device, torch.float32).decode(z.to(device)).sample, want)}]
        theirs16 = rel(ref.to(device, torch.float16).decode(z.to(device, torch.float16)).sample, want)
        ours16 = rel(ours.to(device, torch.float16).decode(z.to(device, torch.float16)).sample, want)
    rows.append({"module": "Oobleck decoder (vs fp32)", "dtype": "float16", "rel_error": ours16,
                 "diffusers_rel_error": theirs16})
    return rows


def main() -> int:
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would round both sides
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    runs = flux(device) + t5(device) + oobleck(device)
    print(f"{'module':<34} {'dtype':>9} {'rel error':>10}   ({name})")
    for r in runs:
        theirs = f"   diffusers' own: {r['diffusers_rel_error']:.2e}" if "diffusers_rel_error" in r else ""
        print(f"{r['module']:<34} {r['dtype']:>9} {r['rel_error']:>10.2e}{theirs}")
    met = all(r["rel_error"] <= max(TARGET[r["dtype"]], 1.5 * r.get("diffusers_rel_error", 0.0)) for r in runs)
    print(json.dumps({"bench": "nets_parity", "device": name, "runs": runs, "target_met": met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
