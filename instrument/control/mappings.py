"""Controller mappings: a versioned TOML format that binds MIDI controls to registry parameters and
actions, the decoders (7-bit CC, 14-bit CC, NRPN, notes, program change, relative encoders), soft
takeover, feedback encoding, and the generated reference (`docs/mappings.md`).

Everything here is pure: raw MIDI bytes in, parameter values out, on the control thread.
`instrument/control/midi.py` owns the ports and threads.

>>> reg = Registry(slots=2)
>>> m = parse_mapping('version = 1\\n[[control]]\\ncc = 7\\ntarget = "/endless/slot/1/gain"\\n'
...                   'takeover = "jump"\\n', "demo.toml", reg)
>>> surface = Surface(m, reg)
>>> surface.feed((0xB0, 7, 127))
[Hit(index=0, kind='abs', x=1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from instrument.control.tomlfile import check_keys, read_versioned, toml_value
from instrument.errors import ConfigError, ParamError
from instrument.params import DEFAULT_PREFIX, Param, Ref, Registry, Value, as_float

if TYPE_CHECKING:
    from instrument.engine import Engine

VERSION = 1
Source = Literal["cc", "cc14", "nrpn", "note", "program"]
SOURCES: tuple[Source, ...] = ("cc", "cc14", "nrpn", "note", "program")
CURVES = ("param", "linear", "log", "exp")
MODES = ("absolute", "twos_complement", "binary_offset", "sign_magnitude")
TAKEOVERS = ("pickup", "jump")
BUTTONS = ("toggle", "momentary")
ACTIONS: dict[str, str] = {
    "preset/recall": "Recall `preset` (a name or a number in the preset list). On `program = \"any\"` "
                     "without `preset`, program change N recalls preset number N + 1.",
    "preset/arm": "Pre-generate `preset`'s clips so its recall plays new material at once.",
    "preset/next": "Recall the next preset in the list (after the last one recalled).",
    "preset/previous": "Recall the previous preset in the list.",
}
EXP_K = 4.0  # the `exp` curve's bend: (e^(k x) - 1) / (e^k - 1)
PICKUP_TOLERANCE = 1.5 / 127  # a control this close to the parameter's position picks it up
LEARN_WINDOW = 0.25  # seconds of CC messages MIDI learn looks at to tell CC, 14-bit CC and NRPN apart

HitKind = Literal["abs", "rel", "press", "release", "program"]
Midi = Sequence[int]  # one message's bytes: (status, data1[, data2])
ActionSink = Callable[[str, str | int | None, float | None], None]  # (action, preset, glide)


_SEE = " (see docs/mappings.md)"


# == the format: one table of keys, read by the parser and by the generated reference =============
@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str
    doc: str


FILE_KEYS = (
    Key("version", "int", "required", f"Format version; this is version {VERSION}."),
    Key("name", "text", '""', "What the mapping is for (shown in logs)."),
    Key("description", "text", '""', "Free text."),
    Key("channel", "1..16 or \"any\"", '"any"', "Default MIDI channel of every control below."),
    Key("control", "array of tables", "[]", "The controls: `[[control]]`, keys below."),
    Key("presets", "table", "none", "Preset triggers from a sequencer or program change: keys below."),
)
CONTROL_KEYS = (
    Key("cc", "0..127", "-", "A 7-bit control change (absolute, or a relative encoder: see `mode`)."),
    Key("cc14", "0..31", "-", "A 14-bit control change: MSB on this controller, LSB on controller + 32."),
    Key("nrpn", "0..16383", "-", "An NRPN (parameter number = CC 99 x 128 + CC 98; data on CC 6 and 38; "
                                 "CC 96/97 step it)."),
    Key("note", "0..127", "-", "A note: note-on presses (velocity is the value), note-off releases."),
    Key("program", "0..127 or \"any\"", "-", "A program change."),
    Key("channel", "1..16 or \"any\"", "the file's", "MIDI channel of this control."),
    Key("target", "text", "required", "A registry address (`/endless/slot/1/gain`, or without the prefix: "
                                      "`slot/1/next`) or an action (below)."),
    Key("min", "number", "the parameter's", "Value at the control's low end (real units; above `max` "
                                            "inverts the control)."),
    Key("max", "number", "the parameter's", "Value at the control's high end."),
    Key("curve", " \\| ".join(CURVES), '"param"', "How the control's travel maps onto min..max (below)."),
    Key("mode", " \\| ".join(MODES), '"absolute"', "`cc` only: absolute, or one of the relative-encoder "
                                                  "encodings (below)."),
    Key("step", "number > 0", "1/128", "Relative encoders and NRPN increments: travel per tick (0..1 is "
                                       "the whole range)."),
    Key("takeover", " \\| ".join(TAKEOVERS), '"pickup"', "Absolute controls: `pickup` waits until the control "
                                                         "reaches the parameter's value (no jump)."),
    Key("button", " \\| ".join(BUTTONS), '"toggle"', "Switch targets: a press flips it, or it follows "
                                                     "the button."),
    Key("value", "any", "-", "Set the target to this value on a press (e.g. `morph/mode` `\"xy\"`, a "
                             "prompt)."),
    Key("bits", "7 \\| 14", "14", "`nrpn` only: 14 applies on the data LSB (CC 38), 7 on the MSB (CC 6)."),
    Key("preset", "text or number", "-", "Preset actions: which preset."),
    Key("glide", "seconds", "the preset's", "`preset/recall`: glide time of the recall."),
    Key("feedback", "bool", "false", "Send the target's value back out (LEDs, motor faders, LED rings)."),
    Key("label", "text", '""', "A name for the control (documentation only)."),
)
PRESET_KEYS = (
    Key("channel", "1..16 or \"any\"", "the file's", "Channel of the preset notes and program changes."),
    Key("program_change", "bool", "false", "Program change N recalls preset number N + 1."),
    Key("notes", "table note -> preset", "{}", "Note number -> preset name or number, e.g. "
                                                 "`{ 36 = \"dawn\", 38 = \"storm\" }`."),
    Key("glide", "seconds", "the preset's", "Glide time of these recalls."),
)


# == bindings =======================================================================================
@dataclass(frozen=True)
class Binding:
    """One control bound to one target, as written in the file (channel 0-based, None: any)."""

    source: Source
    number: int | None  # None: `program = "any"`
    target: str
    channel: int | None = None
    min: float | None = None
    max: float | None = None
    curve: str = "param"
    mode: str = "absolute"
    step: float = 1 / 128
    takeover: str = "pickup"
    button: str = "toggle"
    value: Value | None = None
    bits: int = 14
    preset: str | int | None = None
    glide: float | None = None
    feedback: bool = False
    label: str = ""

    def same_control(self, other: Binding) -> bool:
        return (self.source, self.number, self.channel) == (other.source, other.number, other.channel)

    def describe(self) -> str:
        num = "any" if self.number is None else str(self.number)
        ch = "any channel" if self.channel is None else f"channel {self.channel + 1}"
        return f"{self.source} {num} ({ch}) -> {self.target}"


@dataclass(frozen=True)
class PresetTriggers:
    """The `[presets]` table: preset recalls from notes and program changes."""

    channel: int | None = None
    program_change: bool = False
    notes: tuple[tuple[int, str | int], ...] = ()
    glide: float | None = None

    def bindings(self) -> list[Binding]:
        out = [Binding("note", n, "preset/recall", self.channel, preset=p, glide=self.glide) for n, p in self.notes]
        if self.program_change:
            out.append(Binding("program", None, "preset/recall", self.channel, glide=self.glide))
        return out


@dataclass
class Mapping:
    path: Path | None = None
    name: str = ""
    description: str = ""
    channel: int | None = None
    controls: list[Binding] = field(default_factory=list)
    presets: PresetTriggers | None = None

    @property
    def bindings(self) -> list[Binding]:
        return self.controls + (self.presets.bindings() if self.presets is not None else [])


# == reading ========================================================================================
def load_mapping(path: Path, registry: Registry) -> Mapping:
    """Read and check a mapping file; every problem names the file, the key and what is allowed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the mapping ({e.strerror}); see mappings/ for examples") from None
    m = parse_mapping(text, str(path), registry)
    m.path = path
    return m


