"""Our TangoFlux pipeline: Flan-T5 -> duration token -> Flux transformer (Euler, CFG) -> Oobleck VAE.

It matches the upstream `tangoflux` 0.1.0 package (`TangoFlux.inference_flow` and
`TangoFluxInference.generate`) while keeping every shape fixed: `audio_seq_len` (645) latents
whatever the clip length, and the text padded to 64 tokens plus the duration token, with a
key-padding mask in the transformer's joint attention so the padding changes nothing.

Upstream details this reproduces on purpose:
- The unconditional branch encodes "" (end-of-sequence, then pads) padded to the prompt's own
  token count, and the transformer attends to all of those rows: T5's outputs at the pad tokens are
  part of the unconditional input. So each unconditional row here uses its prompt's mask.
- The pooled vector is the mean of T5's states over the tokens (for "": the end-of-sequence state).
- The duration token is a Fourier embedding of seconds / max_duration, appended after the text;
  text rows all have RoPE position 0, so where it sits among them does not matter.
- Sigmas are linspace(1, 1/steps, steps) then 0; the transformer gets t / 1000 and scales it back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from instrument.clips import Audio, Clip, ClipInfo, to_stereo
from instrument.generator.conditioning import MAX_TEXT_TOKENS, Conditioning, TextConditioner
from instrument.generator.errors import Cancelled
from instrument.generator.model import LATENT_CHANNELS, TangoFluxModel

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.5
DEFAULT_DURATION = 10.0
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
DECODE_MARGIN = 16  # latents decoded past a clip's end (the VAE decoder's receptive field is < 8)

ProgressCallback = Callable[[int, int], None]  # (steps done, steps in all)
CancelCheck = Callable[[], bool]


def flow_schedule(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's flow-matching Euler schedule: timesteps (steps,) and sigmas (steps + 1,), float32.

    Equal to diffusers' `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)` after
    `set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))` (shift 1).
    """
    sigmas = torch.from_numpy(np.linspace(1.0, 1.0 / steps, steps)).to(torch.float32)  # (steps,)
    timesteps = sigmas * 1000  # (steps,)
    return timesteps, torch.cat([sigmas, torch.zeros(1)])


def initial_noise(seeds: Sequence[int], seq_len: int, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """(n, seq_len, channels) float32 standard normal noise on the CPU, one generator per seed.

    Drawn on the CPU so a seed gives the same clip on every device; equal to upstream's
    `torch.manual_seed(seed); torch.randn(1, seq_len, 64)`.
    """
    return torch.stack(
        [torch.randn(seq_len, channels, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    )


@dataclass(frozen=True)
class ClipRequest:
    """One clip to generate: one slot of a batched call."""

    prompt: str | Conditioning  # a prompt, a blend ("rain:0.7 | thunder:0.3"), or ready conditioning
    seed: int = 0  # the initial noise; same seed, prompt and settings -> the same clip
    duration: float = DEFAULT_DURATION  # seconds: the duration token, and the clip's length
    guidance: float = DEFAULT_GUIDANCE  # classifier-free guidance scale (1: none, 0: unconditional)


@dataclass(frozen=True, eq=False)
class Generated:
    """One request's result: the clip at the model's rate, and the latents it was decoded from.

    Not a second clip type: the audio is a `Clip` like every other (the worker post-processes it
    to the device rate); the latents are what parity checks and benchmarks look at.
    """

    clip: Clip  # (frames, 2) float32 at the VAE's rate, trimmed to the duration; info: how it was made
    latents: torch.Tensor  # (audio_seq_len, 64) float32 on the CPU


class TangoFluxPipeline:
    """Text -> stereo audio with TangoFlux, at fixed shapes, several requests per call.

    >>> pipe = load_pipeline("tiny")                                        # doctest: +SKIP
    >>> clip = pipe.generate("rain on a tin roof", seed=1, duration=10.0)   # doctest: +SKIP
    >>> batch = [ClipRequest("rain", seed=1), ClipRequest("wind:0.5 | sea:0.5", seed=2)]  # doctest: +SKIP
    >>> clips = pipe(batch, steps=25)                                       # doctest: +SKIP
    """

    def __init__(
        self,
        model: TangoFluxModel,
        vae: Any,  # ours (`oobleck.OobleckVAE`) or diffusers' AutoencoderOobleck: `.decode(z).sample`
        tokenizer: Any,
        *,
        device: str | torch.device = "cpu",  # the transformer, fc and duration embedder
        dtype: torch.dtype = torch.float32,  # the transformer's (bf16 on cuda); the rest stays fp32
        vae_device: str | torch.device | None = None,  # None: `device`
        vae_dtype: torch.dtype = torch.float32,
        text_device: str | torch.device | None = None,  # T5, always fp32; None: `device`
        cache_size: int = 256,  # prompts whose T5 output is kept
        name: str = "tangoflux",  # the model id clips are tagged with
    ) -> None:
        self.config = model.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_device = torch.device(vae_device) if vae_device is not None else self.device
        self.vae_dtype = vae_dtype
        self.name = name
        # nn.Module.to: diffusers' own `to` warns about any dtype argument, even a no-op one.
        text_dev = text_device if text_device is not None else self.device
        nn.Module.to(model.text_encoder, device=text_dev, dtype=torch.float32)
        nn.Module.to(model.fc, device=self.device, dtype=torch.float32)
        nn.Module.to(model.duration_emebdder, device=self.device, dtype=torch.float32)
        nn.Module.to(model.transformer, device=self.device, dtype=dtype)
        nn.Module.to(vae, device=self.vae_device, dtype=vae_dtype)
        self.model = model.eval()
        self.vae = vae.eval()
        self.conditioner = TextConditioner(tokenizer, model.text_encoder, cache_size=cache_size)

    def compile(self, mode: str | None = None) -> None:
        """torch.compile the transformer. Shapes are fixed (645 latents, 65 text rows), so it compiles
        once per batch size; mode "reduce-overhead" adds CUDA graphs. Used where measured faster
        (benchmarks/bench_generate.py)."""
        self.model.transformer = torch.compile(self.model.transformer, mode=mode, dynamic=False)  # type: ignore[assignment]

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config["sampling_rate"])

    @property
    def samples_per_latent(self) -> int:
        return int(np.prod(self.vae.config["downsampling_ratios"]))

    def condition(self, prompt: str | Conditioning) -> Conditioning:
        """A prompt's (or blend's) conditioning, from the cache when it has been seen."""
        return prompt if isinstance(prompt, Conditioning) else self.conditioner(prompt)

    def check_inputs(self, requests: Sequence[ClipRequest], steps: int) -> None:
        """Raise ValueError, one line naming the value and what is allowed, for any bad argument."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps={steps!r}: expected an integer from 1 to {MAX_STEPS}")
        if not requests:
            raise ValueError("no requests: expected at least one ClipRequest")
        for i, r in enumerate(requests):
            if not isinstance(r, ClipRequest):
                raise ValueError(f"request {i} is a {type(r).__name__}: expected a ClipRequest")
            if isinstance(r.seed, bool) or not isinstance(r.seed, int) or not 0 <= r.seed <= MAX_SEED:
                raise ValueError(f"request {i}: seed={r.seed!r}; expected an integer from 0 to 2**63-1")
            if not (isinstance(r.duration, (int, float)) and 0 < r.duration <= self.config.max_duration):
                raise ValueError(
                    f"request {i}: duration={r.duration!r}; "
                    f"expected seconds in (0, {self.config.max_duration:g}]"
                )
            if not (isinstance(r.guidance, (int, float)) and math.isfinite(r.guidance) and r.guidance >= 0):
                raise ValueError(f"request {i}: guidance={r.guidance!r}; expected a finite number >= 0")
            if isinstance(r.prompt, Conditioning):
                if r.prompt.hidden.shape[0] != MAX_TEXT_TOKENS or r.prompt.mask.shape != (MAX_TEXT_TOKENS,):
                    raise ValueError(
                        f"request {i}: conditioning has {r.prompt.hidden.shape[0]} rows; "
                        f"expected {MAX_TEXT_TOKENS}"
                    )
            elif not isinstance(r.prompt, str):
                raise ValueError(
                    f"request {i}: prompt is a {type(r.prompt).__name__}; expected str or Conditioning"
                )

    @torch.no_grad()
    def denoise(
        self,
        requests: Sequence[ClipRequest],
        steps: int = DEFAULT_STEPS,
        *,
        callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """The final latents, (n, audio_seq_len, 64) float32 on the CPU. Raises Cancelled between steps."""
        self.check_inputs(requests, steps)
        n, seq_len, dev = len(requests), self.config.audio_seq_len, self.device

        # 1. Text: each prompt's T5 states (cached), the unconditional ones, and the masks.
        conds = [self.condition(r.prompt) for r in requests]
        uncond = self.conditioner.unconditional()
        hidden = torch.stack([uncond.hidden] * n + [c.hidden for c in conds]).to(dev)  # (2n, T, D)
        pooled = torch.stack([uncond.pooled] * n + [c.pooled for c in conds]).to(dev)  # (2n, D)
        # Upstream pads "" to the prompt's length and attends to every row of it: reuse the prompt's mask.
        text_mask = torch.stack([c.mask for c in conds] * 2).to(dev)  # (2n, T)

        # 2. Duration token after the text; the joint attention mask over [text, duration, audio].
        seconds = torch.tensor([float(r.duration) for r in requests], device=dev)  # (n,)
        duration_token = self.model.duration_emebdder(seconds).repeat(2, 1, 1)  # (2n, 1, D)
        context = torch.cat([hidden, duration_token], dim=1).to(self.dtype)  # (2n, T + 1, D)
        pooled_projection = self.model.fc(pooled).to(self.dtype)  # (2n, D)
        keep = torch.ones(2 * n, 1 + seq_len, dtype=torch.bool, device=dev)  # (2n, 1 + L)
        attention_mask = torch.cat([text_mask, keep], dim=1)[:, None, None, :]  # (2n, 1, 1, T + 1 + L)
        txt_ids = torch.zeros(context.shape[1], 3, device=dev)  # (T + 1, 3)
        img_ids = torch.arange(seq_len, device=dev)[:, None].repeat(1, 3)  # (L, 3)
        guidance = torch.tensor([float(r.guidance) for r in requests], device=dev)[:, None, None]  # (n, 1, 1)

        # 3. Schedule and noise (fp32; the noise drawn on the CPU per seed).
        timesteps, sigmas = flow_schedule(steps)
        t_model = (timesteps / 1000).to(dev)  # (steps,) the transformer multiplies it back by 1000
        dt = (sigmas[1:] - sigmas[:-1]).to(dev)  # (steps,) negative
        latents = initial_noise([r.seed for r in requests], seq_len, self.config.in_channels).to(
            dev
        )  # (n, L, C)

        # 4. Euler steps on the guided velocity.
        for i in range(steps):
            if should_cancel is not None and should_cancel():
                raise Cancelled(i, steps)
            velocity = self.model.transformer(
                hidden_states=torch.cat([latents, latents]).to(self.dtype),  # (2n, L, C)
                timestep=t_model[i].expand(2 * n),  # (2n,)
                guidance=None,
                pooled_projections=pooled_projection,
                encoder_hidden_states=context,
                txt_ids=txt_ids,
                img_ids=img_ids,
                joint_attention_kwargs={"attention_mask": attention_mask},
                return_dict=False,
            )[0].float()  # (2n, L, C)
            v_uncond, v_cond = velocity.chunk(2)  # (n, L, C) each
            velocity = v_uncond + guidance * (v_cond - v_uncond)
            latents = latents + dt[i] * velocity
            if callback is not None:
                callback(i + 1, steps)
        return latents.cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, durations: Sequence[float]) -> list[Audio]:
        """Latents (n, L, 64) -> n (frames, 2) float32 arrays (clip audio) trimmed to their durations.

        One clip at a time: the VAE's activations for a 30 s clip are large.
        """
        if latents.ndim != 3 or len(durations) != latents.shape[0]:
            raise ValueError(
                f"latents {tuple(latents.shape)} and {len(durations)} durations: expected (n, L, C), n"
            )
        clips = []
        for z, seconds in zip(latents, durations, strict=True):
            # The decoder is convolutional with a receptive field under 8 latents: decoding only the
            # latents the clip needs, plus a margin, gives the same samples for a fraction of the cost
            # of all 645 (tests/test_pipeline_parity.py compares against upstream's full decode).
            need = min(z.shape[0], math.ceil(seconds * self.sample_rate / self.samples_per_latent) + DECODE_MARGIN)
            z = z[None, :need].transpose(2, 1).to(self.vae_device, self.vae_dtype)  # (1, C, need)
            wave = self.vae.decode(z).sample[0].float().cpu()  # (channels, L * samples_per_latent)
            clips.append(to_stereo(wave[:, : int(seconds * self.sample_rate)].numpy().T))  # a copy: frees the rest
        return clips

    def __call__(
        self,
        requests: Sequence[ClipRequest],
        steps: int = DEFAULT_STEPS,
        *,
        callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[Generated]:
        """Generate one clip per request in one batched denoising loop (2n rows with CFG)."""
        t0 = time.perf_counter()
        latents = self.denoise(requests, steps, callback=callback, should_cancel=should_cancel)
        if should_cancel is not None and should_cancel():
            raise Cancelled(steps, steps)
        audio = self.decode(latents, [r.duration for r in requests])
        wall = time.perf_counter() - t0
        return [
            Generated(Clip(wave, self.sample_rate, self.clip_info(r, steps, wall)), z)
            for r, z, wave in zip(requests, latents, audio, strict=True)
        ]

    def clip_info(self, request: ClipRequest, steps: int, gen_seconds: float) -> ClipInfo:
        """What a generated clip carries of how it was made (the same record file clips carry)."""
        prompt = request.prompt.text if isinstance(request.prompt, Conditioning) else request.prompt
        return ClipInfo("generator", prompt, request.seed, self.name, gen_seconds,
                        steps=steps, guidance=float(request.guidance))

    def generate(
        self,
        prompt: str | Conditioning,
        *,
        seed: int = 0,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        duration: float = DEFAULT_DURATION,
        callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> Generated:
        """One clip; `generate(p, seed=s)` is `pipe([ClipRequest(p, s)])[0]`."""
        request = ClipRequest(prompt, seed=seed, duration=duration, guidance=guidance)
        return self([request], steps, callback=callback, should_cancel=should_cancel)[0]
