"""What every layout holds, from the registry, and the checks its messages must pass.

Each layout (Max, TouchOSC, Pd) shows the same sections: connection, one strip per slot, the mix
(master, crossfade, morph), transport, presets and recording. A `Control` names the address it
sends with the OSC type tags it sends, and the address it listens to for the instrument's feedback
(the echo of an accepted change, or a status value). Layout tests run every control through
`check_send` and `check_receive`, so a layout cannot send what the instrument would refuse.

>>> from instrument.params import Registry
>>> [s.title for s in sections(Registry(slots=2))]
['connection', 'slot 1', 'slot 2', 'mix', 'morph', 'transport', 'presets', 'record']
>>> check_send(Registry(slots=2), "/endless/slot/3/gain/normalized", "f")
"/endless/slot/3/gain/normalized: slot '3' out of range: slots are 1..2"
"""

from __future__ import annotations

from dataclasses import dataclass

from instrument.control.actions import BY_PATH
from instrument.errors import ParamError
from instrument.params import Param, Registry

LAYOUT_SLOTS = 4  # the slots a layout shows (the instrument's default; the XY pad covers slots 1-4)
DEFAULT_PORT = 9000  # where `endless play` listens for OSC
REPLY_PORT = 9001  # where the layouts listen for replies and feedback (they subscribe with it)
RENEW_S = 30  # a layout renews its subscription this often (it lasts 60 s over UDP)

# Widgets a layout may place; each format draws them its own way.
WIDGETS = ("fader", "toggle", "button", "text", "menu", "xy", "meter", "number", "label")

# What the server itself sends (besides echoes and status): replies to a sender or a subscriber.
REPLIES = ("pong", "done", "error", "record", "sync/done", "unsubscribed")
SERVER = {"ping": None, "ping/to": "i", "subscribe": "i", "unsubscribe": "i", "sync": "i"}  # address -> arg tags
STATUS = ("slot/N/level", "slot/N/buffered", "slot/N/queue", "slot/N/progress", "generator/state",
          "generator/progress", "generator/rtf", "xruns", "starvations", "limiter", "tempo")


@dataclass(frozen=True)
class Control:
    widget: str  # one of WIDGETS
    label: str
    send: str | None = None  # the address it sends (None: display only)
    types: str = ""  # the OSC type tags it sends ("f", "i", "s", "" for none)
    receive: str | None = None  # the address whose feedback it shows (None: none)
    choices: tuple[str, ...] = ()  # menus: the values, in order
    low: float = 0.0  # faders, numbers, meters: the range of the value sent or shown
    high: float = 1.0
    xy: tuple[str, str] | None = None  # the XY pad: its two addresses (x, y), each sent with "f"
    param: Param | None = None
    doc: str = ""  # a line that teaches (a comment or a tooltip)


@dataclass(frozen=True)
class Section:
    title: str
    controls: tuple[Control, ...]
    slot: int | None = None  # 1-based, for a slot strip


