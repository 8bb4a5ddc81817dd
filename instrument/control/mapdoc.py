"""The mapping format reference (`docs/mappings.md`), generated from the key table (`mapkeys.KEYS`)
and the action table (`actions.ACTIONS`), so the document cannot drift from what the parser takes:
`make docs` writes it and a test fails when it is stale.

>>> "| `cc14` | 0..31 |" in mapping_reference()
True
"""

from __future__ import annotations

from instrument.control.actions import ACTIONS, BY_PATH
from instrument.control.mapfile import DEFAULTS, LEARN_WINDOW
from instrument.control.mapkeys import KINDS, PARAM_TARGETS, Key, Table, keys
from instrument.control.surface import EXP_K
from instrument.control.tomlfile import toml_value

_TYPES = {"channel": "1..16 or `\"any\"`", "number": "number", "positive": "number > 0", "bool": "true or false",
          "text": "text", "preset": "text or number", "glide": "seconds", "value": "any", "args": "array",
          "notes": "table note -> preset", "controls": "array of tables", "presets": "table", "version": "1"}


def _type(k: Key) -> str:
    if k.type == "source":
        return f"0..{k.hi}" + "".join(f" or `{toml_value(c)}`" for c in k.choices)
    if k.type == "choice":
        return " \\| ".join(f"`{toml_value(c)}`" for c in k.choices)
    return _TYPES[k.type]


def _default(k: Key, table: Table) -> str:
    return k.default or f"`{toml_value(getattr(DEFAULTS[table], k.name))}`"


def _applies(k: Key) -> str:
    """Which controls and targets a key is for (the checks refuse it elsewhere)."""
    parts = [" or ".join(f"`{s}`" for s in k.sources)] if k.sources else []
    if set(k.targets) == set(BY_PATH):
        parts.append("actions")
    elif k.targets == PARAM_TARGETS:
        parts.append("parameters")
    elif k.targets:
        parts.append(", ".join(f"`{t}`" if t in BY_PATH else t for t in k.targets))
    return "; ".join(parts) or "all"


