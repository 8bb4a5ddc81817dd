"""Prompt blends as text: `rain:0.7 | thunder:0.3` (no torch here: presets, scripts and the
scheduler check blends without loading the model's code)."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLEND_SYNTAX = "'text' or 'text:weight | text:weight', as in 'rain:0.7 | thunder:0.3'"

BlendPart = tuple[str, float]


def parse_blend(text: str) -> tuple[BlendPart, ...]:
    """Parse a prompt or a weighted blend into (prompt, weight) parts whose weights sum to 1.

    Parts are separated by `|`; a part may end in `:weight` (a number >= 0, no space after the
    colon); a part without one weighs 1. Repeated prompts add up; zero-weight parts are dropped.

    >>> parse_blend("rain:0.7 | thunder:0.3")
    (('rain', 0.7), ('thunder', 0.3))
    >>> parse_blend("rain | thunder:3")
    (('rain', 0.25), ('thunder', 0.75))
    >>> parse_blend("sound: rain")
    (('sound: rain', 1.0),)
    """
    if not text.strip():
        raise ValueError(f"empty prompt {text!r}: expected {BLEND_SYNTAX}")
    weights: dict[str, float] = {}
    for raw in text.split("|"):
        part = raw.strip()
        prompt, weight = part, 1.0
        head, colon, tail = part.rpartition(":")
        if colon and not any(ch.isspace() for ch in tail):
            prompt, weight = head.strip(), _parse_weight(tail, part)
        if not prompt:
            raise ValueError(f"empty prompt in {text!r}: expected {BLEND_SYNTAX}")
        weights[prompt] = weights.get(prompt, 0.0) + weight
    total = sum(weights.values())
    if total <= 0.0:
        raise ValueError(f"weights in {text!r} sum to 0: give a part a weight > 0, {BLEND_SYNTAX}")
    return tuple((prompt, w / total) for prompt, w in weights.items() if w > 0.0)


def _parse_weight(token: str, part: str) -> float:
    try:
        weight = float(token)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight < 0.0:
        raise ValueError(f"bad weight {token!r} in {part!r}: expected a number >= 0, {BLEND_SYNTAX}")
    return weight


def format_blend(parts: Sequence[BlendPart]) -> str:
    """The canonical text of a parsed blend: `format_blend(parse_blend(s))` is stable."""
    if len(parts) == 1:
        return parts[0][0]
    return " | ".join(f"{prompt}:{weight:.6g}" for prompt, weight in parts)