def sections(registry: Registry, slots: int | None = None) -> tuple[Section, ...]:
    """Every section a layout holds, in the order the layouts place them."""
    pre = registry.prefix
    n = min(registry.slots, slots or LAYOUT_SLOTS)

    def norm(key: str, label: str, slot: int | None = None, widget: str = "fader") -> Control:
        p = registry[key]
        a = p.address(pre, None if slot is None else slot - 1) + "/normalized"
        return Control(widget, label, send=a, types="f", receive=a, param=p, doc=p.doc)

    def real(key: str, label: str, widget: str, types: str, slot: int | None = None) -> Control:
        p = registry[key]
        a = p.address(pre, None if slot is None else slot - 1)
        return Control(widget, label, send=a, types=types, receive=None if p.kind == "trigger" else a,
                       choices=p.choices, low=p.min if p.min is not None else 0.0,
                       high=p.max if p.max is not None else 1.0, param=p, doc=p.doc)

    out = [Section("connection", (
        Control("button", "subscribe", send=f"{pre}/subscribe", types="i",
                doc=f"Feedback to this layout's port (renewed every {RENEW_S} s while on)."),
        Control("button", "sync", send=f"{pre}/sync", types="i", doc="Ask for every current value."),
        Control("button", "ping", send=f"{pre}/ping/to", types="i", receive=f"{pre}/pong",
                doc="Answered with /pong on this layout's port: the instrument is there."),
        Control("label", "generator", receive=f"{pre}/status/generator/state", doc="The generator's state."),
        Control("label", "error", receive=f"{pre}/error", doc="The last refused message, and why."),
    ))]
    for s in range(1, n + 1):
        out.append(Section(f"slot {s}", (
            real("slot/prompt", "prompt", "text", "s", s),
            norm("slot/gain", "gain", s),
            norm("slot/pan", "pan", s),
            real("slot/mute", "mute", "toggle", "i", s),
            real("slot/solo", "solo", "toggle", "i", s),
            real("slot/next", "next", "button", "", s),
            real("slot/regenerate", "new", "button", "", s),
            Control("meter", "level", receive=f"{pre}/status/slot/{s}/level", low=-60.0, high=0.0,
                    doc="The slot's level (dBFS)."),
            Control("meter", "buffered", receive=f"{pre}/status/slot/{s}/buffered", low=0.0, high=60.0,
                    doc="Seconds of audio ready for the slot."),
        ), slot=s))
    out.append(Section("mix", (
        norm("master/gain", "master"),
        norm("xfade", "xfade"),
        real("curve", "curve", "menu", "s"),
    )))
    out.append(Section("morph", (
        real("morph/mode", "mode", "menu", "s"),
        real("morph/position", "position", "fader", "f"),
        Control("xy", "xy", xy=(registry["morph/x"].address(pre), registry["morph/y"].address(pre)),
                doc="XY morph over slots 1-4 (mode xy)."),
    )))
    out.append(Section("transport", (
        real("tempo", "tempo", "number", "f"),
        real("quantize", "quantize", "menu", "s"),
    )))
    out.append(Section("presets", (
        Control("text", "store", send=f"{pre}/preset/store", types="s", doc=BY_PATH["preset/store"].doc),
        Control("number", "recall", send=f"{pre}/preset/recall", types="i", low=1, high=128,
                doc=BY_PATH["preset/recall"].doc),
        Control("number", "arm", send=f"{pre}/preset/arm", types="i", low=1, high=128,
                doc=BY_PATH["preset/arm"].doc),
        Control("button", "previous", send=f"{pre}/preset/previous", types="", doc=BY_PATH["preset/previous"].doc),
        Control("button", "next", send=f"{pre}/preset/next", types="", doc=BY_PATH["preset/next"].doc),
        Control("label", "done", receive=f"{pre}/done", doc="What an action answered."),
    )))
    out.append(Section("record", (
        Control("toggle", "record", send=f"{pre}/record", types="i", receive=f"{pre}/record",
                doc=BY_PATH["record"].doc),
    )))
    return tuple(out)


def controls(registry: Registry, slots: int | None = None) -> list[Control]:
    return [c for s in sections(registry, slots) for c in s.controls]


def _sample(tag: str, p: Param | None, normalized: bool) -> object:
    if tag == "f":
        if p is not None and not normalized and p.min is not None and p.max is not None:
            return float(p.min + p.max) / 2 if p.kind != "int" else float(p.min)
        return 0.5
    if tag == "i":
        if p is not None and not normalized and p.min is not None and p.kind in ("int", "float"):
            return int(p.min)
        return 1
    if tag == "s":
        return p.choices[0] if p is not None and p.choices else "word"
    raise ParamError(f"type tag {tag!r}: layouts send only f, i and s")


def check_send(registry: Registry, address: str, types: str) -> str | None:
    """Why the instrument would refuse `address` with arguments of `types` (None: it takes it)."""
    pre = registry.prefix + "/"
    if not address.startswith(pre):
        return f"{address}: addresses start with {pre}"
    path = address[len(pre):]
    if path in SERVER:
        allowed = SERVER[path]
        if path == "ping/to" and not types.startswith("i"):
            return f"{address}: takes a port (i) first, sent {types!r}"
        if path != "ping/to" and allowed is not None and types not in ("", allowed):
            return f"{address}: takes [{allowed}], sent {types!r}"
        return None
    if path in BY_PATH:
        return None if set(types) <= set("ifs") else f"{address}: actions take i, f or s, sent {types!r}"
    try:
        ref = registry.resolve(address)
        args = [_sample(t, ref.param, ref.normalized) for t in types]
        if ref.param.kind == "trigger" and types not in ("", "i", "f"):
            return f"{address}: a trigger takes nothing (or a number), sent {types!r}"
        if ref.param.kind != "trigger":
            if ref.param.kind == "text" and types and set(types) == {"s"}:
                args = [" ".join(str(a) for a in args)]
            registry.coerce(ref, args)
    except ParamError as e:
        return str(e)
    return None


def check_receive(registry: Registry, address: str) -> str | None:
    """Why the instrument never sends `address` (None: it does, as an echo, a status or a reply)."""
    pre = registry.prefix + "/"
    if not address.startswith(pre):
        return f"{address}: addresses start with {pre}"
    path = address[len(pre):]
    if path in REPLIES:
        return None
    if path.startswith("status/"):
        parts = path[len("status/"):].split("/")
        if parts[0] == "slot" and len(parts) >= 3:
            try:
                registry.slot_index(parts[1], address)
            except ParamError as e:
                return str(e)
            parts[1] = "N"
        return None if "/".join(parts) in STATUS else f"{address}: no such status address"
    try:
        ref = registry.resolve(address)
    except ParamError as e:
        return str(e)
    return f"{address}: a trigger is never echoed" if ref.param.kind == "trigger" else None