def _table(table: Table) -> list[str]:
    """A table's keys; a control's also say what they are for (the keys of the others are for all)."""
    cols = ["key", "type", "default", *(["for"] if table == "control" else []), "meaning"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in keys(table):
        cells = [f"`{k.name}`", _type(k), _default(k, table), *([_applies(k)] if table == "control" else []), k.doc]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


REFERENCE_HEAD = """\
# Controller mappings (MIDI)

Generated from the key table in `instrument/control/mapkeys.py` and the action table in
`instrument/control/actions.py` (`mapdoc.mapping_reference()`); do not edit by hand (`make docs`
rewrites it, and a test fails when it is out of date).

A mapping is a TOML file that binds MIDI controls to parameters of the registry (see
[osc.md](osc.md) for every address) or to actions. Examples: `mappings/generic-8x8.toml`,
`mappings/nanokontrol2.toml`. `endless play --mapping FILE --midi-in PATTERN` uses one; MIDI learn
(`/endless/learn <address>`, then move a control) adds controls to it and saves it.
Unknown keys, out-of-range numbers and unknown targets fail at start, naming the file, the
control and what is allowed.

```toml
version = 1
name = "my controller"
channel = 1

[[control]]
cc = 0
target = "/endless/slot/1/gain"   # the fader taper of the parameter, pickup on
feedback = true                   # motor fader / LED ring follows changes from elsewhere

[[control]]
cc14 = 1                          # MSB CC 1, LSB CC 33
target = "/endless/xfade"
min = 0.5
max = 12
curve = "log"

[[control]]
cc = 16
mode = "twos_complement"          # a relative encoder
target = "/endless/morph/position"

[[control]]
note = 48
target = "/endless/slot/1/mute"   # a press toggles it; the button LED shows it
feedback = true

[[control]]
note = 50
target = "record"                 # an action: a press starts or stops recording

[[control]]
note = 51
target = "learn"                  # an action with its OSC arguments: the next control
args = ["/endless/slot/1/gain"]   # that moves is bound to slot 1's gain

[[control]]
cc = 60
target = "preset/next"            # a CC button steps through the presets
glide = 2.0

[presets]                         # a sequencer's notes and program changes recall presets
channel = 16
program_change = true
notes = { 36 = "rain-at-dawn", 38 = "night-city" }
glide = 4.0
```
"""

REFERENCE_TAIL = f"""\
## Curves

- `param` (default): the parameter's own /normalized taper between min and max: the square-law
  fader for dB gains (0.707 of the travel is 0 dB), a log taper for times, even steps for choices.
- `linear`: min + (max - min) x.
- `log`: min (max / min)^x: equal ratios per step (times, frequencies); min and max of one sign.
- `exp`: min + (max - min) (e^({EXP_K:g}x) - 1) / (e^{EXP_K:g} - 1): fine at the low end, for any range.

## Relative encoders (`mode`)

| mode | up | down | also called |
|---|---|---|---|
| `twos_complement` | 1, 2, ... | 127, 126, ... | 2's complement |
| `binary_offset` | 65, 66, ... | 63, 62, ... | offset 64, bin offset |
| `sign_magnitude` | 1, 2, ... | 65, 66, ... | signed bit (bit 6 set: down) |

Each tick moves the parameter by `step` of its travel (default 1/128); an encoder never jumps.
Check the controller's manual (or watch what it sends) for which one it uses.

## Soft takeover

An absolute control (`takeover = "pickup"`, the default) drives its parameter while the parameter
still holds the value it last set. When something else changed it (OSC, a preset, another control)
the control waits until it reaches the parameter's position, or crosses it, and then takes over,
so a knob left elsewhere never makes the parameter jump. A parameter outside the control's min..max
is picked up at the nearer end. `takeover = "jump"` applies every move at once.

## Buttons, notes and program changes

A CC button presses when its value goes to 64 or more and releases below 64; a note presses on
note-on (velocity > 0) and releases on note-off. Switch targets (mute, solo, autolevel) toggle on
a press (`button = "toggle"`) or follow the button (`"momentary"`); triggers (`slot/N/next`,
`slot/N/regenerate`, ...) fire on a press; `value` sets a fixed value on a press. A note on a
number target sets it from the velocity; a program change from the program number (0..127).

## 14-bit CC and NRPN

`cc14 = N` takes the MSB on CC N and the LSB on CC N + 32 and applies when the LSB arrives; a
controller that sends MSBs alone is recognised at its second MSB and applied per MSB from then on.
`nrpn = N` listens for CC 99 = N / 128, CC 98 = N % 128, then the data on CC 6 (MSB) and CC 38
(LSB): `bits = 14` applies on the LSB, `bits = 7` on the MSB; CC 96/97 step it by `step`.
Selecting an RPN (CC 101/100) stops data entry reaching NRPN controls.

## Feedback

With `feedback = true` (and `--midi-out PATTERN`) every change of the target, from anywhere, is
sent back in the control's own form: CC value, 14-bit MSB+LSB pair, NRPN sequence, or a note on
(velocity = position) / note off for button LEDs. A control is not sent its own absolute moves
back (a motor fader would fight the hand); relative encoders are (their LED ring follows). When a
feedback port appears, every feedback control is sent its current value.

## Ports

`--midi-in PATTERN` (repeatable) opens every input whose name contains PATTERN (any case) or
matches it as a regular expression; `--midi-out PATTERN` likewise for feedback. A port that
vanishes (unplugged, its program quit) is reported and opened again when it returns; a pattern
that matches nothing yet waits for its port. `--midi-virtual` also opens virtual ports
(`endless:in`, `endless-feedback:out`) for sequencers and DAWs to connect to. Messages are
time-stamped on arrival. With JACK MIDI (no ALSA sequencer), set
`MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK`.

## MIDI learn

`/endless/learn <address or action>` waits for the next control: a note, a program change, or a
CC (after {LEARN_WINDOW:g} s it decides between 7-bit CC, 14-bit CC when CC N and N + 32 both moved, and
NRPN when CC 99/98 came with data). The new control replaces any earlier binding of the same
control and the mapping file is saved (atomically; appended when nothing is replaced). Without
`--mapping`, learned controls go to `learned.toml` in the user data folder. Relative encoders are
learned as absolute: set `mode` in the file. `/endless/learn preset/recall NAME` learns a preset
button; `/endless/learn` with no argument cancels.
"""


def mapping_reference() -> str:
    """The mapping format reference (`docs/mappings.md`)."""
    lines = [REFERENCE_HEAD, "## Top-level keys", "", *_table("file"), "",
             "## `[[control]]` keys", "", "Each control has exactly one of `cc`, `cc14`, `nrpn`, `note`, "
             "`program`, and a `target`. The column *for* says which controls and targets a key is for; a key "
             "set where it does nothing is refused. Targets, by kind:", "",
             *[f"- {kind}: {words}" for kind, words in KINDS.items()], "- an action: below", "",
             *_table("control"), "",
             "## Actions", "", "A control (a press: note-on, a CC going to 64 or more, a program change) calls an "
             "action with `args` when given, else with `preset` and then `glide`, where given; on `preset/recall` "
             "from a program change without `preset`, the program number + 1 is the preset. The arguments are "
             "those of the OSC message (see [osc.md](osc.md)).", "",
             "| target | args | what it does |", "|---|---|---|",
             *[f"| `{a.path}` | {a.args or '-'} | {a.doc} |" for a in ACTIONS], "",
             "Triggers of the registry (`slot/N/next`, `slot/N/flush`, `slot/N/regenerate`) are targets too.", "",
             "## `[presets]` keys", "", *_table("presets"), "", REFERENCE_TAIL]
    return "\n".join(lines)
