"""Text conditioning: blend parsing, the LRU cache of T5 outputs, blends, and conditioning in the pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, T5EncoderModel

from instrument.generator.conditioning import (
    MAX_TEXT_TOKENS,
    Conditioning,
    TextConditioner,
    blend,
    format_blend,
    parse_blend,
)
from instrument.generator.loading import load_pipeline
from instrument.generator.pipeline import ClipRequest, TangoFluxPipeline
from tests.generator_fixtures import tiny_checkpoint

SYNTAX_EXAMPLE = "rain:0.7 | thunder:0.3"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def t5(checkpoint: Path) -> tuple[Any, T5EncoderModel]:
    path = checkpoint / "text_encoder"
    return AutoTokenizer.from_pretrained(path), T5EncoderModel.from_pretrained(path).eval()


@pytest.fixture
def conditioner(t5: tuple[Any, T5EncoderModel]) -> TextConditioner:
    return TextConditioner(*t5, cache_size=3)


@contextlib.contextmanager
def t5_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts T5 forward passes inside the block: `calls[0]`."""
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rain", (("rain", 1.0),)),
        ("  rain on a tin roof  ", (("rain on a tin roof", 1.0),)),
        ("rain:0.7 | thunder:0.3", (("rain", 0.7), ("thunder", 0.3))),
        ("rain:7|thunder:3", (("rain", 0.7), ("thunder", 0.3))),
        ("rain | thunder", (("rain", 0.5), ("thunder", 0.5))),
        ("rain | thunder:3", (("rain", 0.25), ("thunder", 0.75))),
        ("rain:2", (("rain", 1.0),)),
        ("rain:1e-1 | wind:.3", (("rain", 0.25), ("wind", 0.75))),
        ("rain:0.5 | rain:0.5 | wind:1", (("rain", 0.5), ("wind", 0.5))),  # repeats add up
        ("rain:1 | thunder:0", (("rain", 1.0),)),  # zero weights drop out
        ("sound: rain", (("sound: rain", 1.0),)),  # a space after the colon: plain text
        ("ambience: rain, 3am:0.5 | wind:0.5", (("ambience: rain, 3am", 0.5), ("wind", 0.5))),
    ],
)
def test_parse_blend(text: str, expected: tuple[tuple[str, float], ...]) -> None:
    parts = parse_blend(text)
    assert [p for p, _ in parts] == [p for p, _ in expected]
    assert [w for _, w in parts] == pytest.approx([w for _, w in expected])
    assert sum(w for _, w in parts) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "''"),
        ("   ", "'   '"),
        ("rain | ", "'rain | '"),
        ("| rain", "'| rain'"),
        (":0.5", "':0.5'"),
        ("rain:abc", "'abc'"),
        ("rain:", "''"),
        ("rain:-1 | wind", "'-1'"),
        ("rain:nan", "'nan'"),
        ("rain:inf | wind:1", "'inf'"),
        ("rain:0 | thunder:0", "'rain:0 | thunder:0'"),
    ],
)
def test_parse_blend_rejects_with_one_line(text: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_blend(text)
    message = str(info.value)
    assert names in message  # the bad value, quoted
    assert SYNTAX_EXAMPLE in message  # and the allowed syntax
    assert "\n" not in message


def test_format_blend_round_trips() -> None:
    for text in ["rain", "rain:0.7 | thunder:0.3", "a:1 | b:2 | c:1"]:
        parts = parse_blend(text)
        again = parse_blend(format_blend(parts))
        assert [p for p, _ in again] == [p for p, _ in parts]
        assert [w for _, w in again] == pytest.approx([w for _, w in parts])
    assert format_blend(parse_blend("rain:7|thunder:3")) == "rain:0.7 | thunder:0.3"


# --- the cache ----------------------------------------------------------------------------------


def test_cache_returns_the_same_tensors_and_counts_a_hit(conditioner: TextConditioner) -> None:
    with t5_calls(conditioner.text_encoder) as calls:
        first = conditioner("rain on a wooden door")
        again = conditioner("rain on a wooden door")
    assert again is first
    assert torch.equal(again.hidden, first.hidden) and torch.equal(again.mask, first.mask)
    assert calls[0] == 1
    info = conditioner.cache_info()
    assert (info.hits, info.misses, info.size, info.maxsize) == (1, 1, 1, 3)


def test_cached_result_equals_a_fresh_encoding(
    conditioner: TextConditioner, t5: tuple[Any, T5EncoderModel]
) -> None:
    cached = conditioner("thunder")
    fresh = TextConditioner(*t5).encode("thunder")
    assert torch.equal(cached.hidden, fresh.hidden) and torch.equal(cached.pooled, fresh.pooled)


def test_unconditional_is_encoded_once(conditioner: TextConditioner) -> None:
    with t5_calls(conditioner.text_encoder) as calls:
        u = conditioner.unconditional()
        assert conditioner.unconditional() is u
    assert calls[0] == 1
    assert u.num_tokens == 1  # end-of-sequence only
    assert torch.equal(u.pooled, u.hidden[0])


def test_cache_is_bounded_lru(conditioner: TextConditioner) -> None:
    with t5_calls(conditioner.text_encoder) as calls:
        for prompt in ["rain", "wind", "sea", "rain", "fire"]:  # "rain" refreshed, so "wind" goes
            conditioner(prompt)
        assert calls[0] == 4 and conditioner.cache_info().size == 3
        conditioner("rain")
        conditioner("sea")
        assert calls[0] == 4
        conditioner("wind")
        assert calls[0] == 5


def test_blend_parts_come_from_the_cache(conditioner: TextConditioner) -> None:
    with t5_calls(conditioner.text_encoder) as calls:
        conditioner("rain:0.7 | thunder:0.3")
        conditioner("rain:0.2 | thunder:0.8")
        conditioner("rain")
    assert calls[0] == 2


# --- the fixed shape and blends -----------------------------------------------------------------


def test_conditioning_has_the_fixed_shape(conditioner: TextConditioner) -> None:
    c = conditioner("rain on a wooden door")
    assert c.hidden.shape == (MAX_TEXT_TOKENS, 32) and c.hidden.dtype == torch.float32
    assert c.mask.shape == (MAX_TEXT_TOKENS,) and c.mask.dtype == torch.bool
    assert c.num_tokens == 6 and bool(c.mask[:6].all()) and not bool(c.mask[6:].any())  # 5 words + </s>
    assert torch.allclose(c.pooled, c.hidden[:6].mean(0))
    assert not c.truncated
    long = conditioner(" ".join(["rain"] * 80))
    assert long.truncated and long.num_tokens == MAX_TEXT_TOKENS


def test_padded_encoding_equals_unpadded(
    conditioner: TextConditioner, t5: tuple[Any, T5EncoderModel]
) -> None:
    tokenizer, model = t5
    prompt = "distant thunder over a calm sea"
    batch = tokenizer([prompt], return_tensors="pt")  # no padding, as upstream encodes one prompt
    with torch.no_grad():
        unpadded = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0][0]
    c = conditioner(prompt)
    n = unpadded.shape[0]
    assert c.num_tokens == n
    assert float((c.hidden[:n] - unpadded).norm() / unpadded.norm()) < 1e-6


