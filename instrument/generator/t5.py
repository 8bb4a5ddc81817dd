"""The T5 text encoder (Flan-T5's encoder stack) and its tokenizer without transformers.

Importing transformers' T5 takes about 3 s (it pulls in its generation code and scikit-learn); the
worker needs neither for one encoder pass per new prompt. This is the computation of transformers'
`T5EncoderModel` (RMS norms, relative position buckets shared by every layer, unscaled attention,
gated-GELU or ReLU feed-forward) under its parameter names, so `model.safetensors` and
TangoFlux's `text_encoder.*` keys load as is; the tokenizer is the folder's `tokenizer.json` run by
the `tokenizers` library (what transformers' fast T5 tokenizer runs too).
`tests/test_nets_parity.py` holds both to transformers with the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from instrument.generator.errors import CheckpointError

FEED_FORWARD = ("gated-gelu", "relu")  # Flan-T5 / T5 v1.1 use gated-gelu; the original T5 relu


@dataclass(frozen=True)
class T5Config:
    """The fields of a transformers T5 `config.json` the encoder needs."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    feed_forward_proj: str = "relu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def read(cls, path: Path) -> T5Config:
        """From a transformers `config.json`; raises CheckpointError (one line) if it is not one we run."""
        try:
            data = json.loads(path.read_text())
            config = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a T5 config we can read ({exc})") from exc
        if config.feed_forward_proj not in FEED_FORWARD:
            raise CheckpointError(f"{path}: feed_forward_proj={config.feed_forward_proj!r}; "
                                  f"expected one of {', '.join(FEED_FORWARD)}")
        return config


class RMSNorm(nn.Module):
    """T5's layer norm: no mean, no bias; the variance in float32."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """transformers' `gelu_new`, written out the same way (the tanh approximation)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class FeedForward(nn.Module):
    def __init__(self, c: T5Config) -> None:
        super().__init__()
        self.gated = c.feed_forward_proj == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(c.d_model, c.d_ff, bias=False)
            self.wi_1 = nn.Linear(c.d_model, c.d_ff, bias=False)
        else:
            self.wi = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.wo = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = gelu_tanh(self.wi_0(x)) * self.wi_1(x) if self.gated else F.relu(self.wi(x))
        return self.wo(h.to(self.wo.weight.dtype))


class SelfAttention(nn.Module):
    def __init__(self, c: T5Config, relative_bias: bool) -> None:
        super().__init__()
        inner = c.num_heads * c.d_kv
        self.heads, self.d_kv = c.num_heads, c.d_kv
        self.q = nn.Linear(c.d_model, inner, bias=False)
        self.k = nn.Linear(c.d_model, inner, bias=False)
        self.v = nn.Linear(c.d_model, inner, bias=False)
        self.o = nn.Linear(inner, c.d_model, bias=False)
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(c.relative_attention_num_buckets, c.num_heads)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, -1, self.d_kv).transpose(1, 2)  # (B, H, S, d_kv)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                             attn_mask=bias, scale=1.0)  # T5 does not scale by 1/sqrt(d)
        return self.o(out.transpose(1, 2).reshape(b, s, -1))


class AttentionSublayer(nn.Module):
    def __init__(self, c: T5Config, relative_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = SelfAttention(c, relative_bias)
        self.layer_norm = RMSNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return _clamp(x + self.SelfAttention(self.layer_norm(x), bias))


class FeedForwardSublayer(nn.Module):
    def __init__(self, c: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = FeedForward(c)
        self.layer_norm = RMSNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return _clamp(x + self.DenseReluDense(self.layer_norm(x)))


class Layer(nn.Module):
    """Under transformers' names: `layer.0` (attention) and `layer.1` (feed-forward)."""

    def __init__(self, c: T5Config, relative_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([AttentionSublayer(c, relative_bias), FeedForwardSublayer(c)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for sub in self.layer:
            x = sub(x, bias)
        return x


class Stack(nn.Module):
    def __init__(self, c: T5Config, shared: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = shared  # tied, as transformers' (both keys in the state dict)
        self.block = nn.ModuleList([Layer(c, i == 0) for i in range(c.num_layers)])
        self.final_layer_norm = RMSNorm(c.d_model, c.layer_norm_epsilon)

    def relative_attention_bias(self, buckets: torch.Tensor) -> torch.Tensor:
        """The first layer's bias table (every layer uses it): (q, k) buckets -> (q, k, heads)."""
        first = cast(AttentionSublayer, cast(Layer, self.block[0]).layer[0])
        return cast(torch.Tensor, first.SelfAttention.relative_attention_bias(buckets))


def _clamp(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float16:
        return x
    top = torch.finfo(x.dtype).max
    limit = torch.where(torch.isinf(x).any(), top - 1000, top)
    return x.clamp(-limit, limit)


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int, device: torch.device
                     ) -> torch.Tensor:
    """(q_len, k_len) bucket ids of key position - query position, bidirectional (T5's encoder)."""
    rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).to(torch.long) * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (half - exact)).to(torch.long)
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(rel < exact, rel, large)


class T5Encoder(nn.Module):
    """input_ids (B, S), attention_mask (B, S) 1/0 -> (hidden (B, S, d_model),), as `T5EncoderModel`."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, self.shared)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        c = self.config
        x = self.shared(input_ids)  # (B, S, D)
        s = input_ids.shape[1]
        buckets = relative_buckets(s, s, c.relative_attention_num_buckets, c.relative_attention_max_distance,
                                   x.device)
        bias = self.encoder.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, S, S)
        if attention_mask is not None:  # padded keys: the dtype's minimum, as transformers' SDPA path
            keep = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
            bias = torch.where(keep, bias, torch.finfo(bias.dtype).min)
        for layer in self.encoder.block:
            x = layer(x, bias)
        return (self.encoder.final_layer_norm(x),)


class Tokenizer:
    """A T5 tokenizer.json run by `tokenizers`: text -> ids ending in </s>, like transformers' fast
    T5 tokenizer (`tokenize()`), and its padded, truncated batch form (`__call__`)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as Fast

        self._tok = Fast.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        eos, pad = self._tok.token_to_id("</s>"), self._tok.token_to_id("<pad>")
        if eos is None or pad is None:
            raise CheckpointError(f"{path}: no </s> or <pad> token: not a T5 tokenizer")
        self.eos_id, self.pad_id = eos, pad

    def tokenize(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [*ids, self.eos_id]

    def __call__(self, texts: list[str] | str, max_length: int | None = None, padding: str | bool = False,
                 truncation: bool = False, return_tensors: str | None = None) -> Any:
        """The subset of transformers' call the conditioning uses: right-padding to `max_length`,
        truncation keeping </s> last; `.input_ids` and `.attention_mask` (tensors with "pt")."""
        listed = [texts] if isinstance(texts, str) else texts
        one = listed is not texts
        rows = [self.tokenize(t) for t in listed]
        if truncation and max_length is not None:
            rows = [r if len(r) <= max_length else [*r[: max_length - 1], self.eos_id] for r in rows]
        masks = [[1] * len(r) for r in rows]
        if padding == "max_length" and max_length is not None:
            masks = [m + [0] * (max_length - len(m)) for m in masks]
            rows = [r + [self.pad_id] * (max_length - len(r)) for r in rows]
        batch = _Batch(rows[0] if one else rows, masks[0] if one else masks)
        if return_tensors == "pt":
            batch = _Batch(torch.tensor(batch.input_ids), torch.tensor(batch.attention_mask))
        return batch


@dataclass(frozen=True)
class _Batch:
    input_ids: Any
    attention_mask: Any
