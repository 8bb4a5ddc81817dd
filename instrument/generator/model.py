"""TangoFlux's modules: what a checkpoint holds, under upstream's names.

`TangoFluxConfig` (the checkpoint's `config.json`, in `checkpoint.py`, torch-free) is re-exported
here; `TangoFluxModel` holds T5, the pooled-text
projection, the duration embedder and the Flux transformer, so `tangoflux.safetensors` loads as is.
The pipeline (`pipeline.py`) runs them; `loading.py` and `tiny.py` build them from files.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
from torch import nn

from instrument.generator.checkpoint import LATENT_CHANNELS, TangoFluxConfig
from instrument.generator.errors import CheckpointError
from instrument.generator.flux import FluxTransformer

__all__ = ["LATENT_CHANNELS", "DurationEmbedder", "StableAudioPositionalEmbedding", "TangoFluxConfig",
           "TangoFluxModel", "flux_transformer"]

log = logging.getLogger(__name__)

_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd, nn.LayerNorm,
                                        nn.RMSNorm)  # where each init is defined (and ours, below)


@contextlib.contextmanager
def empty_modules() -> Iterator[None]:
    """Build modules on the meta device without their random init, for weights that come from a
    file (`load_state_dict(..., assign=True)`). The init matters for time, not for values: a random
    init on meta tensors runs torch's Python reference ops, which import torch._dynamo and sympy
    (3-4 s on an H100 machine: most of a model load)."""
    layers = (*_LAYERS, StableAudioPositionalEmbedding)
    saved = {cls: cls.__dict__["reset_parameters"] for cls in layers}
    try:
        for cls in layers:
            setattr(cls, "reset_parameters", _no_init)  # noqa: B010
        with torch.device("meta"):
            yield
    finally:
        for cls, fn in saved.items():
            setattr(cls, "reset_parameters", fn)  # noqa: B010


def _no_init(self: nn.Module) -> None:
    return None


class StableAudioPositionalEmbedding(nn.Module):
    """Random Fourier features of a scalar in [0, 1] (Stable Audio's; upstream's parameter names)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim={dim}: expected an even number")
        self.weights = nn.Parameter(torch.empty(dim // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weights)  # upstream: torch.randn

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

    def __init__(self, config: TangoFluxConfig, text_encoder: nn.Module) -> None:
        """`text_encoder`: ours (`t5.T5Encoder`) or transformers' `T5EncoderModel`; either has
        `config.d_model` and is called alike."""
        super().__init__()
        d_text = int(getattr(text_encoder.config, "d_model"))  # noqa: B009 (nn.Module's typing hides it)
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


def flux_transformer(config: TangoFluxConfig) -> FluxTransformer:
    """TangoFlux's Flux transformer (no guidance embedding; pooled projection of T5's width, which
    TangoFluxModel checks equals joint_attention_dim): ours (`flux.py`), diffusers' computation."""
    return FluxTransformer(
        in_channels=config.in_channels,
        num_layers=config.num_layers,
        num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim,
        pooled_projection_dim=config.joint_attention_dim,
    )