def test_blend_mixes_rows_and_pooled(conditioner: TextConditioner) -> None:
    short, long = conditioner("rain"), conditioner("thunder over the sea at night")
    mixed = conditioner("rain:0.7 | thunder over the sea at night:0.3")
    n_short, n_long = short.num_tokens, long.num_tokens
    assert (n_short, n_long) == (2, 7)
    assert torch.equal(mixed.mask, short.mask | long.mask)
    # Rows both prompts cover: the weighted mix; rows only the longer covers: its own states.
    assert torch.allclose(mixed.hidden[:n_short], 0.7 * short.hidden[:n_short] + 0.3 * long.hidden[:n_short])
    assert torch.allclose(mixed.hidden[n_short:n_long], long.hidden[n_short:n_long])
    assert torch.allclose(mixed.pooled, 0.7 * short.pooled + 0.3 * long.pooled)
    assert mixed.text == "rain:0.7 | thunder over the sea at night:0.3"


def test_blend_of_one_is_the_prompt_itself(conditioner: TextConditioner) -> None:
    rain = conditioner("rain")
    assert conditioner("rain:0.3 | rain:0.7") is rain
    assert conditioner("rain:1 | thunder:0") is rain
    assert blend([(rain, 1.0)]) is rain
    with pytest.raises(ValueError):
        blend([])


def test_blends_move_continuously_between_equal_length_prompts(conditioner: TextConditioner) -> None:
    a, b = conditioner("rain"), conditioner("wind")
    steps = [conditioner(f"rain:{1 - w} | wind:{w}") for w in (0.0, 0.5, 1.0)]
    assert steps[0] is a and steps[2] is b
    assert torch.allclose(steps[1].hidden, 0.5 * (a.hidden + b.hidden))


# --- conditioning in the pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> TangoFluxPipeline:
    return load_pipeline(checkpoint, cache_size=8)


def test_pipeline_accepts_ready_conditioning(pipe: TangoFluxPipeline) -> None:
    cond = pipe.condition("rain:0.6 | thunder:0.4")
    assert isinstance(cond, Conditioning)
    by_text = pipe.denoise([ClipRequest("rain:0.6 | thunder:0.4", seed=2)], 2)
    by_cond = pipe.denoise([ClipRequest(cond, seed=2)], 2)
    assert torch.equal(by_text, by_cond)


def test_pipeline_encodes_each_prompt_once(pipe: TangoFluxPipeline) -> None:
    pipe.conditioner.clear_cache()
    pipe.conditioner.unconditional()
    with t5_calls(pipe.conditioner.text_encoder) as calls:
        pipe.denoise([ClipRequest("sea", seed=1), ClipRequest("sea:0.5 | fire:0.5", seed=2)], 1)
        pipe.denoise([ClipRequest("fire", seed=3)], 1)
    assert calls[0] == 2  # "sea" and "fire", once each
    assert pipe.conditioner.cache_info().hits >= 2


def test_blends_are_text_without_torch() -> None:
    """Presets, scripts and the scheduler check blends; that must not load the model's code (torch
    takes over a second to import, and a clips-only instrument never needs it)."""
    import doctest
    import subprocess
    import sys

    import instrument.blend

    assert doctest.testmod(instrument.blend).failed == 0
    code = ("import sys\nfrom instrument.control.presets import parse_preset\nfrom instrument.params import Registry\n"
            "parse_preset('version = 1\\n[[slot]]\\nprompt = \"rain | wind\"\\nweights = [1, 2]\\n', 'x.toml', "
            "Registry(slots=2))\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
