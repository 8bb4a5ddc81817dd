"""TangoFlux's modules and checkpoint config: what a checkpoint holds, under upstream's names.

`TangoFluxConfig` is the checkpoint's `config.json`; `TangoFluxModel` holds T5, the pooled-text
projection, the duration embedder and the Flux transformer, so `tangoflux.safetensors` loads as is.
The pipeline (`pipeline.py`) runs them; `loading.py` and `tiny.py` build them from files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

# Imported from their modules: mypy reads `from diffusers import X` as diffusers' dummy objects.
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from torch import nn
from transformers import T5EncoderModel

from instrument.generator.errors import CheckpointError

log = logging.getLogger(__name__)

LATENT_CHANNELS = 64  # the Oobleck VAE's latent channels, and the transformer's in_channels


@dataclass(frozen=True)
class TangoFluxConfig:
    """The checkpoint's `config.json` (upstream's keys and defaults), plus our optional `vae_config`."""

    num_layers: int = 6  # double-stream (MMDiT) blocks
    num_single_layers: int = 18  # single-stream (DiT) blocks
    in_channels: int = LATENT_CHANNELS  # latent channels; upstream's noise is hard-wired to 64
    attention_head_dim: int = 128  # Flux's RoPE axes (16, 56, 56) must sum to it
    joint_attention_dim: int = 1024  # must equal the text encoder's d_model
    num_attention_heads: int = 8
    audio_seq_len: int = 645  # latents per clip: 645 * 2048 / 44100 = 29.95 s
    max_duration: float = 30.0  # seconds; the duration token covers [0, max_duration]
    uncondition: bool = False  # a training flag upstream; unused for inference
    text_encoder_name: str = "google/flan-t5-large"  # hub id, or a directory (relative to the checkpoint)
    vae_config: dict[str, Any] | None = None  # AutoencoderOobleck kwargs; None: its defaults (upstream)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> TangoFluxConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            log.warning("%s: ignoring keys %s (upstream ignores them too)", source, ", ".join(unknown))
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            default = getattr(cls, name)
            ok = {
                int: isinstance(value, int) and not isinstance(value, bool),
                float: isinstance(value, (int, float)) and not isinstance(value, bool),
                bool: isinstance(value, bool),
                str: isinstance(value, str),
            }.get(type(default), value is None or isinstance(value, dict))
            if not ok:
                raise CheckpointError(
                    f"{source}: {name}={value!r} has the wrong type; expected like {default!r}"
                )
            kwargs[name] = float(value) if isinstance(default, float) else value
        config = cls(**kwargs)
        config.check(source)
        return config

    def check(self, source: str = "config.json") -> None:
        if self.attention_head_dim != 128:
            raise CheckpointError(
                f"{source}: attention_head_dim={self.attention_head_dim}; expected 128 (RoPE axes 16+56+56)"
            )
        if self.in_channels != LATENT_CHANNELS:
            raise CheckpointError(f"{source}: in_channels={self.in_channels}; expected {LATENT_CHANNELS}")
        for name in ("num_layers", "num_single_layers", "num_attention_heads", "joint_attention_dim"):
            if getattr(self, name) < 0 or (name != "num_layers" and getattr(self, name) == 0):
                raise CheckpointError(f"{source}: {name}={getattr(self, name)} is out of range")
        if self.audio_seq_len < 1 or not self.max_duration > 0:
            raise CheckpointError(
                f"{source}: audio_seq_len={self.audio_seq_len}, max_duration={self.max_duration}; "
                "expected both > 0"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["vae_config"] is None:
            del data["vae_config"]
        return data


class StableAudioPositionalEmbedding(nn.Module):
    """Random Fourier features of a scalar in [0, 1] (Stable Audio's; upstream's parameter names)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim={dim}: expected an even number")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        times = times[..., None]  # (B, 1)
        freqs = times * self.weights[None] * 2 * math.pi  # (B, dim/2)
        fouriered = torch.cat((freqs.sin(), freqs.cos()), dim=-1)  # (B, dim)
        return torch.cat((times, fouriered), dim=-1)  # (B, dim + 1)


class DurationEmbedder(nn.Module):
    """Seconds -> one conditioning token of width `dim` (upstream's `DurationEmbedder`)."""

    def __init__(self, dim: int, min_value: float, max_value: float, internal_dim: int = 256) -> None:
        super().__init__()
        self.time_positional_embedding = nn.Sequential(
            StableAudioPositionalEmbedding(internal_dim), nn.Linear(internal_dim + 1, dim)
        )
        self.dim = dim
        self.min_value = min_value
        self.max_value = max_value

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        seconds = seconds.clamp(self.min_value, self.max_value)  # (B,)
        normalized = (seconds - self.min_value) / (self.max_value - self.min_value)
        normalized = normalized.to(next(self.time_positional_embedding.parameters()).dtype)
        return self.time_positional_embedding(normalized).view(-1, 1, self.dim)  # (B, 1, dim)


class TangoFluxModel(nn.Module):
    """TangoFlux's modules under upstream's attribute names, so `tangoflux.safetensors` loads as is.

    The misspelt `duration_emebdder` is upstream's: the checkpoint's keys use it.
    """

    def __init__(self, config: TangoFluxConfig, text_encoder: T5EncoderModel) -> None:
        super().__init__()
        d_text = int(text_encoder.config.d_model)
        if d_text != config.joint_attention_dim:
            raise CheckpointError(
                f"text encoder d_model={d_text} but joint_attention_dim={config.joint_attention_dim}; "
                "TangoFlux needs them equal"
            )
        self.config = config
        self.text_encoder = text_encoder
        self.fc = nn.Sequential(nn.Linear(d_text, config.joint_attention_dim), nn.ReLU())
        self.duration_emebdder = DurationEmbedder(d_text, min_value=0, max_value=config.max_duration)
        self.transformer: nn.Module = flux_transformer(config)  # or a compiled / Core ML stand-in


def flux_transformer(config: TangoFluxConfig) -> FluxTransformer2DModel:
    """TangoFlux's Flux transformer (no guidance embedding; pooled projection of T5's width, which
    TangoFluxModel checks equals joint_attention_dim)."""
    return FluxTransformer2DModel(
        in_channels=config.in_channels,
        num_layers=config.num_layers,
        num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim,
        pooled_projection_dim=config.joint_attention_dim,
        guidance_embeds=False,
    )
