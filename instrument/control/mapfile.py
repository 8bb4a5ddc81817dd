"""Mapping files: what they hold (`Binding`, `PresetTriggers`, `Mapping`), reading, checking against
the registry, and writing (MIDI learn saves through `format_control` and `mapping_to_toml`).

The keys, their types and what they apply to are `mapkeys.KEYS`; this module builds on that table
and says nothing about a key that the table says already.

>>> reg = Registry(slots=2)
>>> m = parse_mapping('version = 1\\n[[control]]\\ncc = 7\\ntarget = "slot/1/gain"\\n', "demo.toml", reg)
>>> format_control(m.controls[0]).splitlines()
['[[control]]', 'cc = 7', 'channel = "any"', 'target = "slot/1/gain"']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instrument.control.actions import BY_PATH
from instrument.control.mapkeys import KINDS, SEE, SOURCES, VERSION, Arg, Key, Source, Table, keys, read_table
from instrument.control.tomlfile import read_text, read_versioned, toml_value
from instrument.errors import ConfigError, ParamError
from instrument.params import DEFAULT_PREFIX, Param, Ref, Registry, Value

log = logging.getLogger(__name__)

LEARN_WINDOW = 0.25  # seconds of CC messages MIDI learn looks at to tell CC, 14-bit CC and NRPN apart


# == what a file holds ==============================================================================
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
    args: tuple[Arg, ...] | None = None  # an action's arguments, as given (None: built from preset, glide)

    def same_control(self, other: Binding) -> bool:
        return (self.source, self.number, self.channel) == (other.source, other.number, other.channel)

    def describe(self) -> str:
        num = "any" if self.number is None else str(self.number)
        ch = "any channel" if self.channel is None else f"channel {self.channel + 1}"
        return f"{self.source} {num} ({ch}) -> {self.target}"

    def bounds(self, p: Param) -> tuple[float, float]:
        """The values at the control's two ends: `min` and `max`, else the parameter's own."""
        assert p.min is not None and p.max is not None
        return (p.min if self.min is None else self.min), (p.max if self.max is None else self.max)


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


# Each table's defaults: what the writer leaves out and the reference shows.
DEFAULTS: dict[Table, object] = {"file": Mapping(), "control": Binding("cc", 0, ""), "presets": PresetTriggers()}


# == reading ========================================================================================
def load_mapping(path: Path, registry: Registry) -> Mapping:
    """Read and check a mapping file; every problem names the file, the key and what is allowed."""
    text = read_text(path, "mapping", ConfigError, "; see mappings/ for examples")
    m = parse_mapping(text, str(path), registry)
    m.path = path
    return m


def parse_mapping(text: str, where: str, registry: Registry) -> Mapping:
    doc = read_versioned(text, where, (k.name for k in keys("file")), VERSION, ConfigError, SEE,
                         f" (put `version = {VERSION}` at the top)")
    top = read_table(doc, "file", where)
    controls, presets = top.pop("control", []), top.pop("presets", None)
    m = Mapping(None, **top)
    for i, t in enumerate(controls):
        b = parse_control(t, f"{where}: [[control]] #{i + 1}", m.channel)
        check_binding(b, registry, f"{where}: [[control]] #{i + 1}")
        m.controls.append(b)
    _warn_slots_beyond(m.controls, registry, where)
    if presets is not None:
        vals = read_table(presets, "presets", f"{where}: [presets]")
        m.presets = PresetTriggers(vals.pop("channel", m.channel), **vals)
    return m


def parse_control(t: dict[str, Any], where: str, file_channel: int | None = None) -> Binding:
    """One `[[control]]` table (types and ranges; `check_binding` checks it against the registry)."""
    vals = read_table(t, "control", where)
    given = [s for s in SOURCES if s in vals]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(SOURCES)} (got {', '.join(given) or 'none'})")
    if "target" not in vals:
        raise ConfigError(f"{where}: target is missing: a registry address like \"/endless/slot/1/gain\" or "
                          f"an action ({', '.join(BY_PATH)})")
    src = given[0]
    return Binding(src, vals.pop(src), vals.pop("target"), vals.pop("channel", file_channel), **vals)


# == checking a binding against the registry =======================================================
def check_binding(b: Binding, registry: Registry, where: str) -> None:
    """The target exists, every key `b` sets applies to its control and target (`Key.sources`,
    `Key.targets`), and the values suit the target (ranges, a preset to recall)."""
    if b.number is None and b.target != "preset/recall":
        raise ConfigError(f"{where}: program = \"any\": only with target = \"preset/recall\"")
    ref: Ref | None = None
    if b.target not in BY_PATH:
        if slot_beyond(b.target, registry):  # a control for slot 7 on a 4-slot instrument: checked, then unused
            registry = Registry(slots=16, prefix=registry.prefix, params=registry.params)
        try:
            ref = resolve_target(b.target, registry)
        except ParamError as e:
            raise ConfigError(f"{where}: target {b.target!r}: {e}; or an action: {', '.join(BY_PATH)}") from None
        if ref.param.kind == "weights":
            raise ConfigError(f"{where}: target: {ref.param.key} takes a list of numbers: not mappable to one "
                              "control (send it over OSC)")
    kind = target_kind(b, ref)
    for k in given_keys(b):
        if k.sources and b.source not in k.sources:
            raise ConfigError(f"{where}: {k.name}: only for {' or '.join(k.sources)} controls, not {b.source} "
                              f"({k.doc})")
        if k.targets and kind not in k.targets:
            raise ConfigError(f"{where}: {k.name}: not used by target {b.target} ({KINDS.get(kind, 'an action')}): "
                              f"{k.name} is for {', '.join(KINDS.get(t, t) for t in k.targets)}")
    if ref is None:
        _check_action(b, where)
    else:
        _check_param(b, ref.param, registry, where)


def given_keys(b: Binding) -> list[Key]:
    """The options `b` sets to other than their defaults."""
    d = DEFAULTS["control"]
    return [k for k in keys("control") if hasattr(d, k.name) and k.name not in ("channel", "target")
            and getattr(b, k.name) != getattr(d, k.name)]


def target_kind(b: Binding, ref: Ref | None) -> str:
    """What `b` drives, as `Key.targets` names it: an action's path, "value" (set on a press), or
    the parameter's kind (number, choice, switch, trigger, text)."""
    if ref is None:
        return b.target
    kind = {"float": "number", "int": "number", "enum": "choice", "bool": "switch"}.get(ref.param.kind,
                                                                                         ref.param.kind)
    return "value" if b.value is not None and kind != "trigger" else kind


