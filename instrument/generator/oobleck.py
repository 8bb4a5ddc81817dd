"""The Oobleck VAE's decoder (Stable Audio's; TangoFlux's latents -> 44.1 kHz stereo) in plain torch.

diffusers' `AutoencoderOobleck` computes the same, but importing it imports all of diffusers (5-11 s
at a worker's start); the instrument only ever decodes. Its weight-normed convolutions are stored
as `weight_g` / `weight_v` pairs; they are folded into one weight when loaded (`load_decoder`), in
float32, which is the weight diffusers computes at every call. Module names follow diffusers', so
the `decoder.*` keys of `vae.safetensors` load as is. `tests/test_nets_parity.py` holds it to
diffusers' output with the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from instrument.generator.errors import CheckpointError
from instrument.generator.model import empty_modules


@dataclass(frozen=True)
class OobleckConfig:
    """AutoencoderOobleck's config (its defaults are TangoFlux's VAE)."""

    encoder_hidden_size: int = 128
    downsampling_ratios: list[int] = field(default_factory=lambda: [2, 4, 4, 8, 8])
    channel_multiples: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    decoder_channels: int = 128
    decoder_input_channels: int = 64
    audio_channels: int = 2
    sampling_rate: int = 44100

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str) -> OobleckConfig:
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CheckpointError(f"{source}: vae_config has keys the Oobleck VAE does not take: {', '.join(unknown)}")
        return cls(**data)

    def __getitem__(self, key: str) -> Any:  # the pipeline reads vae.config["sampling_rate"], as diffusers'
        return getattr(self, key)


class Snake(nn.Module):
    """x + sin(a x)^2 / b, a and b per channel, stored as logs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = torch.exp(self.alpha), torch.exp(self.beta)
        return x + (beta + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        trim = (x.shape[-1] - y.shape[-1]) // 2
        if trim > 0:
            x = x[..., trim:-trim]
        return x + y


class DecoderBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake(c_in)
        self.conv_t1 = nn.ConvTranspose1d(c_in, c_out, kernel_size=2 * stride, stride=stride,
                                          padding=math.ceil(stride / 2))
        self.res_unit1 = ResidualUnit(c_out, 1)
        self.res_unit2 = ResidualUnit(c_out, 3)
        self.res_unit3 = ResidualUnit(c_out, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class Decoder(nn.Module):
    def __init__(self, c: OobleckConfig) -> None:
        super().__init__()
        mult = [1, *c.channel_multiples]
        strides = c.downsampling_ratios[::-1]
        ch = c.decoder_channels
        self.conv1 = nn.Conv1d(c.decoder_input_channels, ch * mult[-1], kernel_size=7, padding=3)
        self.block = nn.ModuleList([
            DecoderBlock(ch * mult[len(strides) - i], ch * mult[len(strides) - i - 1], s)
            for i, s in enumerate(strides)
        ])
        self.snake1 = Snake(ch)
        self.conv2 = nn.Conv1d(ch, c.audio_channels, kernel_size=7, padding=3, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


@dataclass(frozen=True)
class Decoded:
    sample: torch.Tensor  # (B, channels, frames), as diffusers' OobleckDecoderOutput


class OobleckVAE(nn.Module):
    """Only the decoder: `vae.decode(z).sample`, z (B, 64, L) -> (B, 2, L x 2048)."""

    def __init__(self, config: OobleckConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)

    def decode(self, z: torch.Tensor) -> Decoded:
        return Decoded(self.decoder(z))


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`X.weight_g` and `X.weight_v` -> `X.weight` = g * v / ||v|| (norm over all but dim 0, in float32),
    as torch's weight_norm computes it; other keys unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len("_v")]
            g = state.get(base + "_g")
            if g is None:
                raise CheckpointError(f"{key} has no matching weight_g")
            v = value.float()
            out[base] = torch._weight_norm(v, g.float(), 0).to(value.dtype)
        else:
            out[key] = value
    return out


def load_decoder(config: OobleckConfig, state: Mapping[str, torch.Tensor], source: str) -> OobleckVAE:
    """The decoder from a `vae.safetensors` state dict (encoder keys ignored), weights folded."""
    with empty_modules():
        vae = OobleckVAE(config)
    decoder = fold_weight_norm({k: v for k, v in state.items() if k.startswith("decoder.")})
    try:
        vae.load_state_dict(decoder, strict=True, assign=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{source} does not fit the VAE config: {reason}") from exc
    return vae
