"""The parameter registry: one declarative table of every live parameter.

The mixer, the control-script player, the CLI, presets, OSC feedback, the generated docs and
controller layouts all read this table; nothing lists parameters twice.

Addresses are `<prefix>/<path>` with the slot index (1-based) as a path segment:

>>> reg = Registry(slots=4)
>>> ref = reg.resolve("/endless/slot/2/gain")
>>> (ref.param.key, ref.slot, ref.normalized)
('slot/gain', 1, False)
>>> reg.resolve("/endless/slot/2/gain/normalized").normalized
True
>>> reg.coerce(ref, [-6])
-6.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from instrument.errors import ParamError

Scope = Literal["global", "slot"]
Kind = Literal["float", "int", "bool", "enum", "text", "trigger", "weights"]
Curve = Literal["linear", "fader", "log"]
Target = Literal["mixer", "generator", "transport", "engine"]
Value = float | int | bool | str | tuple[float, ...]

DEFAULT_PREFIX = "/endless"
SILENCE_DB = -60.0  # a fader at or below this is off (amplitude 0)
GLIDE_MAX = 600.0  # seconds: the longest glide a preset, a recall or a mapping may ask for
# The longest prompt (or blend) a slot takes, in characters. TangoFlux's T5 reads 64 tokens of each
# part (~300 characters of English) and drops the rest; 2000 leaves room for a blend of several
# full-length parts, and keeps a request small (a 60 KB prompt once filled the worker's pipe).
PROMPT_MAX_CHARS = 2000


@dataclass(frozen=True)
class Param:
    """One live parameter. `key` is its path with the slot segment removed: `slot/gain`, `xfade`."""

    key: str
    scope: Scope
    kind: Kind
    default: Value
    doc: str
    min: float | None = None
    max: float | None = None
    unit: str = ""
    smoothing: float = 0.0  # seconds over which the mixer glides to a new value (0: at once)
    curve: Curve = "linear"  # how the /normalized form (0..1) maps onto the range
    choices: tuple[str, ...] = ()
    target: Target = "mixer"
    cli: bool = False  # also a command-line flag (--<name>)
    max_chars: int | None = None  # text: the longest value taken

    @property
    def name(self) -> str:
        """The last path segment: `gain` for `slot/gain`."""
        return self.key.rsplit("/", 1)[-1]

    @property
    def path(self) -> str:
        """The address path below the prefix, with `{slot}` where the slot index goes."""
        return "slot/{slot}/" + self.key[5:] if self.scope == "slot" else self.key

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    @property
    def has_normalized(self) -> bool:
        return self.numeric or self.kind == "enum"

    def address(self, prefix: str = DEFAULT_PREFIX, slot: int | None = None) -> str:
        """The OSC address; `slot` is 0-based here and 1-based in the address."""
        if self.scope == "slot":
            if slot is None:
                raise ValueError(f"{self.key} needs a slot")
            return f"{prefix}/slot/{slot + 1}/{self.key[5:]}"
        return f"{prefix}/{self.key}"

    # -- value mapping -------------------------------------------------------------------------
    def from_normalized(self, x: float) -> Value:
        """Map 0..1 onto the parameter's range (fader taper for dB gains, log for times)."""
        x = min(1.0, max(0.0, float(x)))
        if self.kind == "enum":
            return self.choices[min(len(self.choices) - 1, int(x * len(self.choices)))]
        assert self.min is not None and self.max is not None
        if self.curve == "fader":
            # square-law fader: amplitude = 2 x^2, so 0.707 -> 0 dB, 1 -> +6 dB, 0 -> off.
            amp = 2.0 * x * x
            db = SILENCE_DB if amp <= 0 else 20.0 * math.log10(amp)
            value: float = min(self.max, max(self.min, db))
        elif self.curve == "log":
            value = self.min * (self.max / self.min) ** x
        else:
            value = self.min + (self.max - self.min) * x
        return int(round(value)) if self.kind == "int" else value

    def to_normalized(self, value: Value) -> float:
        """The inverse of `from_normalized` (used for feedback to faders)."""
        if self.kind == "enum":
            i = self.choices.index(str(value))
            return (i + 0.5) / len(self.choices)
        assert self.min is not None and self.max is not None
        v = as_float(value)
        if self.curve == "fader":
            return 0.0 if v <= SILENCE_DB else min(1.0, math.sqrt(db_to_amp(v) / 2.0))
        if self.curve == "log":
            return math.log(v / self.min) / math.log(self.max / self.min)
        return (v - self.min) / (self.max - self.min)