def _check_action(b: Binding, where: str) -> None:
    if b.args is not None and (b.preset is not None or b.glide is not None):
        raise ConfigError(f"{where}: args: give args, or preset and glide, not both")
    if b.args is None and b.preset is None and (b.target == "preset/arm" or b.target == "preset/recall"
                                                  and b.source != "program"):
        raise ConfigError(f"{where}: preset: {b.target} needs preset = NAME (or args = [NAME]"
                          + (", or a program-change source)" if b.target == "preset/recall" else ")"))


def _check_param(b: Binding, p: Param, registry: Registry, where: str) -> None:
    if b.value is not None:
        try:
            registry.check(p, b.value, f"value for {p.key}")
        except ParamError as e:
            raise ConfigError(f"{where}: {e}") from None
    if p.kind == "text" and b.value is None:
        raise ConfigError(f"{where}: value: {p.key} is text: give value = \"...\" to set on a press")
    if p.numeric and b.value is None:
        assert p.min is not None and p.max is not None
        lo, hi = b.bounds(p)
        for k, v in (("min", lo), ("max", hi)):
            if not p.min <= v <= p.max:
                raise ConfigError(f"{where}: {k}: {v:g} out of range: {p.key} allows {p.min:g}..{p.max:g}")
        if lo == hi:
            raise ConfigError(f"{where}: min/max: must differ (both {lo:g})")
        if b.curve == "log" and lo * hi <= 0:
            raise ConfigError(f"{where}: curve: log needs min and max of one sign, not 0 (have {lo:g}, {hi:g}): "
                              "use exp or linear")


