"""Text conditioning: Flan-T5 encoding at a fixed length, an LRU cache of it, and prompt blends.

A prompt becomes a `Conditioning`: T5's hidden states padded to `MAX_TEXT_TOKENS` rows, a mask of
the real rows, and the masked mean that TangoFlux pools (before its `fc` layer). Each distinct
prompt is encoded once; the unconditional embedding (the empty prompt) too.

A blend (`rain:0.7 | thunder:0.3`) mixes conditioning, not audio: see `blend()`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from instrument.blend import format_blend, parse_blend

MAX_TEXT_TOKENS = 64  # TangoFlux's max_text_seq_len; the end-of-sequence token counts


@dataclass(frozen=True, eq=False)
class Conditioning:
    """One prompt's (or one blend's) text conditioning, at the fixed text length.

    Treat the tensors as read-only: the cache hands the same objects to every caller.
    """

    text: str  # the prompt, or the normalised blend ("rain:0.7 | thunder:0.3")
    hidden: torch.Tensor  # (T, D) float32 T5 states; rows past the prompt are T5's outputs at pads
    mask: torch.Tensor  # (T,) bool: True on the prompt's tokens (end-of-sequence included)
    pooled: torch.Tensor  # (D,) float32 mean of hidden over mask, what TangoFlux feeds its `fc`
    truncated: bool = False  # the prompt had more than T tokens and was cut

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    maxsize: int


def blend(parts: Sequence[tuple[Conditioning, float]], text: str | None = None) -> Conditioning:
    """Mix conditioning: a convex combination of T5 states row by row, and of the pooled vectors.

    Row t mixes only the prompts that have a token at row t (weights renormalised over them), so
    every real row stays a convex mix of real T5 states rather than fading towards a pad output;
    the mask is the union of the masks. Weights must be >= 0 and sum to 1 (as `parse_blend` gives).
    One part with weight 1 returns that conditioning itself.
    """
    if not parts:
        raise ValueError("blend() needs at least one (conditioning, weight) part")
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    hidden = torch.stack([c.hidden for c, _ in parts])  # (P, T, D)
    masks = torch.stack([c.mask for c, _ in parts])  # (P, T)
    w = torch.tensor([weight for _, weight in parts], dtype=hidden.dtype, device=hidden.device)  # (P,)
    wm = w[:, None] * masks.to(hidden.dtype)  # (P, T)
    denom = wm.sum(0, keepdim=True)  # (1, T)
    # Rows no prompt covers stay masked; give them the plain weighted mix so they hold finite values.
    coef = torch.where(denom > 0, wm / denom.clamp_min(1e-12), w[:, None].expand_as(wm))  # (P, T)
    pooled = (w[:, None] * torch.stack([c.pooled for c, _ in parts])).sum(0)  # (D,)
    name = text if text is not None else format_blend([(c.text, weight) for c, weight in parts])
    return Conditioning(
        text=name,
        hidden=(coef[..., None] * hidden).sum(0),  # (T, D)
        mask=masks.any(0),  # (T,)
        pooled=pooled,
        truncated=any(c.truncated for c, _ in parts),
    )


class TextConditioner:
    """Encodes prompts with Flan-T5 at `max_tokens` rows, caching each prompt's result (LRU).

    `conditioner("rain:0.7 | thunder:0.3")` parses the blend, encodes (or finds) each prompt and
    mixes them; `conditioner.unconditional()` is the empty prompt's conditioning, computed once.
    """

    def __init__(
        self,
        tokenizer: Any,  # a transformers T5 tokenizer (called like one)
        text_encoder: torch.nn.Module,  # transformers T5EncoderModel
        *,
        max_tokens: int = MAX_TEXT_TOKENS,
        cache_size: int = 256,  # prompts kept; ~256 KB each for Flan-T5-large (64 x 1024 floats)
    ) -> None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens={max_tokens}: expected at least 2 (a token and end-of-sequence)")
        if cache_size < 1:
            raise ValueError(f"cache_size={cache_size}: expected at least 1")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Conditioning] = OrderedDict()
        self._uncond: Conditioning | None = None
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def __call__(self, text: str) -> Conditioning:
        """The conditioning of a prompt or a blend (see `parse_blend` for the syntax)."""
        parts = parse_blend(text)
        if len(parts) == 1:
            return self.encode(parts[0][0])
        return blend([(self.encode(prompt), weight) for prompt, weight in parts], format_blend(parts))

    def encode(self, prompt: str) -> Conditioning:
        """One prompt, verbatim (no blend parsing), from the cache or from T5."""
        with self._lock:
            found = self._cache.get(prompt)
            if found is not None:
                self._cache.move_to_end(prompt)
                self._hits += 1
                return found
            self._misses += 1
        cond = self._encode(prompt)
        with self._lock:
            self._cache[prompt] = cond
            self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cond

    def unconditional(self) -> Conditioning:
        """The empty prompt: end-of-sequence then pads, T5-encoded once (TangoFlux's CFG input)."""
        if self._uncond is None:
            self._uncond = self._encode("")
        return self._uncond

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    @torch.no_grad()
    def _encode(self, prompt: str) -> Conditioning:
        device = next(self.text_encoder.parameters()).device
        batch = self.tokenizer(
            [prompt], max_length=self.max_tokens, padding="max_length", truncation=True, return_tensors="pt"
        )
        ids = batch.input_ids.to(device)  # (1, T)
        mask = batch.attention_mask.to(device)  # (1, T)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask)[0][0].float()  # (T, D)
        keep = mask[0] == 1  # (T,)
        truncated = len(self.tokenizer(prompt).input_ids) > self.max_tokens
        return Conditioning(
            text=prompt,
            hidden=hidden,
            mask=keep,
            pooled=hidden[keep].mean(0),  # (D,) as upstream's nanmean over the unpadded tokens
            truncated=truncated,
        )