def as_float(value: Value) -> float:
    """A number-kind value as a float (the registry has checked its kind)."""
    if isinstance(value, (str, tuple)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def check_glide(value: object, where: str) -> float:
    """A glide time in seconds, 0..GLIDE_MAX: the one range for presets, recalls and mappings.

    >>> check_glide(2, "glide")
    2.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= GLIDE_MAX:
        raise ParamError(f"{where} = {value!r}: allowed seconds 0..{GLIDE_MAX:g}")
    return float(value)


def db_to_amp(db: float) -> float:
    """Fader dB to amplitude; at or below SILENCE_DB the fader is off."""
    return 0.0 if db <= SILENCE_DB else 10.0 ** (db / 20.0)


# The table. Order is the order of the generated docs.
PARAMS: tuple[Param, ...] = (
    # -- master and crossfade ------------------------------------------------------------------
    Param("master/gain", "global", "float", 0.0, "Master gain after the mix, before the limiter.",
          min=SILENCE_DB, max=6.0, unit="dB", smoothing=0.05, curve="fader"),
    Param("xfade", "global", "float", 4.0,
          "Crossfade time T_f between consecutive clips of a slot. Applies live, also to a fade "
          "in progress.", min=0.01, max=30.0, unit="s", curve="log", cli=True),
    Param("curve", "global", "enum", "equal_power",
          "Crossfade curve: equal_power (sin/cos, constant power for different clips) or sin2 "
          "(sin^2/cos^2, constant amplitude for identical material).",
          choices=("equal_power", "sin2"), cli=True),
    Param("autolevel", "global", "bool", True,
          "Scale the mix by 1/sqrt(sum of squared slot gains, at least 1) so the level holds "
          "when slots come and go.", smoothing=0.3),
    # -- morph ---------------------------------------------------------------------------------
    Param("morph/mode", "global", "enum", "off",
          "Morph mode: off (all slots at their own gain), line (position glides across the "
          "slots in order), xy (a pad over slots 1-4 at the corners).",
          choices=("off", "line", "xy"), smoothing=0.1),
    Param("morph/position", "global", "float", 0.0,
          "Line morph position: 0 = slot 1 only, 1 = the last slot only.",
          min=0.0, max=1.0, smoothing=0.1),
    Param("morph/x", "global", "float", 0.5, "XY morph: x (slot 1 and 3 at 0, slot 2 and 4 at 1).",
          min=0.0, max=1.0, smoothing=0.1),
    Param("morph/y", "global", "float", 0.5, "XY morph: y (slot 1 and 2 at 0, slot 3 and 4 at 1).",
          min=0.0, max=1.0, smoothing=0.1),
    # -- transport -----------------------------------------------------------------------------
    Param("tempo", "global", "float", 120.0,
          "Internal tempo (ignored while slaved to MIDI clock, which sets it).", min=20.0, max=300.0,
          unit="bpm", target="transport", cli=True),
    Param("meter", "global", "int", 4, "Beats per bar.", min=1, max=16, target="transport"),
    Param("quantize", "global", "enum", "off",
          "Where prompt changes, next triggers and preset recalls land: at once, or on the next beat or "
          "bar, sample-accurately.", choices=("off", "beat", "bar"), target="engine", cli=True),
    # -- per slot ------------------------------------------------------------------------------
    Param("slot/gain", "slot", "float", 0.0, "Slot fader.", min=SILENCE_DB, max=6.0, unit="dB",
          smoothing=0.03, curve="fader"),
    Param("slot/pan", "slot", "float", 0.0, "Slot balance: -1 left, 0 centre, 1 right (constant power).",
          min=-1.0, max=1.0, smoothing=0.03),
    Param("slot/mute", "slot", "bool", False, "Mute the slot (a 10 ms glide, no click).",
          smoothing=0.01),
    Param("slot/solo", "slot", "bool", False,
          "Solo: while any slot is soloed, only soloed slots sound.", smoothing=0.01),
    Param("slot/next", "slot", "trigger", 0,
          "Crossfade to the next queued clip now (after the fade in progress; ignored with an empty queue)."),
    Param("slot/flush", "slot", "trigger", 0,
          "Drop the slot's queued clips; the playing clip plays on."),
    # -- per slot: generation ------------------------------------------------------------------
    Param("slot/prompt", "slot", "text", "",
          "What the slot generates: text, or a weighted blend 'rain:0.7 | thunder:0.3' (conditioning is "
          "mixed, not audio). A change drops the queued clips, cancels the one in flight, and the first "
          "new clip crossfades in as soon as it is made. Empty: the slot generates nothing. At most "
          f"{PROMPT_MAX_CHARS} characters (the model reads the first 64 tokens of each part).",
          target="generator", max_chars=PROMPT_MAX_CHARS),
    Param("slot/weights", "slot", "weights", (),
          "Live weights of the slot's blend parts, one number >= 0 per part in prompt order (e.g. 0.2 0.8 "
          "for a two-part blend); the conditioning moves, new clips follow.", target="generator"),
    Param("slot/steps", "slot", "int", 25, "Flow-matching steps per clip (fewer: faster, rougher).",
          min=1, max=200, target="generator", cli=True),
    Param("slot/guidance", "slot", "float", 4.5,
          "Classifier-free guidance scale (TangoFlux recommends 3.5-4.5; 1 turns guidance off).",
          min=1.0, max=15.0, target="generator", cli=True),
    Param("slot/seed", "slot", "int", -1,
          "Seed of the slot's clips: -1 draws a new one per clip (reproducible from --seed); N repeats one clip.",
          min=-1, max=2**31 - 1, target="generator"),
    Param("slot/length", "slot", "float", 20.0, "Clip length in seconds (the model's duration token).",
          min=2.0, max=30.0, unit="s", target="generator", cli=True),
    Param("slot/regenerate", "slot", "trigger", 0,
          "Drop the queued clips and make new ones now (same prompt, new seeds).", target="generator"),
    Param("slot/fallback", "slot", "enum", "archive",
          "What the slot plays when generation falls behind (and at once on a prompt change, and while the "
          "model loads): archive (a kept clip whose prompt is among the most similar, until new clips "
          "come), loop (its own clip again) or silence (a fade out).",
          choices=("archive", "loop", "silence"), target="generator", cli=True),
)


@dataclass(frozen=True)
class Ref:
    """A resolved address: the parameter, its slot (0-based, None for globals), normalized form."""

    param: Param
    slot: int | None
    normalized: bool

    def address(self, prefix: str = DEFAULT_PREFIX) -> str:
        a = self.param.address(prefix, self.slot)
        return a + "/normalized" if self.normalized else a


_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


@dataclass
class Registry:
    """The table bound to a slot count and an address prefix; resolves and validates messages."""

    slots: int = 4
    prefix: str = DEFAULT_PREFIX
    params: tuple[Param, ...] = PARAMS
    _by_key: dict[str, Param] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_key = {p.key: p for p in self.params}
        if len(self._by_key) != len(self.params):
            raise ValueError("duplicate parameter keys in the registry")

    def __getitem__(self, key: str) -> Param:
        try:
            return self._by_key[key]
        except KeyError:
            raise ParamError(f"unknown parameter {key!r}: known are {', '.join(self._by_key)}") from None

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def resolve(self, address: str) -> Ref:
        """Turn an OSC address into a `Ref`, or raise ParamError naming what is allowed."""
        if not address.startswith(self.prefix + "/"):
            raise ParamError(f"{address}: addresses start with {self.prefix}/ (see docs/osc.md)")
        parts = address[len(self.prefix) + 1:].split("/")
        normalized = len(parts) > 1 and parts[-1] == "normalized"
        if normalized:
            parts = parts[:-1]
        slot: int | None = None
        if parts[0] == "slot":
            if len(parts) < 3:
                raise ParamError(f"{address}: slot addresses look like {self.prefix}/slot/N/gain")
            slot = self.slot_index(parts[1], address)
            key = "slot/" + "/".join(parts[2:])
        else:
            key = "/".join(parts)
        p = self._by_key.get(key)
        if p is None or (p.scope == "slot") != (slot is not None):
            raise ParamError(f"{address}: unknown address (see docs/osc.md for the address space)")
        if normalized and not p.has_normalized:
            raise ParamError(f"{address}: {p.key} has no /normalized form (it is a {p.kind})")
        return Ref(p, slot, normalized)

    def slot_index(self, text: str, address: str = "") -> int:
        """Parse a 1-based slot segment into a 0-based index."""
        try:
            n = int(text)
        except ValueError:
            n = 0
        if not 1 <= n <= self.slots:
            raise ParamError(f"{address or text}: slot {text!r} out of range: slots are 1..{self.slots}")
        return n - 1

    def coerce(self, ref: Ref, args: Sequence[object]) -> Value:
        """Validate OSC-style arguments for `ref` and return the value in real units.

        Ints and floats are both accepted wherever a number is expected. Out of range is an
        error, never clamped, so a bad message changes nothing.
        """
        p, where = ref.param, ref.address(self.prefix)
        if p.kind == "trigger":
            return 1
        if p.kind == "weights":
            if not 1 <= len(args) <= 16:
                raise ParamError(f"{where}: expected 1 to 16 weights, got {len(args)}")
            ws = tuple(_number(a, where) for a in args)
            if any(w < 0 for w in ws) or not any(w > 0 for w in ws):
                raise ParamError(f"{where}: weights must be >= 0 with at least one > 0, got {list(ws)}")
            return ws
        if len(args) != 1:
            raise ParamError(f"{where}: expected 1 argument, got {len(args)}")
        a = args[0]
        if ref.normalized:
            x = _number(a, where)
            if not 0.0 <= x <= 1.0:
                raise ParamError(f"{where}: {x:g} out of range: /normalized takes 0..1")
            return p.from_normalized(x)
        return self.check(p, a, where)

    def check(self, p: Param, a: object, where: str = "") -> Value:
        """Validate one value in real units (also used for presets and CLI flags)."""
        where = where or p.key
        if p.kind == "bool":
            if isinstance(a, bool):
                return a
            if isinstance(a, (int, float)) and a in (0, 1):
                return bool(a)
            if isinstance(a, str) and a.lower() in _TRUE | _FALSE:
                return a.lower() in _TRUE
            raise ParamError(f"{where}: {a!r} is not a switch value: use 0/1, true/false or on/off")
        if p.kind == "enum":
            if isinstance(a, str) and a in p.choices:
                return a
            if isinstance(a, (int, float)) and not isinstance(a, bool) and float(a).is_integer() \
                    and 0 <= int(a) < len(p.choices):
                return p.choices[int(a)]
            raise ParamError(f"{where}: {a!r} is not one of {', '.join(p.choices)} (or their index)")
        if p.kind == "text":
            if not isinstance(a, str):
                raise ParamError(f"{where}: {_short(a)} is not text")
            if p.max_chars is not None and len(a) > p.max_chars:
                raise ParamError(f"{where}: {_short(a)} is {len(a)} characters: allowed at most {p.max_chars}; "
                                 "shorten it (the model reads only the first 64 tokens of each part)")
            return a
        x = _number(a, where)
        assert p.min is not None and p.max is not None
        if not p.min <= x <= p.max:
            raise ParamError(f"{where}: {x:g} out of range: allowed {p.min:g}..{p.max:g} {p.unit}".rstrip())
        if p.kind == "int":
            if not float(x).is_integer():
                raise ParamError(f"{where}: {x:g} is not a whole number")
            return int(x)
        return float(x)

    def defaults(self) -> dict[tuple[str, int | None], Value]:
        """Every (key, slot) with its default value."""
        out: dict[tuple[str, int | None], Value] = {}
        for p in self.params:
            if p.kind == "trigger":
                continue
            if p.scope == "slot":
                for s in range(self.slots):
                    out[(p.key, s)] = p.default
            else:
                out[(p.key, None)] = p.default
        return out


def _short(a: object) -> str:
    """A value as an error names it: its repr, cut to 40 characters (a refused value may be huge)."""
    text = repr(a)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(a: object, where: str) -> float:
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise ParamError(f"{where}: {a!r} is not a number")
    x = float(a)
    if not math.isfinite(x):
        raise ParamError(f"{where}: {a!r} is not a finite number")
    return x