def _warn_slots_beyond(controls: list[Binding], registry: Registry, where: str) -> None:
    """One warning line for the file's controls for slots this instrument does not have: loaded (the
    shipped mappings have slots 5..8 and must load on 4) but unused, so said once, naming each."""
    beyond = [(i, b.target, n) for i, b in enumerate(controls) if (n := _beyond(b.target, registry)) is not None]
    if beyond:
        named = ", ".join(f"[[control]] #{i + 1} ({t})" for i, t, _ in beyond)
        log.warning("%s: %d control(s) for slots this instrument does not have (it has %d slots), unused: %s; "
                    "start with --slots %d to use them", where, len(beyond), registry.slots, named,
                    max(n for _, _, n in beyond))


def slot_beyond(target: str, registry: Registry) -> bool:
    """The target is a slot this instrument does not have (but an instrument could: 1..16)."""
    return _beyond(target, registry) is not None


def _beyond(target: str, registry: Registry) -> int | None:
    """The target's slot number (1-based) if this instrument does not have it but one could (1..16)."""
    for prefix in (registry.prefix, DEFAULT_PREFIX):
        if target.startswith(prefix + "/"):
            target = target[len(prefix) + 1:]
            break
    parts = target.split("/")
    ok = len(parts) > 2 and parts[0] == "slot" and parts[1].isdigit() and registry.slots < int(parts[1]) <= 16
    return int(parts[1]) if ok else None


def resolve_target(target: str, registry: Registry) -> Ref:
    """A registry address with or without the prefix; /normalized is accepted and ignored. Mapping
    files say `/endless/...`; an instrument started with another prefix reads them as its own."""
    if target.startswith(DEFAULT_PREFIX + "/"):
        target = target[len(DEFAULT_PREFIX) + 1:]
    addr = target if target.startswith("/") else f"{registry.prefix}/{target}"
    ref = registry.resolve(addr)
    return Ref(ref.param, ref.slot, False)


# == writing (writes are atomic: `tomlfile.write_atomic`) ===========================================
def format_control(b: Binding) -> str:
    """A `[[control]]` block: its source, channel and target, and every other key not at its default."""
    return "\n".join(["[[control]]", *_lines(b, "control")]) + "\n"


def mapping_to_toml(m: Mapping) -> str:
    out = [f"# Endless controller mapping (docs/mappings.md). Rewritten by MIDI learn.\nversion = {VERSION}",
           *_lines(m, "file")]
    if m.presets is not None:
        out += ["\n[presets]", *_lines(m.presets, "presets")]
    return "\n".join(out) + "\n" + "".join("\n" + format_control(b) for b in m.controls)


def _lines(obj: object, table: Table) -> list[str]:
    """`obj`'s keys of `table` as TOML lines, in the table's order."""
    out: list[str] = []
    default = DEFAULTS[table]
    for k in keys(table):
        if isinstance(obj, Binding) and k.name == obj.source:
            out.append(f"{k.name} = {toml_value('any' if obj.number is None else obj.number)}")
        if not hasattr(default, k.name) or k.type in ("controls", "presets"):
            continue
        v = getattr(obj, k.name)
        if k.type == "channel":  # always written: absent means the file's, which may differ
            out.append(f"{k.name} = {toml_value('any' if v is None else v + 1)}")
        elif k.name == "target" or (v != getattr(default, k.name) and v is not None):
            out.append(f"{k.name} = {toml_value(dict(v) if k.type == 'notes' else v)}")
    return out
