"""Issue 12, finding 6: bundles and recalls are all or nothing, over a real OSC server (UDP loopback).

The three packets exactly as the finding found them half-applied:
- `[master/gain -21, preset/next "fast", slot/1/gain -31]` applied the master only;
- `[master/gain -22, preset/recall "nope", slot/1/gain -32]` applied both gains despite the refused recall;
- a preset with 3 weights for a 1-part prompt returned an error but applied its master and prompt.
Each must now change nothing, answer an error naming the message that failed, and leave the server
serving (a good packet after it applies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instrument.control.actions import Actions
from instrument.control.presets import PresetStore
from instrument.engine import Engine
from tests.test_osc import G1, _bundle, _errors, mix_engine, plan_engine
from tests.test_osc import serve as serve  # noqa: F401  (the fixture: a real server on an ephemeral UDP port)

MASTER = "/endless/master/gain"


def _unchanged(e: Engine, before: dict[Any, Any]) -> bool:
    return e.values == before


def test_a_bundle_with_preset_next_given_a_word_applies_nothing(serve: Any, tmp_path: Path) -> None:
    e = mix_engine()
    acts = Actions(e, PresetStore(tmp_path, ()))
    acts.presets.store(e, "Dusk")
    server, client = serve(e, acts)
    before = dict(e.values)
    got = client.exchange(_bundle((MASTER, -21.0), ("/endless/preset/next", "fast"), (G1, -31.0)))
    errors = _errors(got)
    assert "fast" in errors["/endless/preset/next"], got
    assert _unchanged(e, before) and server.stats.applied == 0 and acts.current is None
    assert e.values[("master/gain", None)] != -21.0 and e.values[("slot/gain", 0)] != -31.0
    assert client.exchange((G1, -5.0)) == [] and e.values[("slot/gain", 0)] == -5.0  # still serving


def test_a_bundle_recalling_a_preset_that_is_not_there_applies_nothing(serve: Any, tmp_path: Path) -> None:
    e = mix_engine()
    acts = Actions(e, PresetStore(tmp_path, ()))
    server, client = serve(e, acts)
    before = dict(e.values)
    got = client.exchange(_bundle((MASTER, -22.0), ("/endless/preset/recall", "nope"), (G1, -32.0)))
    errors = _errors(got)
    assert "nope" in errors["/endless/preset/recall"], got
    assert errors[MASTER].startswith("not applied") and errors[G1].startswith("not applied"), got
    assert _unchanged(e, before) and server.stats.applied == 0
    assert e.values[("master/gain", None)] != -22.0 and e.values[("slot/gain", 0)] != -32.0


def test_a_preset_with_three_weights_for_a_one_part_prompt_applies_nothing(serve: Any, tmp_path: Path) -> None:
    e = plan_engine()
    (tmp_path / "bad.toml").write_text('version = 1\n[global]\nmaster_gain = -23.0\n'
                                       '[[slot]]\nprompt = "rain"\nweights = [0.2, 0.3, 0.5]\n')
    acts = Actions(e, PresetStore(tmp_path, ()))
    server, client = serve(e, acts)
    assert e.generator is not None
    plan_before = e.generator.plans[0].prompt
    before = dict(e.values)
    got = client.exchange(("/endless/preset/recall", "bad"))
    errors = _errors(got)
    assert "weights" in errors["/endless/preset/recall"] and "bad" in errors["/endless/preset/recall"], got
    assert "\n" not in errors["/endless/preset/recall"]
    assert _unchanged(e, before) and e.generator.plans[0].prompt == plan_before
    assert e.values[("master/gain", None)] != -23.0 and e.values[("slot/prompt", 0)] != "rain"
    # the same in a bundle with gains around it: nothing of it applies either
    got = client.exchange(_bundle((MASTER, -21.0), ("/endless/preset/recall", "bad"), (G1, -31.0)))
    assert set(_errors(got)) == {MASTER, "/endless/preset/recall", G1}, got
    assert _unchanged(e, before) and server.stats.applied == 0
