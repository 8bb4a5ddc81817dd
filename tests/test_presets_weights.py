"""Presets and blend weights (a preset refused whole when its weights do not fit, arming the blend a
recall ends up playing), the one glide range, and presets named with digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from instrument.clips import Clip, ClipInfo
from instrument.control.arming import ArmingScheduler
from instrument.control.presets import parse_preset
from instrument.engine import Engine
from instrument.errors import ParamError
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.params import Registry
from instrument.rt import MixerConfig
from tests.test_engine_batch import SR, gen_engine
from tests.test_presets import store_with


def test_a_preset_whose_weights_do_not_fit_its_prompt_is_refused_naming_file_and_slot() -> None:
    reg = Registry(slots=2)
    ok = parse_preset('version = 1\n[[slot]]\nprompt = "rain | thunder"\nweights = [1, 3]\n', "ok.toml", reg)
    assert ok.slot(0)["slot/weights"] == (1.0, 3.0)
    text = 'version = 1\n[[slot]]\nprompt = "rain"\n[[slot]]\nprompt = "rain | thunder"\nweights = [1, 2, 3]\n'
    with pytest.raises(ParamError, match=r"^x\.toml: \[\[slot\]\] #2: slot 2 weights: 3 given for a prompt of 2 part") as e:
        parse_preset(text, "x.toml", reg)
    assert "\n" not in str(e.value)
    with pytest.raises(ParamError, match=r"x\.toml: \[\[slot\]\] #1: slot 1 weights: 1 given for a prompt of 0 part"):
        parse_preset('version = 1\n[[slot]]\nprompt = ""\nweights = [1]\n', "x.toml", reg)


def test_a_recall_whose_weights_do_not_fit_changes_nothing(tmp_path: Path) -> None:
    e = gen_engine()
    e.handle("/endless/slot/1/prompt", ["rain"])
    st = store_with(tmp_path, w='version = 1\n[global]\nmaster_gain = -6.0\n[[slot]]\ngain = -9.0\nweights = [1, 3]\n',
                    fits='version = 1\n[[slot]]\nprompt = "wind | sea"\nweights = [1, 3]\n[[slot]]\nprompt = "x"\n')
    with pytest.raises(ParamError, match=r"^preset w: slot 1 weights: 2 given for a prompt of 1 part"):
        st.recall(e, "w")
    assert e.values[("master/gain", None)] == 0.0 and e.values[("slot/gain", 0)] == 0.0  # nothing applied
    st.recall(e, "fits")  # the preset's own prompt has two parts: its weights fit it
    assert e.generator.plans[0].prompt == "wind:0.25 | sea:0.75"  # type: ignore[union-attr]
    assert e.values[("slot/weights", 0)] == (1.0, 3.0)


def test_recalling_the_same_prompt_without_weights_drops_the_weights_playing(tmp_path: Path) -> None:
    e = gen_engine()
    st = store_with(tmp_path, plain='version = 1\n[[slot]]\nprompt = "rain | thunder"\n')
    e.handle("/endless/slot/1/prompt", ["rain | thunder"])
    e.handle("/endless/slot/1/weights", [1, 3])
    st.recall(e, "plain")
    assert e.values[("slot/weights", 0)] == () and e.generator.plans[0].prompt == "rain | thunder"  # type: ignore[union-attr]


@pytest.mark.parametrize("glide", [True, -1, 601, "x", float("nan")])
def test_recall_glide_is_checked_as_everywhere(tmp_path: Path, glide: object) -> None:
    e = gen_engine()
    st = store_with(tmp_path, a='version = 1\n[global]\nmaster_gain = -6.0\n')
    with pytest.raises(ParamError, match=r"glide = .*: allowed seconds 0\.\.600$"):
        st.recall(e, "a", glide)  # type: ignore[arg-type]
    assert e.values[("master/gain", None)] == 0.0
    with pytest.raises(ParamError, match=r"b\.toml: glide = .*: allowed seconds 0\.\.600$"):
        parse_preset(f"version = 1\nglide = {'true' if glide is True else -1}\n", "b.toml", e.registry)


def test_a_preset_named_with_digits_is_found_by_name(tmp_path: Path) -> None:
    st = store_with(tmp_path, **{"123": "version = 1\n", "7": "version = 1\n", "a": "version = 1\n"})
    assert st.names() == ["123", "7", "a"]
    assert st.find("123")[0] == "123" and st.find(" 7 ")[0] == "7"  # by name, though digits
    assert st.find("2")[0] == "7" and st.find(2)[0] == "7"  # no preset is named "2": the list's second
    assert st.find(3.0)[0] == "a"
    with pytest.raises(ParamError, match="preset 9: out of range"):
        st.find("9")


def test_arming_a_weighted_preset_arms_the_blend_the_recall_plays(tmp_path: Path) -> None:
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR))  # never started: clips arrive by hand
    gen = ArmingScheduler(client, 2)
    e = Engine(MixerConfig(slots=2, sample_rate=SR), gen)
    e.handle("/endless/slot/2/prompt", ["wind | sea"])
    st = store_with(tmp_path, w='version = 1\n[[slot]]\nprompt = "rain | thunder"\nweights = [1, 3]\n'
                                '[[slot]]\nprompt = "wind | sea"\nweights = [3, 1]\n')
    assert st.arm(e, "w") == 2  # slot 2 keeps its prompt but plays other weights: armed too
    assert {k.prompt for a in gen.armed for k in a} == {"rain:0.25 | thunder:0.75", "wind:0.75 | sea:0.25"}
    assert sorted(r.prompt for r in client.outstanding.values()) == ["rain:0.25 | thunder:0.75", "wind:0.75 | sea:0.25"]
    for armed in gen.armed:  # the worker's clips, as they arrive
        for key in armed:
            armed[key] = Clip(np.zeros((SR, 2), np.float32), SR, ClipInfo("generator", key.prompt, 1, "tiny", 0.1), cut=True)
    st.recall(e, "w")
    for s, prompt in ((0, "rain:0.25 | thunder:0.75"), (1, "wind:0.75 | sea:0.25")):
        inbox = gen.plans[s].inbox
        assert gen.plans[s].prompt == prompt and len(inbox) == 1 and inbox[0].info.prompt == prompt
    assert gen.arms_used == 2
    assert st.arm(e, "w") == 0  # what the preset plays is playing
