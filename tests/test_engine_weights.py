"""What a prompt change does to the slot's stored weights: they were for the old prompt, so they go,
and listeners (OSC /sync, presets) hear it."""

from __future__ import annotations

import pytest

from instrument.params import Value
from tests.test_engine_batch import gen_engine


@pytest.mark.parametrize("prompt", ["wind | sea", "rain | thunder"])
def test_a_prompt_change_clears_the_stored_weights(prompt: str) -> None:
    e = gen_engine()
    heard: list[tuple[str, int | None, Value]] = []
    e.listeners.append(lambda r, v: heard.append((r.param.key, r.slot, v)))
    e.handle("/endless/slot/1/prompt", ["rain | thunder"])
    e.handle("/endless/slot/1/weights", [1, 3])
    assert e.values[("slot/weights", 0)] == (1.0, 3.0)
    heard.clear()
    e.handle("/endless/slot/1/prompt", [prompt])  # the same prompt again also drops the weights
    assert e.values[("slot/weights", 0)] == ()
    assert ("slot/weights", 0, ()) in heard and heard[-1][0] == "slot/prompt"
    heard.clear()
    e.handle("/endless/slot/1/prompt", ["birds"])  # no weights to clear: nobody is told twice
    assert [k for k, _, _ in heard] == ["slot/prompt"]
