"""Issue 12, finding 1 (entry side): a prompt longer than the registry's limit is refused where it
enters (OSC, a preset file, a control script, --prompt), with one line naming the limit; nothing of
its packet applies and nothing reaches the generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from instrument.errors import EndlessError, ParamError
from instrument.params import PROMPT_MAX_CHARS, Registry
from instrument.script import load_script
from tests.conftest import endless
from tests.test_osc import _errors, plan_engine, serve  # noqa: F401  (serve: the fixture)
from tests.test_presets import store_with


def test_the_limit_is_in_the_registry() -> None:
    reg = Registry(slots=2)
    p = reg["slot/prompt"]
    assert p.max_chars == PROMPT_MAX_CHARS == 2000 and f"{PROMPT_MAX_CHARS}" in p.doc
    assert reg.check(p, "r" * PROMPT_MAX_CHARS) == "r" * PROMPT_MAX_CHARS  # the limit itself is fine
    with pytest.raises(ParamError) as e:
        reg.check(p, "r" * (PROMPT_MAX_CHARS + 1), "/endless/slot/1/prompt")
    msg = str(e.value)
    assert "\n" not in msg and "/endless/slot/1/prompt" in msg and "2001 characters" in msg and "2000" in msg


def test_a_60000_byte_prompt_over_osc_is_refused_naming_the_limit(serve: Any) -> None:  # noqa: F811
    e = plan_engine()
    server, client = serve(e)
    huge = "rain " * 12000  # 60,000 bytes: one datagram
    got = client.exchange(("/endless/slot/1/prompt", huge), ("/endless/slot/2/prompt", "wind"))
    err = _errors(got)["/endless/slot/1/prompt"]
    assert "60000 characters" in err and f"at most {PROMPT_MAX_CHARS}" in err and "\n" not in err
    assert e.values[("slot/prompt", 0)] == "" and e.generator is not None and e.generator.plans[0].prompt == ""
    assert e.values[("slot/prompt", 1)] == "wind"  # the other packet applies
    # a bundle with one long prompt applies nothing of it
    from tests.test_osc import _bundle

    got = client.exchange(_bundle(("/endless/slot/2/prompt", "rain"), ("/endless/slot/1/prompt", huge)))
    assert "/endless/slot/1/prompt" in _errors(got) and e.values[("slot/prompt", 1)] == "wind"


def test_a_preset_with_a_2_mb_prompt_is_refused_naming_file_and_limit(tmp_path: Path) -> None:
    big = "rain " * 400_000
    store = store_with(tmp_path, huge=f'name = "huge"\nversion = 1\n[[slot]]\nprompt = "{big}"\n')
    with pytest.raises(ParamError) as e:
        store.load("huge", Registry(slots=2))
    msg = str(e.value)
    assert "huge.toml" in msg and "2000000 characters" in msg and f"at most {PROMPT_MAX_CHARS}" in msg
    assert len(msg) < 400  # the prompt itself is not repeated back


def test_a_script_and_the_command_line_use_the_same_check(tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text('{"t": 1, "address": "/endless/slot/1/prompt", "args": ["' + "x" * 3000 + '"]}\n')
    with pytest.raises(EndlessError) as e:
        load_script(script, Registry(slots=2))
    assert "s.jsonl:1" in str(e.value) and "3000 characters" in str(e.value)
    r = endless("render", "--model", "tiny", "--slots", "1", "--seconds", "1", "--prompt", "y" * 2500,
                "--out", str(tmp_path / "out.wav"), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "2500 characters" in r.stderr and f"at most {PROMPT_MAX_CHARS}" in r.stderr and "Traceback" not in r.stderr
