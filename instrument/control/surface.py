"""A mapping bound to a registry (`Surface`): decodes MIDI, applies it to an engine (curves, soft
takeover, buttons, actions) and encodes feedback for the controls.

Everything here is pure: MIDI bytes in, parameter changes and feedback bytes out, on the thread
that holds the engine. `instrument/control/midi.py` owns the ports and threads.

>>> from instrument.control.mapfile import parse_mapping
>>> reg = Registry(slots=2)
>>> m = parse_mapping('version = 1\\n[[control]]\\ncc = 7\\ntarget = "/endless/slot/1/gain"\\n'
...                   'takeover = "jump"\\n', "demo.toml", reg)
>>> Surface(m, reg).feed((0xB0, 7, 127))
[Hit(index=0, kind='abs', x=1.0)]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from instrument.control.actions import BY_PATH
from instrument.control.decode import Decoder, Hit, Midi
from instrument.control.mapfile import Binding, Mapping, check_binding, resolve_target, slot_beyond
from instrument.params import Param, Ref, Registry, Value, as_float

if TYPE_CHECKING:
    from instrument.engine import Engine

EXP_K = 4.0  # the `exp` curve's bend: (e^(k x) - 1) / (e^k - 1)
PICKUP_TOLERANCE = 1.5 / 127  # a control this close to the parameter's position picks it up
ActionSink = Callable[[str, tuple[object, ...]], object]  # (action path, OSC-style arguments): Actions.run


# == curves =========================================================================================
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
    lo, hi = b.bounds(p)
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
    lo, hi = b.bounds(p)
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


# == a mapping on an engine =======================================================================
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
                self.bound.append(_Bound(b, None if b.target in BY_PATH else resolve_target(b.target, self.registry)))
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
            on_action(b.target, action_args(b, hit))
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


def action_args(b: Binding, hit: Hit) -> tuple[object, ...]:
    """The arguments a binding calls its action with, as OSC would send them: `args` as given, else
    the preset (for `preset/recall` from a program change without one: the program number + 1) and
    then the glide, each where there is one.

    >>> action_args(Binding("program", None, "preset/recall", glide=2.0), Hit(0, "program", 4.0))
    (5, 2.0)
    """
    if b.args is not None:
        return b.args
    preset = b.preset
    if preset is None and b.target == "preset/recall" and hit.kind == "program":
        preset = int(hit.x) + 1
    return tuple(a for a in (preset, b.glide) if a is not None)


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
