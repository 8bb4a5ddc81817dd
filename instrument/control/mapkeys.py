"""The controller mapping format as one table (`KEYS`), as `params.PARAMS` is for parameters and
mido's `messages/specs.py` for messages.

Every key is declared once: its name, the tables it may stand in, its type (with its range or
choices), the controls (`sources`) and target kinds (`targets`) it applies to, and its doc line.
`read_table` parses and range-checks a table by it; `mapfile.py` builds bindings from what it
reads, checks them and writes them back by it; `mapdoc.py` generates `docs/mappings.md` from it.

>>> read_table({"cc": 7, "channel": 2, "target": "xfade"}, "control", "demo")
{'cc': 7, 'channel': 1, 'target': 'xfade'}
>>> read_table({"cc": 7, "chan": 2}, "control", "demo")
Traceback (most recent call last):
...
instrument.errors.ConfigError: demo: unknown key 'chan': allowed label, cc, cc14, nrpn, note, program, \
channel, target, min, max, curve, mode, step, takeover, button, value, bits, feedback, preset, glide, args \
(see docs/mappings.md)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from instrument.control.actions import BY_PATH
from instrument.control.tomlfile import check_keys, toml_value
from instrument.errors import ConfigError, ParamError
from instrument.params import GLIDE_MAX, check_glide

VERSION = 1
Source = Literal["cc", "cc14", "nrpn", "note", "program"]
Table = Literal["file", "control", "presets"]
KeyType = Literal["source", "channel", "number", "positive", "choice", "bool", "text", "preset", "glide", "value",
                  "args", "notes", "controls", "presets", "version"]
Arg = str | int | float | bool  # an action argument, as OSC carries it
SEE = " (see docs/mappings.md)"


@dataclass(frozen=True)
class Key:
    """One key of the format. `sources` and `targets`: the controls and the target kinds (`KINDS`,
    or an action's path) it applies to, empty for all. The defaults are the dataclasses' in
    `mapfile.py` (typed code and the file share them); `default` words one they cannot show."""

    name: str
    tables: tuple[Table, ...]
    type: KeyType
    doc: str
    hi: int = 0  # sources: the highest number
    choices: tuple[str | int, ...] = ()  # `choice`: what is allowed; `source`: a word allowed besides numbers
    sources: tuple[Source, ...] = ()
    targets: tuple[str, ...] = ()
    default: str = ""


# What a binding's target is (`mapfile.target_kind`): a parameter by its kind, a parameter set to
# `value` on a press, or an action (by its path, from `actions.ACTIONS`).
KINDS = {"number": "a number parameter", "choice": "a choice parameter", "switch": "a switch parameter",
         "trigger": "a trigger", "text": "a text parameter",
         "value": "a number, choice, switch or text parameter set to `value` on a press"}
PARAM_TARGETS = tuple(KINDS)
_TRAVEL = ("number", "choice")  # continuous targets: the control's travel moves them

KEYS: tuple[Key, ...] = (
    # -- the file ------------------------------------------------------------------------------
    Key("version", ("file",), "version", f"Format version; this is version {VERSION}.", default="required"),
    Key("name", ("file",), "text", "What the mapping is for (shown in logs)."),
    Key("description", ("file",), "text", "Free text."),
    Key("control", ("file",), "controls", "The controls: `[[control]]`, keys below.", default="none"),
    Key("presets", ("file",), "presets", "Preset triggers from a sequencer or program change: keys below.",
        default="none"),
    # -- a control: exactly one source, a target, options --------------------------------------
    Key("label", ("control",), "text", "A name for the control (documentation only)."),
    Key("cc", ("control",), "source", "A 7-bit control change (absolute, or a relative encoder: see `mode`).",
        hi=127, default="-"),
    Key("cc14", ("control",), "source", "A 14-bit control change: MSB on this controller, LSB on controller + 32.",
        hi=31, default="-"),
    Key("nrpn", ("control",), "source", "An NRPN (parameter number = CC 99 x 128 + CC 98; data on CC 6 and 38; "
        "CC 96/97 step it).", hi=16383, default="-"),
    Key("note", ("control",), "source", "A note: note-on presses (velocity is the value), note-off releases.",
        hi=127, default="-"),
    Key("program", ("control",), "source", "A program change; `\"any\"` (only with `preset/recall`): program N "
        "recalls preset number N + 1.", hi=127, choices=("any",), default="-"),
    Key("channel", ("file", "control", "presets"), "channel", "MIDI channel: at the top, of every control and of "
        "`[presets]`; in a table, of that table's messages.", default="`\"any\"`; in a table, the file's"),
    Key("target", ("control",), "text", "A registry address (`/endless/slot/1/gain`, or without the prefix: "
        "`slot/1/next`) or an action (below).", default="required"),
    Key("min", ("control",), "number", "Value at the control's low end (real units; above `max` inverts the "
        "control).", targets=("number",), default="the parameter's"),
    Key("max", ("control",), "number", "Value at the control's high end.", targets=("number",),
        default="the parameter's"),
    Key("curve", ("control",), "choice", "How the control's travel maps onto min..max (below).",
        choices=("param", "linear", "log", "exp"), targets=("number",)),
    Key("mode", ("control",), "choice", "Absolute, or one of the relative modes of 7-bit encoders (below).",
        choices=("absolute", "twos_complement", "binary_offset", "sign_magnitude"), sources=("cc",),
        targets=_TRAVEL),
    Key("step", ("control",), "positive", "Relative encoders and NRPN increments: travel per tick (0..1 is the "
        "whole range).", targets=_TRAVEL),
    Key("takeover", ("control",), "choice", "Absolute controls: `pickup` waits until the control reaches the "
        "parameter's value (no jump); `jump` applies every move.", choices=("pickup", "jump"), targets=_TRAVEL),
    Key("button", ("control",), "choice", "A press flips the switch, or the switch follows the button.",
        choices=("toggle", "momentary"), targets=("switch",)),
    Key("value", ("control",), "value", "Set the target to this value on a press (e.g. `morph/mode` `\"xy\"`, a "
        "prompt).", targets=("value",), default="-"),
    Key("bits", ("control",), "choice", "14 applies on the data LSB (CC 38), 7 on the MSB (CC 6).",
        choices=(7, 14), sources=("nrpn",)),
    Key("feedback", ("control",), "bool", "Send the target's value back out (LEDs, motor faders, LED rings).",
        targets=PARAM_TARGETS),
    Key("preset", ("control",), "preset", "Which preset: a name, or a number in the preset list.",
        targets=("preset/recall", "preset/arm"), default="-"),
    Key("notes", ("presets",), "notes", "Note number -> preset name or number, e.g. "
        "`{ 36 = \"dawn\", 38 = \"storm\" }`: the note recalls it.", default="`{}`"),
    Key("program_change", ("presets",), "bool", "Program change N recalls preset number N + 1."),
    Key("glide", ("control", "presets"), "glide", f"Glide time of the recall, seconds 0..{GLIDE_MAX:g}.",
        targets=("preset/recall", "preset/next", "preset/previous"), default="the preset's"),
    Key("args", ("control",), "args", "The action's arguments as OSC takes them (instead of `preset` and "
        "`glide`): `[\"/endless/slot/1/gain\"]` for `learn`, `[1, \"take.wav\"]` for `record`.",
        targets=tuple(BY_PATH), default="none"),
)
SOURCES: tuple[Source, ...] = tuple(k.name for k in KEYS if k.type == "source")  # type: ignore[misc]


def keys(table: Table) -> tuple[Key, ...]:
    """The keys of one table, in the table's order (the order of the reference and of saved files)."""
    return tuple(k for k in KEYS if table in k.tables)


def read_table(t: object, table: Table, where: str) -> dict[str, Any]:
    """The keys of `table` found in `t`, each parsed and range-checked by its type; an unknown key is
    refused naming the allowed ones."""
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: must be a table, not {t!r}{SEE}")
    check_keys(t, (k.name for k in keys(table)), where, ConfigError, SEE)
    return {k.name: _PARSE[k.type](k, t[k.name], f"{where}: {k.name}") for k in keys(table)
            if k.name in t and k.type != "version"}


# -- the types: parse and range-check one value (mido's checks.py, for this format) --------------
def _whole(v: object, where: str, lo: int, hi: int, words: tuple[str | int, ...] = ()) -> int | None:
    if isinstance(v, str) and v in words:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{where} = {v!r}: allowed a whole number {lo}..{hi}"
                          + "".join(f" or {toml_value(w)}" for w in words))
    return v