def parse_mapping(text: str, where: str, registry: Registry) -> Mapping:
    doc = read_versioned(text, where, (k.name for k in FILE_KEYS), VERSION, ConfigError, _SEE,
                         f" (put `version = {VERSION}` at the top)")
    channel = _channel(doc.get("channel", "any"), f"{where}: channel")
    m = Mapping(None, _text(doc, "name", where), _text(doc, "description", where), channel)
    controls = doc.get("control", [])
    if not isinstance(controls, list) or not all(isinstance(c, dict) for c in controls):
        raise ConfigError(f"{where}: control must be an array of tables: write each as [[control]]")
    for i, t in enumerate(controls):
        b = parse_control(t, f"{where}: [[control]] #{i + 1}", channel)
        check_binding(b, registry, f"{where}: [[control]] #{i + 1}")
        m.controls.append(b)
    if "presets" in doc:
        m.presets = _preset_triggers(doc["presets"], f"{where}: [presets]", channel)
    return m


def parse_control(t: dict[str, Any], where: str, file_channel: int | None = None) -> Binding:
    """One `[[control]]` table (types and ranges; `check_binding` checks it against the registry)."""
    _keys(t, CONTROL_KEYS, where)
    given = [s for s in SOURCES if s in t]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(SOURCES)} (got {', '.join(given) or 'none'})")
    src: Source = given[0]  # type: ignore[assignment]
    raw = t[src]
    number: int | None
    if src == "program" and raw == "any":
        number = None
    else:
        top = {"cc": 127, "cc14": 31, "nrpn": 16383, "note": 127, "program": 127}[src]
        number = _int(raw, f"{where}: {src}", 0, top, '"any"' if src == "program" else "")
    if "target" not in t:
        raise ConfigError(f"{where}: target is missing: a registry address like \"/endless/slot/1/gain\" or "
                          f"an action ({', '.join(ACTIONS)})")
    b = Binding(src, number, _text(t, "target", where),
                _channel(t.get("channel", "any" if file_channel is None else file_channel + 1), f"{where}: channel"))
    opts: dict[str, Any] = {}
    for k in ("min", "max", "step", "glide"):
        if k in t:
            opts[k] = _num(t[k], f"{where}: {k}")
    for k, choices in (("curve", CURVES), ("mode", MODES), ("takeover", TAKEOVERS), ("button", BUTTONS)):
        if k in t:
            if t[k] not in choices:
                raise ConfigError(f"{where}: {k} = {t[k]!r}: allowed {', '.join(choices)}")
            opts[k] = t[k]
    if "bits" in t:
        if t["bits"] not in (7, 14) or isinstance(t["bits"], bool):
            raise ConfigError(f"{where}: bits = {t['bits']!r}: allowed 7 or 14")
        opts["bits"] = t["bits"]
    if "feedback" in t:
        if not isinstance(t["feedback"], bool):
            raise ConfigError(f"{where}: feedback = {t['feedback']!r}: allowed true or false")
        opts["feedback"] = t["feedback"]
    if "preset" in t:
        opts["preset"] = _preset_ref(t["preset"], f"{where}: preset")
    if "value" in t:
        opts["value"] = t["value"]
    if "label" in t:
        opts["label"] = _text(t, "label", where)
    return replace(b, **opts)


