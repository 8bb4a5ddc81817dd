"""TangoFlux's Flux transformer in plain torch: the computation of diffusers' `FluxTransformer2DModel`
(no guidance embedding, patch size 1) under its module names, so `transformer.*` weights load as is.

Why our own: importing diffusers takes 5-11 s (it pulls in torch._dynamo, peft, scikit-learn and
every autoencoder and UNet it has), which was most of a warm CUDA start; this module imports torch
alone. `tests/test_nets_parity.py` holds it to diffusers' output with the same weights.

Shapes: B rows, L latents, T text rows (+1 duration token), D = heads x 128.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROPE_AXES = (16, 56, 56)  # Flux's rotary axes (sum: the head dim, 128)
ROPE_THETA = 10000
FP16_MAX = 65504.0


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim) sinusoids, cosines first (diffusers' Timesteps(flip_sin_to_cos=True, shift 0))."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t[:, None].float() * torch.exp(exponent)[None, :]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimeProjection(nn.Module):
    """No weights: the sinusoidal projection of the timestep (diffusers' `time_proj`)."""

    num_channels = 256

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.num_channels)


class MLP2(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d)
        self.linear_2 = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """temb = MLP(sinusoids(t)) + MLP(pooled text): one vector per row that modulates every block."""

    def __init__(self, dim: int, pooled_dim: int) -> None:
        super().__init__()
        self.time_proj = TimeProjection()
        self.timestep_embedder = MLP2(TimeProjection.num_channels, dim)
        self.text_embedder = MLP2(pooled_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        t = self.timestep_embedder(self.time_proj(timestep).to(pooled.dtype))  # (B, D)
        return t + self.text_embedder(pooled)  # (B, D)


class RotaryEmbedding(nn.Module):
    """Positions (S, 3) -> (cos, sin), each (S, 128) float32; frequencies in float64 as diffusers."""

    def __init__(self, axes: tuple[int, ...] = ROPE_AXES, theta: float = ROPE_THETA) -> None:
        super().__init__()
        self.axes_dim = axes  # diffusers' name
        self.theta = theta

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = ids.float()
        fdtype = torch.float32 if ids.device.type in ("mps", "npu") else torch.float64
        cos, sin = [], []
        for i, dim in enumerate(self.axes_dim):
            freqs = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=fdtype, device=ids.device) / dim))
            angles = torch.outer(pos[:, i], freqs)  # (S, dim/2)
            cos.append(angles.cos().repeat_interleave(2, dim=1).float())
            sin.append(angles.sin().repeat_interleave(2, dim=1).float())
        return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)


def apply_rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate (B, S, H, 128) by interleaved pairs (diffusers' apply_rotary_emb, sequence_dim=1)."""
    cos, sin = rope[0][None, :, None, :], rope[1][None, :, None, :]  # (1, S, 1, 128)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Flux attention: q/k RMS-normed per head, rotary positions, SDPA. With `context` projections
    (double blocks) the text rows get their own q/k/v and output; single blocks have no output layer."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float, joint: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        if joint:
            self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
            self.norm_added_q = nn.RMSNorm(head_dim, eps=eps)
            self.norm_added_k = nn.RMSNorm(head_dim, eps=eps)
            self.add_q_proj = nn.Linear(dim, inner)
            self.add_k_proj = nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.to_add_out = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.head_dim))  # (B, S, H, hd)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:
        q = self.norm_q(self._heads(self.to_q(x)))
        k = self.norm_k(self._heads(self.to_k(x)))
        v = self._heads(self.to_v(x))
        if context is not None:  # text rows first: [context, x]
            q = torch.cat([self.norm_added_q(self._heads(self.add_q_proj(context))), q], dim=1)
            k = torch.cat([self.norm_added_k(self._heads(self.add_k_proj(context))), k], dim=1)
            v = torch.cat([self._heads(self.add_v_proj(context)), v], dim=1)
        if rope is not None:
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attention_mask)  # (B, H, S, hd)
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # (B, S, inner)
        if context is None:
            return out
        ctx, out = out.split_with_sizes([context.shape[1], out.shape[1] - context.shape[1]], dim=1)
        return self.to_out[0](out.contiguous()), self.to_add_out(ctx.contiguous())


