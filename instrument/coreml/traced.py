"""What is traced for Core ML: TangoFlux's Flux transformer at fixed shapes, and its weights alone.

`TransformerForCoreML` is exactly the traced module (convert.py's docstring says what it changes
from diffusers' forward, and why); `rope_tables` and `timestep_projection` compute in fp32 what
the package takes as constants and inputs, for both the converter and the runtime;
`record_calls` captures the transformer calls a real pipeline run makes, which the parity gate and
the benchmarks replay.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from instrument.coreml import BATCH, TEXT_ROWS, shapes
from instrument.generator.errors import CheckpointError
from instrument.generator.flux import FluxTransformer, TimeProjection
from instrument.generator.loading import read_config
from instrument.generator.model import flux_transformer

MASK_BIAS = 1e4  # the additive bias on padded keys (fp16-safe; exp(-1e4) is 0 in fp16 and fp32)
FP16_MAX = 65504.0  # diffusers' Flux blocks clamp to this when running in fp16
TRANSFORMER_PREFIX = "transformer."


# -- what is traced -------------------------------------------------------------------------------
def rope_tables(transformer: FluxTransformer, text_rows: int, audio_seq_len: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoPE (cos, sin) tables the pipeline's ids give, (text_rows + L, 128) each, fp32 on the CPU.

    The pipeline's ids: every text row at position 0, latent i at (i, i, i). Computed on the CPU,
    where diffusers uses float64 frequencies.
    """
    txt_ids = torch.zeros(text_rows, 3)  # (T, 3)
    img_ids = torch.arange(audio_seq_len)[:, None].repeat(1, 3)  # (L, 3)
    ids = torch.cat([txt_ids, img_ids.float()]).cpu()  # (T + L, 3)
    with torch.no_grad():
        cos, sin = transformer.pos_embed(ids)
    return cos.float(), sin.float()


def time_projection() -> nn.Module:
    """Flux's timestep sinusoids (parameter-free; as `time_text_embed.time_proj`)."""
    return TimeProjection()  # TIME_PROJ_DIM (256) channels


def timestep_projection(timestep: torch.Tensor, time_proj: nn.Module | None = None) -> torch.Tensor:
    """The transformer's `time_proj(timestep * 1000)` in fp32: (B,) -> (B, 256), on the CPU.

    `timestep` is what the pipeline passes (t / 1000); the transformer scales it back by 1000.
    """
    proj = time_proj if time_proj is not None else time_projection()
    with torch.no_grad():
        return proj(timestep.detach().float().cpu() * 1000).float()


class TransformerForCoreML(nn.Module):
    """Exactly what is traced: `FluxTransformer.forward` at fixed shapes, its inputs as below.

    hidden_states (B, L, 64), encoder_hidden_states (B, T, D), pooled_projections (B, D),
    timestep_proj (B, 256) fp32 sinusoids, key_mask (B, T + L) 1 keep / 0 pad -> velocity (B, L, 64).
    """

    def __init__(self, transformer: FluxTransformer, audio_seq_len: int, text_rows: int = TEXT_ROWS) -> None:
        super().__init__()
        self.transformer = transformer
        cos, sin = rope_tables(transformer, text_rows, audio_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)  # (T + L, 128) fp32
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep_proj: torch.Tensor, key_mask: torch.Tensor
                ) -> torch.Tensor:
        t = self.transformer
        x = t.x_embedder(hidden_states)  # (B, L, inner)
        embed = t.time_text_embed
        temb = embed.timestep_embedder(timestep_proj.to(pooled_projections.dtype))  # (B, inner)
        temb = temb + embed.text_embedder(pooled_projections)  # (B, inner)
        ctx = t.context_embedder(encoder_hidden_states)  # (B, T, inner)
        bias = (key_mask[:, None, None, :] - 1.0) * MASK_BIAS  # (B, 1, 1, T + L): 0 keep, -1e4 pad
        kwargs = {"attention_mask": bias}
        rope = (self.rope_cos, self.rope_sin)
        for block in t.transformer_blocks:
            ctx, x = block(hidden_states=x, encoder_hidden_states=ctx, temb=temb, image_rotary_emb=rope,
                           joint_attention_kwargs=kwargs)
            ctx = ctx.clamp(-FP16_MAX, FP16_MAX)  # as diffusers' FluxTransformerBlock in fp16
        for single in t.single_transformer_blocks:
            ctx, x = single(hidden_states=x, encoder_hidden_states=ctx, temb=temb, image_rotary_emb=rope,
                            joint_attention_kwargs=kwargs)
            ctx, x = ctx.clamp(-FP16_MAX, FP16_MAX), x.clamp(-FP16_MAX, FP16_MAX)  # FluxSingleTransformerBlock
        x = t.norm_out(x, temb)  # (B, L, inner)
        return t.proj_out(x)  # (B, L, 64)