def check_binding(b: Binding, registry: Registry, where: str) -> None:
    """Check a binding against the registry: its target exists and every option suits it."""
    def only(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {key}: {why}")

    given = {k for k in ("min", "max", "curve", "mode", "takeover", "button", "value", "bits", "preset",
                         "glide", "feedback") if getattr(b, k) != getattr(_DEFAULT, k)}
    only(b.step > 0, "step", f"{b.step:g}: must be > 0")
    only(b.source == "nrpn" or "bits" not in given, "bits", "only for nrpn")
    only(b.source == "cc" or "mode" not in given, "mode", "relative modes are for cc (7-bit encoders)")
    only(b.number is not None or b.target == "preset/recall", "program",
         "\"any\" only with target = \"preset/recall\"")
    if b.target in ACTIONS:
        only(not given - {"preset", "glide"}, ", ".join(sorted(given - {"preset", "glide"})) or "-",
             f"not used by the action {b.target} (it takes preset, glide)")
        only("preset" not in given or b.target in ("preset/recall", "preset/arm"), "preset",
             f"{b.target} steps through the list and takes no preset")
        only("glide" not in given or b.target != "preset/arm", "glide", "preset/arm does not recall")
        only(b.target != "preset/arm" or b.preset is not None, "preset", "preset/arm needs preset = NAME")
        only(b.target != "preset/recall" or b.preset is not None or b.source == "program", "preset",
             "preset/recall needs preset = NAME (or a program-change source)")
        return
    if slot_beyond(b.target, registry):  # a control for slot 7 on a 4-slot instrument: checked, then unused
        registry = Registry(slots=16, prefix=registry.prefix, params=registry.params)
    try:
        ref = resolve_target(b.target, registry)
    except ParamError as e:
        raise ConfigError(f"{where}: target {b.target!r}: {e}; or an action: {', '.join(ACTIONS)}") from None
    p = ref.param
    only("preset" not in given and "glide" not in given, "preset/glide", "only for preset actions")
    only(p.kind not in ("weights",), "target", f"{p.key} takes a list of numbers: not mappable to one control")
    if b.value is not None:
        only(p.kind != "trigger", "value", f"{p.key} is a trigger: it takes no value")
        try:
            registry.check(p, b.value, f"value for {p.key}")
        except ParamError as e:
            raise ConfigError(f"{where}: {e}") from None
    only(p.kind != "text" or b.value is not None, "value", f"{p.key} is text: give value = \"...\" to set "
                                                          "on a press")
    continuous = b.value is None and p.kind in ("float", "int", "enum")
    only(continuous or not given & {"min", "max", "curve", "mode", "takeover"},
         ", ".join(sorted(given & {"min", "max", "curve", "mode", "takeover"})),
         f"only for number and choice targets without value ({p.key} is a {p.kind})")
    only(p.kind == "bool" and b.value is None or "button" not in given, "button", "only for switch targets")
    only(p.kind not in ("enum",) or not given & {"min", "max"} and b.curve == "param", "min/max/curve",
         f"{p.key} is a choice: the control's travel picks among {', '.join(p.choices)}")
    if continuous and p.kind != "enum":
        assert p.min is not None and p.max is not None
        lo, hi = _bounds(b, p)
        for k, v in (("min", lo), ("max", hi)):
            only(p.min <= v <= p.max, k, f"{v:g} out of range: {p.key} allows {p.min:g}..{p.max:g}")
        only(lo != hi, "min/max", "must differ")
        only(b.curve != "log" or lo * hi > 0, "curve", f"log needs min and max of one sign, not 0 (have {lo:g}, "
                                                       f"{hi:g}): use exp or linear")


_DEFAULT = Binding("cc", 0, "")


def slot_beyond(target: str, registry: Registry) -> bool:
    """The target is a slot this instrument does not have (but an instrument could: 1..16)."""
    for prefix in (registry.prefix, DEFAULT_PREFIX):
        if target.startswith(prefix + "/"):
            target = target[len(prefix) + 1:]
            break
    path = target
    parts = path.split("/")
    return len(parts) > 2 and parts[0] == "slot" and parts[1].isdigit() and registry.slots < int(parts[1]) <= 16


def resolve_target(target: str, registry: Registry) -> Ref:
    """A registry address with or without the prefix; /normalized is accepted and ignored. Mapping
    files say `/endless/...`; an instrument started with another prefix reads them as its own."""
    if target.startswith(DEFAULT_PREFIX + "/"):
        target = target[len(DEFAULT_PREFIX) + 1:]
    addr = target if target.startswith("/") else f"{registry.prefix}/{target}"
    ref = registry.resolve(addr)
    return Ref(ref.param, ref.slot, False)


def _preset_triggers(t: object, where: str, file_channel: int | None) -> PresetTriggers:
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: must be a table")
    _keys(t, PRESET_KEYS, where)
    notes_t = t.get("notes", {})
    if not isinstance(notes_t, dict):
        raise ConfigError(f"{where}: notes must be a table like {{ 36 = \"dawn\" }}")
    notes = tuple((_int(_int_text(k, f"{where}: notes"), f"{where}: notes", 0, 127),
                   _preset_ref(v, f"{where}: notes.{k}")) for k, v in notes_t.items())
    pc = t.get("program_change", False)
    if not isinstance(pc, bool):
        raise ConfigError(f"{where}: program_change = {pc!r}: allowed true or false")
    glide = _num(t["glide"], f"{where}: glide") if "glide" in t else None
    if glide is not None and glide < 0:
        raise ConfigError(f"{where}: glide = {glide:g}: must be >= 0 seconds")
    ch = _channel(t.get("channel", "any" if file_channel is None else file_channel + 1), f"{where}: channel")
    return PresetTriggers(ch, pc, notes, glide)


def _keys(t: dict[str, Any], allowed: Sequence[Key], where: str) -> None:
    check_keys(t, (k.name for k in allowed), where, ConfigError, _SEE)


def _channel(v: object, where: str) -> int | None:
    if v == "any":
        return None
    return _int(v, where, 1, 16, '"any"') - 1


def _int(v: object, where: str, lo: int, hi: int, alt: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{where} = {v!r}: allowed a whole number {lo}..{hi}{' or ' + alt if alt else ''}")
    return v


def _int_text(k: str, where: str) -> int:
    try:
        return int(k)
    except ValueError:
        raise ConfigError(f"{where}: key {k!r} is not a note number 0..127") from None


def _num(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where} = {v!r}: allowed a number")
    return float(v)


def _text(t: dict[str, Any], key: str, where: str) -> str:
    v = t.get(key, "")
    if not isinstance(v, str):
        raise ConfigError(f"{where}: {key} = {v!r}: allowed text in quotes")
    return v


def _preset_ref(v: object, where: str) -> str | int:
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return v
    raise ConfigError(f"{where} = {v!r}: allowed a preset name or a number >= 1")


# == writing (MIDI learn saves through these; writes are atomic) ===================================
def format_control(b: Binding) -> str:
    """A `[[control]]` block, writing only what differs from the defaults."""
    lines = ["[[control]]"]
    if b.label:
        lines.append(f"label = {toml_value(b.label)}")
    lines.append(f"{b.source} = {toml_value('any' if b.number is None else b.number)}")
    lines.append(f"channel = {toml_value('any' if b.channel is None else b.channel + 1)}")
    lines.append(f"target = {toml_value(b.target)}")
    for k in ("min", "max", "curve", "mode", "step", "takeover", "button", "value", "bits", "preset", "glide",
              "feedback"):
        v = getattr(b, k)
        if v != getattr(_DEFAULT, k) and v is not None:
            lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def mapping_to_toml(m: Mapping) -> str:
    out = [f"# Endless controller mapping (docs/mappings.md). Rewritten by MIDI learn.\nversion = {VERSION}"]
    if m.name:
        out.append(f"name = {toml_value(m.name)}")
    if m.description:
        out.append(f"description = {toml_value(m.description)}")
    out.append(f"channel = {toml_value('any' if m.channel is None else m.channel + 1)}")
    if m.presets is not None:
        p = m.presets
        out.append("\n[presets]")
        out.append(f"channel = {toml_value('any' if p.channel is None else p.channel + 1)}")
        out.append(f"program_change = {toml_value(p.program_change)}")
        if p.glide is not None:
            out.append(f"glide = {toml_value(p.glide)}")
        out.append(f"notes = {toml_value(dict(p.notes))}")
    text = "\n".join(out) + "\n"
    for b in m.controls:
        text += "\n" + format_control(b)
    return text


# == decoding =======================================================================================
@dataclass(frozen=True)
class Hit:
    """A decoded control event for binding `index`: `abs` x in 0..1; `rel` x signed ticks; `press` and
    `release` x = velocity 0..1; `program` x = the program number."""

    index: int
    kind: HitKind
    x: float


def relative_ticks(mode: str, v: int) -> int:
    """Signed ticks of a relative encoder's 7-bit value.

    >>> [relative_ticks("twos_complement", v) for v in (1, 3, 127, 125)]
    [1, 3, -1, -3]
    >>> [relative_ticks("binary_offset", v) for v in (65, 63)], [relative_ticks("sign_magnitude", v) for v in (1, 65)]
    ([1, -1], [1, -1])
    """
    if mode == "twos_complement":
        return v - 128 if v >= 64 else v
    if mode == "binary_offset":
        return v - 64
    if mode == "sign_magnitude":
        return -(v & 0x3F) if v & 0x40 else v & 0x3F
    raise ValueError(mode)


class Decoder:
    """Turns MIDI bytes into `Hit`s for a list of bindings; keeps the per-channel 14-bit and NRPN state.

    14-bit CC: the value applies when the LSB arrives (controllers send MSB, then LSB); a controller
    that sends MSBs alone is recognised at its second MSB, and each MSB applies from then on.
    NRPN: CC 99/98 select the parameter, CC 6 (+ CC 38 for 14 bits) carry the value, CC 96/97 step
    it; selecting an RPN (CC 101/100) stops data reaching NRPN bindings until an NRPN is selected.
    """

    def __init__(self, bindings: Sequence[Binding]) -> None:
        self.tables: dict[Source, dict[tuple[int | None, int | None], list[int]]] = {s: {} for s in SOURCES}
        for i, b in enumerate(bindings):
            self.tables[b.source].setdefault((b.channel, b.number), []).append(i)
        self.bindings = list(bindings)
        self._msb: dict[tuple[int, int], int] = {}  # (channel, MSB controller) -> last MSB
        self._pending: set[tuple[int, int]] = set()  # an MSB waits for its LSB
        self._msb_only: set[tuple[int, int]] = set()
        self._nrpn: dict[int, list[int | None]] = {}  # channel -> [param MSB, param LSB, data MSB, rpn?]

    def _find(self, src: Source, ch: int, num: int | None) -> list[int]:
        t = self.tables[src]
        return t.get((ch, num), []) + t.get((None, num), [])

    def feed(self, data: Midi) -> list[Hit]:
        if len(data) < 2 or data[0] < 0x80 or data[0] >= 0xF0:
            return []
        kind, ch, d1 = data[0] & 0xF0, data[0] & 0x0F, data[1]
        d2 = data[2] if len(data) > 2 else 0
        if kind == 0xB0:
            return self._cc(ch, d1, d2)
        if kind == 0x90 and d2 > 0:
            return [Hit(i, "press", d2 / 127) for i in self._find("note", ch, d1)]
        if kind in (0x80, 0x90):
            return [Hit(i, "release", 0.0) for i in self._find("note", ch, d1)]
        if kind == 0xC0:
            return [Hit(i, "program", float(d1)) for i in self._find("program", ch, d1) + self._find("program", ch, None)]
        return []

    def _cc(self, ch: int, cc: int, v: int) -> list[Hit]:
        hits: list[Hit] = []
        for i in self._find("cc", ch, cc):
            mode = self.bindings[i].mode
            hits.append(Hit(i, "abs", v / 127) if mode == "absolute" else Hit(i, "rel", relative_ticks(mode, v)))
        if cc < 32 and (self.tables["cc14"].get((ch, cc)) or self.tables["cc14"].get((None, cc))):
            key = (ch, cc)
            self._msb[key] = v
            if key in self._msb_only or key in self._pending:
                self._msb_only.add(key)
                hits += [Hit(i, "abs", (v << 7) / 16383) for i in self._find("cc14", ch, cc)]
            else:
                self._pending.add(key)
        elif 32 <= cc < 64 and (ch, cc - 32) in self._msb:
            key = (ch, cc - 32)
            self._pending.discard(key)
            self._msb_only.discard(key)
            hits += [Hit(i, "abs", (self._msb[key] << 7 | v) / 16383) for i in self._find("cc14", ch, cc - 32)]
        if cc in (99, 98, 101, 100, 6, 38, 96, 97) and self.tables["nrpn"]:
            hits += self._nrpn_cc(ch, cc, v)
        return hits

    def _nrpn_cc(self, ch: int, cc: int, v: int) -> list[Hit]:
        st = self._nrpn.setdefault(ch, [None, None, None, 1])
        if cc in (99, 98):
            st[0 if cc == 99 else 1], st[3] = v, 0
            return []
        if cc in (101, 100):
            st[3] = 1
            return []
        if st[3] or st[0] is None or st[1] is None:
            return []
        idx = self._find("nrpn", ch, st[0] << 7 | st[1])
        if cc == 6:
            st[2] = v
            return [Hit(i, "abs", v / 127) for i in idx if self.bindings[i].bits == 7]
        if cc == 38:
            if st[2] is None:
                return []
            return [Hit(i, "abs", (st[2] << 7 | v) / 16383) for i in idx if self.bindings[i].bits == 14]
        return [Hit(i, "rel", 1.0 if cc == 96 else -1.0) for i in idx]


# == applying: curves, takeover, buttons, feedback ==================================================
def _bounds(b: Binding, p: Param) -> tuple[float, float]:
    assert p.min is not None and p.max is not None
    return (p.min if b.min is None else b.min), (p.max if b.max is None else b.max)


def _normalized_bounds(b: Binding, p: Param) -> tuple[float, float]:
    """The /normalized positions of min and max (the whole 0..1 when they are the parameter's own)."""
    return (0.0 if b.min is None else p.to_normalized(b.min)), (1.0 if b.max is None else p.to_normalized(b.max))


def curve_value(b: Binding, p: Param, x: float) -> Value:
    """The parameter value at control position x (0..1), in range for the registry.

    `param` follows the parameter's own /normalized taper (fader law for dB, log for times) between
    min and max; `linear` is min + (max - min) x; `log` is min (max / min)^x; `exp` is
    min + (max - min) (e^(4x) - 1) / (e^4 - 1).
    """
    x = min(1.0, max(0.0, x))
    if p.kind == "enum":
        return p.from_normalized(x)
    lo, hi = _bounds(b, p)
    if b.curve == "param":
        nlo, nhi = _normalized_bounds(b, p)
        v = as_float(p.from_normalized(nlo + (nhi - nlo) * x))
    elif b.curve == "linear":
        v = lo + (hi - lo) * x
    elif b.curve == "log":
        v = lo * (hi / lo) ** x
    else:
        v = lo + (hi - lo) * math.expm1(EXP_K * x) / math.expm1(EXP_K)
    assert p.min is not None and p.max is not None
    v = min(max(lo, hi), max(min(lo, hi), v))
    v = min(p.max, max(p.min, v))
    return int(round(v)) if p.kind == "int" else v


def curve_position(b: Binding, p: Param, value: Value) -> float:
    """The inverse of `curve_value`: where a control must stand to show `value` (clamped to 0..1)."""
    if p.kind == "enum":
        return p.to_normalized(value)
    lo, hi = _bounds(b, p)
    v = as_float(value)
    if b.curve == "param":
        nlo, nhi = _normalized_bounds(b, p)
        x = (p.to_normalized(v) - nlo) / (nhi - nlo)
    elif b.curve == "linear":
        x = (v - lo) / (hi - lo)
    elif b.curve == "log":
        x = math.log(v / lo) / math.log(hi / lo) if v / lo > 0 else 0.0
    else:
        u = (v - lo) / (hi - lo)
        x = math.log1p(max(-0.999999, u) * math.expm1(EXP_K)) / EXP_K
    return min(1.0, max(0.0, x))


@dataclass(frozen=True)
class _Bound:
    binding: Binding
    ref: Ref | None  # None: an action

    @property
    def continuous(self) -> bool:
        return self.ref is not None and self.binding.value is None and self.ref.param.kind in ("float", "int", "enum")


class Surface:
    """A mapping bound to a registry: decodes MIDI, applies it to an engine, encodes feedback.

    Soft takeover needs no listener: a control drives its parameter while the parameter still holds
    the value this control last sent; otherwise it waits until it reaches (or crosses) the
    parameter's position, so a knob that stands elsewhere never makes the parameter jump.
    """

    def __init__(self, mapping: Mapping, registry: Registry) -> None:
        self.mapping = mapping
        self.registry = registry
        self.rebuild()

    def rebuild(self) -> None:
        self.bound: list[_Bound] = []
        self.unused: list[Binding] = []  # controls for slots this instrument does not have
        for b in self.mapping.bindings:
            if slot_beyond(b.target, self.registry):
                self.unused.append(b)
            else:
                self.bound.append(_Bound(b, None if b.target in ACTIONS else resolve_target(b.target, self.registry)))
        self.decoder = Decoder([bd.binding for bd in self.bound])
        # a control change may trigger an action (a preset recall: files), not only set a parameter
        self.cc_actions = any(bd.ref is None and bd.binding.source in ("cc", "cc14", "nrpn") for bd in self.bound)
        self._sent: dict[int, Value] = {}  # binding -> the value it last set
        self._pos: dict[int, float] = {}  # binding -> the position it last set (relative encoders)
        self._prev: dict[int, float] = {}  # binding -> its previous absolute position (crossing)
        self._down: dict[int, bool] = {}  # binding -> button held (CC buttons)
        self._feedback: dict[tuple[str, int | None], list[int]] = {}
        for i, bd in enumerate(self.bound):
            if bd.binding.feedback and bd.ref is not None:
                self._feedback.setdefault((bd.ref.param.key, bd.ref.slot), []).append(i)
        self.applying: int | None = None  # the binding whose change is being applied now

    def add(self, b: Binding) -> bool:
        """Bind a control (MIDI learn): it replaces the bindings of the same control. True if it replaced."""
        check_binding(b, self.registry, "learned control")
        before = len(self.mapping.controls)
        self.mapping.controls = [c for c in self.mapping.controls if not c.same_control(b)] + [b]
        self.rebuild()
        return len(self.mapping.controls) <= before

    def feed(self, data: Midi) -> list[Hit]:
        return self.decoder.feed(data)

    def handle(self, data: Midi, engine: Engine, on_action: ActionSink | None = None) -> int:
        """Decode one message and apply what it means; returns how many changes it made."""
        return sum(self.apply(h, engine, on_action) for h in self.feed(data))

    def apply(self, hit: Hit, engine: Engine, on_action: ActionSink | None = None) -> bool:
        """Apply one hit; raises ParamError (and changes nothing) if the engine refuses it."""
        bd = self.bound[hit.index]
        b = bd.binding
        edge = self._edge(hit)
        if bd.ref is None:
            if edge != "press" or on_action is None:
                return False
            preset = b.preset if b.preset is not None or hit.kind != "program" else int(hit.x) + 1
            on_action(b.target, preset, b.glide)
            return True
        p, ref = bd.ref.param, bd.ref
        value: Value
        if not bd.continuous:
            if p.kind == "bool" and b.value is None and b.button == "momentary":
                if edge is None:
                    return False
                value = edge == "press"
            elif edge != "press":
                return False
            elif p.kind == "bool" and b.value is None:
                value = not engine.values.get((p.key, ref.slot), False)
            else:
                value = 1 if p.kind == "trigger" else self.registry.check(p, b.value)
            return self._set(hit.index, engine, ref, value, echo=True)  # a button's LED shows its own press
        cur = engine.values.get((p.key, ref.slot), p.default)
        ours = hit.index in self._sent and self._sent[hit.index] == cur
        if hit.kind == "rel":
            base = self._pos[hit.index] if ours else curve_position(b, p, cur)
            x = min(1.0, max(0.0, base + hit.x * b.step))
        elif hit.kind == "abs":
            x = hit.x
            prev = self._prev.get(hit.index)
            self._prev[hit.index] = x
            if not ours and b.takeover == "pickup":
                c = curve_position(b, p, cur)
                if abs(x - c) > PICKUP_TOLERANCE and (prev is None or (prev - c) * (x - c) > 0):
                    return False
        elif hit.kind == "press":
            x = hit.x
        elif hit.kind == "program":
            x = hit.x / 127
        else:
            return False
        value = curve_value(b, p, x)
        self._pos[hit.index] = x
        return self._set(hit.index, engine, ref, value, echo=hit.kind != "abs")

    def _edge(self, hit: Hit) -> Literal["press", "release"] | None:
        """A button edge: note-on or program change presses; a CC presses going to 64 or more and
        releases going below."""
        if hit.kind in ("press", "program"):
            return "press"
        if hit.kind == "release":
            return "release"
        if hit.kind == "abs":
            down, was = hit.x >= 0.5, self._down.get(hit.index, False)
            self._down[hit.index] = down
            return None if down == was else "press" if down else "release"
        return None

    def _set(self, i: int, engine: Engine, ref: Ref, value: Value, echo: bool) -> bool:
        if ref.param.kind != "trigger":
            value = self.registry.check(ref.param, value)
        self.applying = None if echo else i  # a motor fader is not sent its own move back
        try:
            engine.set(ref, value)
        finally:
            self.applying = None
        self._sent[i] = value
        return True

    # -- feedback ---------------------------------------------------------------------------------
    def feedback(self, ref: Ref, value: Value) -> list[tuple[int, ...]]:
        """The messages that show `value` on the controls bound to `ref` with feedback = true."""
        out: list[tuple[int, ...]] = []
        for i in self._feedback.get((ref.param.key, ref.slot), ()):
            if i != self.applying:
                out += encode_feedback(self.bound[i].binding, ref.param, value)
        return out

    def feedback_all(self, values: dict[tuple[str, int | None], Value]) -> list[tuple[int, ...]]:
        """Every feedback control's current state (sent when a controller appears)."""
        out: list[tuple[int, ...]] = []
        for (key, slot), idx in self._feedback.items():
            if (key, slot) in values:
                for i in idx:
                    out += encode_feedback(self.bound[i].binding, self.registry[key], values[(key, slot)])
        return out


def encode_feedback(b: Binding, p: Param, value: Value) -> list[tuple[int, ...]]:
    """MIDI messages that move a control to show `value` (motor fader, LED ring, button LED).

    >>> b = Binding("cc14", 7, "/endless/master/gain", 0, curve="linear")
    >>> encode_feedback(b, Registry()["master/gain"], 6.0)
    [(176, 7, 127), (176, 39, 127)]
    """
    if b.value is not None:
        x = 1.0 if value == b.value else 0.0
    elif p.kind == "bool":
        x = 1.0 if value else 0.0
    elif p.kind in ("float", "int", "enum"):
        x = curve_position(b, p, value)
    else:
        return []
    ch = b.channel or 0
    n = b.number or 0
    out: list[tuple[int, ...]] = []
    if b.source == "cc":
        out.append((0xB0 | ch, n, round(x * 127)))
    elif b.source == "cc14":
        v = round(x * 16383)
        out += [(0xB0 | ch, n, v >> 7), (0xB0 | ch, n + 32, v & 0x7F)]
    elif b.source == "nrpn":
        out += [(0xB0 | ch, 99, n >> 7), (0xB0 | ch, 98, n & 0x7F)]
        if b.bits == 7:
            out.append((0xB0 | ch, 6, round(x * 127)))
        else:
            v = round(x * 16383)
            out += [(0xB0 | ch, 6, v >> 7), (0xB0 | ch, 38, v & 0x7F)]
    elif b.source == "note":
        v = round(x * 127)
        out.append((0x90 | ch, n, v) if v > 0 else (0x80 | ch, n, 0))
    return out


# == the generated reference =======================================================================
def _table(keys: Iterable[Key]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{k.name}` | {k.type} | {k.default} | {k.doc} |" for k in keys]
    return rows


REFERENCE_HEAD = """\
# Controller mappings (MIDI)

Generated from `instrument/control/mappings.py` (`mapping_reference()`); do not edit by hand
(`make docs` rewrites it, and a test fails when it is out of date).

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
    """The mapping format reference (`docs/mappings.md`), built from the key tables above."""
    lines = [REFERENCE_HEAD, "## Top-level keys", "", *_table(FILE_KEYS), "",
             "## `[[control]]` keys", "", "Each control has exactly one of `cc`, `cc14`, `nrpn`, `note`, "
             "`program`, and a `target`.", "", *_table(CONTROL_KEYS), "",
             "## Actions", "", "| target | what it does |", "|---|---|",
             *[f"| `{k}` | {v} |" for k, v in ACTIONS.items()], "",
             "Triggers of the registry (`slot/N/next`, `slot/N/flush`, `slot/N/regenerate`) are targets too.", "",
             "## `[presets]` keys", "", *_table(PRESET_KEYS), "", REFERENCE_TAIL]
    return "\n".join(lines)