def _number(v: object, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or positive and v <= 0:
        raise ConfigError(f"{where} = {v!r}: allowed a number{' > 0' if positive else ''}")
    return float(v)


def _choice(k: Key, v: object, where: str) -> object:
    if isinstance(v, bool) or v not in k.choices:
        raise ConfigError(f"{where} = {v!r}: allowed {', '.join(str(c) for c in k.choices)}")
    return v


def _typed(kind: type, words: str) -> Callable[[Key, object, str], object]:
    def parse(k: Key, v: object, where: str) -> object:
        if not isinstance(v, kind):
            raise ConfigError(f"{where} = {v!r}: allowed {words}")
        return v
    return parse


def _preset(v: object, where: str) -> str | int:
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    raise ConfigError(f"{where} = {v!r}: allowed a preset name or a number >= 1")


def _glide(v: object, where: str) -> float:
    try:
        return check_glide(v, where)
    except ParamError as e:
        raise ConfigError(str(e)) from None


def _notes(v: object, where: str) -> tuple[tuple[int, str | int], ...]:
    if not isinstance(v, dict):
        raise ConfigError(f"{where} = {v!r}: allowed a table like {{ 36 = \"dawn\" }}")
    out = []
    for n, p in v.items():
        note = _whole(int(n) if n.isdigit() else n, f"{where}: note", 0, 127)
        out.append((int(note or 0), _preset(p, f"{where}.{n}")))
    return tuple(out)


def _args(v: object, where: str) -> tuple[Arg, ...]:
    if not isinstance(v, list) or not all(isinstance(a, (str, int, float, bool)) for a in v):
        raise ConfigError(f"{where} = {v!r}: allowed an array of texts and numbers, e.g. [1, \"take.wav\"]")
    return tuple(v)


def _controls(v: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not all(isinstance(c, dict) for c in v):
        raise ConfigError(f"{where}: must be an array of tables: write each as [[control]]")
    return v


_PARSE: dict[KeyType, Callable[[Key, Any, str], object]] = {
    "source": lambda k, v, w: _whole(v, w, 0, k.hi, k.choices),
    "channel": lambda k, v, w: None if (n := _whole(v, w, 1, 16, ("any",))) is None else n - 1,
    "number": lambda k, v, w: _number(v, w),
    "positive": lambda k, v, w: _number(v, w, positive=True),
    "choice": _choice,
    "bool": _typed(bool, "true or false"),
    "text": _typed(str, "text in quotes"),
    "preset": lambda k, v, w: _preset(v, w),
    "glide": lambda k, v, w: _glide(v, w),
    "value": lambda k, v, w: v,  # checked against the target's parameter by `mapfile.check_binding`
    "args": lambda k, v, w: _args(v, w),
    "notes": lambda k, v, w: _notes(v, w),
    "controls": lambda k, v, w: _controls(v, w),
    "presets": lambda k, v, w: v,  # a table: `read_table(v, "presets", ...)`
}