def sample_inputs(audio_seq_len: int, text_dim: int, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Inputs with the package's explicit shapes, in its input order (values only steer the trace)."""
    g = torch.Generator("cpu").manual_seed(seed)
    want = shapes(audio_seq_len, text_dim)
    key_mask = torch.ones(want["key_mask"])  # (2, T + L)
    key_mask[0, TEXT_ROWS - 1 - 40 : TEXT_ROWS - 1] = 0.0  # a padded prompt: 24 tokens + duration kept
    return OrderedDict(
        hidden_states=torch.randn(want["hidden_states"], generator=g),  # (2, L, 64)
        encoder_hidden_states=torch.randn(want["encoder_hidden_states"], generator=g),  # (2, T, D)
        pooled_projections=torch.randn(want["pooled_projections"], generator=g),  # (2, D)
        timestep_proj=timestep_projection(torch.full((BATCH,), 0.7)),  # (2, 256)
        key_mask=key_mask,
    )


class _Recorder(nn.Module):
    """Passes calls through to the transformer and keeps their inputs and outputs (on the CPU)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[dict[str, Any], torch.Tensor]] = []

    def forward(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        self.calls.append((kwargs, out[0].detach().float().cpu()))
        return out


def record_calls(pipe: Any, requests: list[Any], steps: int) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """The keyword arguments of every transformer call of a real `steps`-step denoising run of
    `requests` (`ClipRequest`s) on `pipe` (a TangoFluxPipeline), each with the transformer's output:
    what the wrapper must reproduce, and what parity checks and timings feed."""
    recorder = _Recorder(pipe.model.transformer)
    pipe.model.transformer = recorder
    try:
        pipe.denoise(requests, steps)
    finally:
        pipe.model.transformer = recorder.inner
    return recorder.calls


def pipeline_call(pipe: Any, requests: list[Any]) -> dict[str, Any]:
    """The keyword arguments of one transformer call as the pipeline makes it for `requests`."""
    return record_calls(pipe, requests, steps=1)[0][0]


# -- loading only the transformer ----------------------------------------------------------------
def load_transformer(root: Path) -> FluxTransformer:
    """The checkpoint's Flux transformer alone (fp32, CPU, eval): T5 and the VAE are not loaded."""
    config = read_config(root / "config.json")
    weights = root / "tangoflux.safetensors"
    with torch.device("meta"):
        model = flux_transformer(config)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            if key.startswith(TRANSFORMER_PREFIX):
                state[key[len(TRANSFORMER_PREFIX):]] = f.get_tensor(key).float()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{weights}: transformer keys do not fit {root / 'config.json'}: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def transformer_fingerprint(transformer: nn.Module) -> str:
    """A cheap identity of a transformer's weights: names, shapes and the first and last 4096 values
    of every tensor, as fp32. Same checkpoint -> same fingerprint, on any device."""
    h = hashlib.sha256()
    for name, tensor in sorted(transformer.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        ends = torch.cat([flat[:4096], flat[-4096:]]).float().cpu().numpy()
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
        h.update(ends.astype("<f4").tobytes())
    return h.hexdigest()
