"""The checkpoint's `config.json` as a dataclass: plain Python, so finding and checking a checkpoint
(the instrument's start-up, `endless doctor`) never imports torch or diffusers (seconds)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

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