class AdaNorm(nn.Module):
    """LayerNorm (no affine) modulated by temb: returns the normed input and the other `chunks - 2`
    modulation vectors (diffusers' AdaLayerNormZero: 6 chunks; ...ZeroSingle: 3)."""

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, chunks * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.chunks = chunks

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift, scale, *rest = self.linear(F.silu(emb)).chunk(self.chunks, dim=1)
        return (self.norm(x) * (1 + scale[:, None]) + shift[:, None], *rest)


class GeluProj(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """Linear -> GELU (tanh) -> Linear, 4x wide, under diffusers' `net.0.proj` / `net.2` names."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def _attention_mask(kwargs: dict[str, Any] | None) -> torch.Tensor | None:
    return None if kwargs is None else kwargs.get("attention_mask")


class DoubleBlock(nn.Module):
    """MMDiT block: text and audio rows with their own weights, one joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = AdaNorm(dim, 6)
        self.norm1_context = AdaNorm(dim, 6)
        self.attn = Attention(dim, heads, head_dim, eps=1e-6, joint=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                joint_attention_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, ctx = hidden_states, encoder_hidden_states
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(ctx, temb)
        attn, ctx_attn = self.attn(nx, nc, _attention_mask(joint_attention_kwargs), image_rotary_emb)

        x = x + gate_msa.unsqueeze(1) * attn
        nx = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        x = x + gate_mlp.unsqueeze(1) * self.ff(nx)

        ctx = ctx + c_gate_msa.unsqueeze(1) * ctx_attn
        nc = self.norm2_context(ctx) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        ctx = ctx + c_gate_mlp.unsqueeze(1) * self.ff_context(nc)
        if ctx.dtype == torch.float16:
            ctx = ctx.clip(-FP16_MAX, FP16_MAX)
        return ctx, x


class SingleBlock(nn.Module):
    """DiT block over [text, audio] together: attention and MLP in parallel, one output layer."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm = AdaNorm(dim, 3)
        self.proj_mlp = nn.Linear(dim, 4 * dim)
        self.proj_out = nn.Linear(dim + 4 * dim, dim)
        self.attn = Attention(dim, heads, head_dim, eps=1e-6, joint=False)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                joint_attention_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        text_rows = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        nx, gate = self.norm(x, temb)
        mlp = F.gelu(self.proj_mlp(nx), approximate="tanh")
        attn = self.attn(nx, None, _attention_mask(joint_attention_kwargs), image_rotary_emb)
        x = x + gate.unsqueeze(1) * self.proj_out(torch.cat([attn, mlp], dim=2))
        if x.dtype == torch.float16:
            x = x.clip(-FP16_MAX, FP16_MAX)
        return x[:, :text_rows], x[:, text_rows:]


class OutputNorm(nn.Module):
    """The last LayerNorm, scale and shift from temb (diffusers' AdaLayerNormContinuous)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(emb).to(x.dtype)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class FluxTransformer(nn.Module):
    """Latents (B, L, C) + text (B, T, J) + pooled (B, P) + timestep (B,) -> velocity (B, L, C)."""

    def __init__(self, in_channels: int, num_layers: int, num_single_layers: int, attention_head_dim: int,
                 num_attention_heads: int, joint_attention_dim: int, pooled_projection_dim: int) -> None:
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.pos_embed = RotaryEmbedding()
        self.time_text_embed = TimeTextEmbedding(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.x_embedder = nn.Linear(in_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            [DoubleBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)])
        self.single_transformer_blocks = nn.ModuleList(
            [SingleBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_single_layers)])
        self.norm_out = OutputNorm(dim)
        self.proj_out = nn.Linear(dim, in_channels)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep: torch.Tensor, img_ids: torch.Tensor,
                txt_ids: torch.Tensor, guidance: None = None, joint_attention_kwargs: dict[str, Any] | None = None,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        """The pipeline's call (diffusers' keywords); `guidance` must be None, the result is a 1-tuple."""
        if guidance is not None:
            raise ValueError("guidance: TangoFlux's transformer has no guidance embedding; pass None")
        x = self.x_embedder(hidden_states)  # (B, L, D)
        temb = self.time_text_embed(timestep.to(x.dtype) * 1000, pooled_projections)  # (B, D)
        ctx = self.context_embedder(encoder_hidden_states)  # (B, T, D)
        rope = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # (T + L, 128) x 2
        for block in self.transformer_blocks:
            ctx, x = block(x, ctx, temb, rope, joint_attention_kwargs)
        for single in self.single_transformer_blocks:
            ctx, x = single(x, ctx, temb, rope, joint_attention_kwargs)
        return (self.proj_out(self.norm_out(x, temb)),)  # (B, L, C)
