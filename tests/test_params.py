"""The registry: address resolution, validation, normalized mapping, and the generated docs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from instrument.docs import osc_reference
from instrument.engine import MIXER_OPS
from instrument.errors import ParamError
from instrument.params import PARAMS, Registry

ROOT = Path(__file__).resolve().parents[1]


def test_docs_are_in_sync_with_the_registry() -> None:
    assert (ROOT / "docs" / "osc.md").read_text() == osc_reference(), "run `make docs`"


def test_every_mixer_param_has_an_opcode_and_nothing_else_does() -> None:
    assert {p.key for p in PARAMS if p.target == "mixer"} == set(MIXER_OPS)


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: p.key)
def test_every_param_resolves_and_takes_its_default(p) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(slots=3)
    slot = 2 if p.scope == "slot" else None
    ref = reg.resolve(p.address(reg.prefix, slot))
    assert (ref.param, ref.slot, ref.normalized) == (p, slot, False)
    if p.kind == "weights":
        assert reg.coerce(ref, [0.2, 0.8]) == (0.2, 0.8)
    elif p.kind != "trigger":
        assert reg.coerce(ref, [p.default]) == p.default
    if p.has_normalized:
        nref = reg.resolve(p.address(reg.prefix, slot) + "/normalized")
        for x in (0.0, 0.3, 1.0):
            v = reg.coerce(nref, [x])
            reg.check(p, v)  # always inside the range
        if p.numeric:
            mid = reg.coerce(nref, [0.5])
            step = 1 / (p.max - p.min) if p.kind == "int" else 1e-9  # ints round to a whole number
            assert p.to_normalized(mid) == pytest.approx(0.5, abs=step)


def test_ints_and_floats_are_both_numbers() -> None:
    reg = Registry()
    ref = reg.resolve("/endless/slot/1/gain")
    assert reg.coerce(ref, [-6]) == -6.0 and reg.coerce(ref, [-6.0]) == -6.0
    mute = reg.resolve("/endless/slot/1/mute")
    assert reg.coerce(mute, [1]) is True and reg.coerce(mute, [0.0]) is False and reg.coerce(mute, ["on"]) is True
    curve = reg.resolve("/endless/curve")
    assert reg.coerce(curve, [1]) == "sin2" and reg.coerce(curve, ["equal_power"]) == "equal_power"


def test_fader_taper() -> None:
    g = Registry()["slot/gain"]
    assert g.from_normalized(1.0) == 6.0  # 2x amplitude (+6.02 dB) clamped to the range
    assert g.from_normalized(math.sqrt(0.5)) == pytest.approx(0.0, abs=1e-9)
    assert g.from_normalized(0.0) == -60.0
    assert g.to_normalized(-60.0) == 0.0


@pytest.mark.parametrize("address,args,fragment", [
    ("/other/xfade", [1], "start with /endless/"),
    ("/endless/nope", [1], "unknown address"),
    ("/endless/slot/0/gain", [0], "slots are 1..4"),
    ("/endless/slot/5/gain", [0], "slots are 1..4"),
    ("/endless/slot/x/gain", [0], "slots are 1..4"),
    ("/endless/slot/1", [0], "slot addresses look like"),
    ("/endless/gain", [0], "unknown address"),  # a slot parameter without a slot
    ("/endless/slot/1/gain", [7], "out of range: allowed -60..6 dB"),
    ("/endless/slot/1/gain", ["loud"], "is not a number"),
    ("/endless/slot/1/gain", [float("nan")], "not a finite number"),
    ("/endless/slot/1/gain", [], "expected 1 argument"),
    ("/endless/slot/1/gain", [1, 2], "expected 1 argument"),
    ("/endless/slot/1/gain/normalized", [1.5], "/normalized takes 0..1"),
    ("/endless/slot/1/mute", [2], "not a switch value"),
    ("/endless/slot/1/next/normalized", [1], "has no /normalized form"),
    ("/endless/curve", ["linear"], "not one of equal_power, sin2"),
    ("/endless/curve", [5], "not one of"),
    ("/endless/xfade", [True], "is not a number"),
    ("/endless/slot/1/weights", [], "expected 1 to 16 weights"),
    ("/endless/slot/1/weights", [0, 0], "at least one > 0"),
    ("/endless/slot/1/weights", [-1, 2], "weights must be >= 0"),
])
def test_bad_messages_are_refused_with_one_line(address: str, args: list[object], fragment: str) -> None:
    reg = Registry(slots=4)
    with pytest.raises(ParamError) as e:
        reg.coerce(reg.resolve(address), args)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg
