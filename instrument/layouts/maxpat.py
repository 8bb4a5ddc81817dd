"""The Max/MSP layouts: max_patches/endless.maxpat (the performance patch) and endless-sequencer.maxpat.

The performance patch places every control of `common.sections()`: a strip per slot (prompt,
gain, pan, mute, solo, next, new, level and buffered meters), the mix, morph (slider and XY pad),
transport, presets (with a preset menu) and record, and the connection settings. Each control sends
through `[prepend <address>]` (or a message box holding the address) into one `[udpsend]`; the
instrument's feedback comes into `[udpreceive]` and a `[route]` per section, then `[set $1]` (or
`[prepend set]`) so a control shows the value without sending it back. The wiring is hidden when
the patch is locked; unlock it (Cmd/Ctrl-E) to see and change it.

The sequencer patch recalls presets and changes prompts on Max's transport (a bar clock) and from
MIDI notes. `previews()` reads each file's own boxes back (`maxbox.boxes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instrument.layouts.common import DEFAULT_PORT, RENEW_S, REPLY_PORT, Control, Section, sections
from instrument.layouts.maxbox import Patch, boxes, dumps, teach, window
from instrument.layouts.maxseq import SEQUENCER, sequencer
from instrument.layouts.preview import Preview
from instrument.params import Registry

PERFORM = "max_patches/endless.maxpat"
SLOT_W = 250.0  # a slot strip's width
PLUMB_Y = 740.0  # where the (hidden) wiring starts, below the controls
PRESETS_MENU = 16  # the preset menu lists presets 1..16
WIRE_W = 250.0  # a wiring column's width on the right
XY_RANGE = 1000  # the XY pad's integer range, divided back to 0..1
WIRING: dict[str, Any] = {"hidden": 1, "fontsize": 10.0}  # the wiring: hidden when locked, a smaller font
WIRE_CHAR = 6  # pixels a character of the wiring's font


class Column:
    """Where the next wiring box of a section goes (a cursor down a column); wiring is hidden when locked."""

    def __init__(self, x: float, y: float = PLUMB_Y, w: float = SLOT_W - 10) -> None:
        self.x, self.y, self.w = x, y, w

    def obj(self, p: Patch, text: str) -> str:
        b = p.obj(text, self.x, self.y, min(self.w, len(text) * WIRE_CHAR + 12), **WIRING)
        self.y += p.items[-1]["box"]["patching_rect"][3] + 4
        return b

    def msg(self, p: Patch, text: str) -> str:
        b = p.msg(text, self.x, self.y, min(self.w, len(text) * WIRE_CHAR + 12), **WIRING)
        self.y += 26
        return b


def _items(values: Any) -> list[Any]:
    """A umenu's items as Max saves them: the values with "," between."""
    out: list[Any] = []
    for v in values:
        out += [v, ","]
    return out[:-1]


def _widget(p: Patch, c: Control, x: float, y: float, w: float, h: float) -> str:
    """The interface object of control `c` at (x, y, w, h)."""
    hint = c.doc or c.label
    if c.widget in ("fader", "meter"):
        return p.ui("slider", x, y, w, h, floatoutput=1, min=float(c.low), size=float(c.high - c.low), hint=hint,
                    ignoreclick=1 if c.widget == "meter" else None, varname=c.label)
    if c.widget == "toggle":
        return p.ui("toggle", x, y, w, h, hint=hint)
    if c.widget == "button":
        return p.ui("button", x, y, w, h, hint=hint)
    if c.widget == "text":
        return p.ui("textedit", x, y, w, h, outputmode=1, keymode=1, lines=0, hint=hint)
    if c.widget == "menu":
        return p.ui("umenu", x, y, w, h, items=_items(c.choices), hint=hint)
    if c.widget == "number":
        cls = "flonum" if c.types == "f" else "number"
        return p.ui(cls, x, y, w, h, minimum=c.low, maximum=c.high, hint=hint)
    if c.widget == "xy":
        return p.ui("pictslider", x, y, w, h, leftvalue=0, rightvalue=XY_RANGE, topvalue=0, bottomvalue=XY_RANGE,
                    hint=hint)
    return p.msg("-", x, y, w, hint=hint)  # a label: a message box the feedback sets


def _send(p: Patch, c: Control, widget: str, col: Column, out: str) -> None:
    """Wire `widget` so that it sends `c.send` with `c.types` into `out` (the udpsend)."""
    if c.xy is not None:
        for outlet, address in enumerate(c.xy):
            scale = col.obj(p, f"/ {XY_RANGE}.")
            pre = col.obj(p, f"prepend {address}")
            p.connect(widget, outlet, scale)
            p.connect(scale, 0, pre)
            p.connect(pre, 0, out)
        return
    if c.send is None:
        return
    if not c.types:  # a button: a message box holding the address sends it on the bang
        m = col.msg(p, c.send)
        p.connect(widget, 0, m)
        p.connect(m, 0, out)
        return
    src, outlet = widget, 1 if c.widget == "menu" else 0  # a menu's middle outlet is the item's text
    if c.widget == "text":  # textedit sends "text <words>" on Return
        src, outlet = col.obj(p, "route text"), 0
        p.connect(widget, 0, src)
    pre = col.obj(p, f"prepend {c.send}")
    p.connect(src, outlet, pre)
    p.connect(pre, 0, out)


class Feedback:
    """A chain of `[route <address>]` boxes fed by `[udpreceive]`: each passes what it does not match on."""

    def __init__(self, p: Patch, inp: str) -> None:
        self.p, self.last, self.outlet = p, inp, 0

    def route(self, c: Control, targets: list[str], col: Column) -> None:
        """Show what the instrument says on `c.receive` in `targets`, without sending it back."""
        p = self.p
        route = col.obj(p, f"route {c.receive}")
        p.connect(self.last, self.outlet, route)
        self.last, self.outlet = route, 1
        if c.widget == "button":  # /pong: flash the light
            for t in targets:
                p.connect(route, 0, t)
            return
        if c.widget in ("text", "label"):
            setter = col.obj(p, "prepend set")
        elif c.widget == "menu":
            setter = col.obj(p, "prepend setsymbol")
        else:
            setter = col.msg(p, "set $1")
        p.connect(route, 0, setter)
        for t in targets:
            p.connect(setter, 0, t)


def _section(p: Patch, sec: Section, places: Mapping[str, tuple[float, ...]], col: Column,
             out: str, inp: str, extra: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Place a section's controls at `places` (by label), wire their sends, and route their feedback."""
    made: dict[str, str] = {}
    feedback = Feedback(p, inp)
    for c in sec.controls:
        if c.label not in places:
            continue
        x, y, width, height = places[c.label]
        made[c.label] = w = _widget(p, c, x, y, width, height)
        _send(p, c, w, col, out)
        if c.receive:
            feedback.route(c, [w] + (extra or {}).get(c.label, []), col)
    return made


def _label(p: Patch, text: str, x: float, y: float, w: float | None = None) -> None:
    p.comment(text, x, y, w)


def registry_prefix(ctl: dict[str, Control]) -> str:
    """The address prefix, from the subscribe control's address (`/endless/subscribe` -> `/endless`)."""
    return str(ctl["subscribe"].send).rsplit("/", 1)[0]


def _connection(p: Patch, sec: Section, out: str, inp: str, col: Column) -> None:
    """Host, ports, subscribe (renewed by a metro), ping and sync, all with the receive port."""
    y = 112.0
    p.ui("panel", 10, y, 1360, 64, background=1, bgcolor=[0.25, 0.27, 0.3, 1.0])
    _label(p, "host (edit, click)", 20, y + 4)
    host = p.msg("host 127.0.0.1", 20, y + 28, 120, hint="Where `endless play` runs: edit the address, then click.")
    p.connect(host, 0, out)
    _label(p, "send port", 160, y + 4)
    send_port = p.ui("number", 160, y + 28, 60, 22, minimum=1, maximum=65535,
                     hint=f"The instrument's OSC port (`endless play --osc-port`, {DEFAULT_PORT}).")
    load = col.obj(p, f"loadmess {DEFAULT_PORT}")
    port = col.obj(p, "prepend port")
    p.connect(load, 0, send_port)
    p.connect(send_port, 0, port)
    p.connect(port, 0, out)
    _label(p, "receive port", 240, y + 4)
    recv_port = p.ui("number", 240, y + 28, 60, 22, minimum=1, maximum=65535,
                     hint="Where this patch listens for feedback; subscribe, ping and sync tell the instrument.")
    load = col.obj(p, f"loadmess {REPLY_PORT}")
    fan = col.obj(p, "t i i i i i")
    listen = col.obj(p, "prepend port")
    p.connect(load, 0, recv_port)
    p.connect(recv_port, 0, fan)
    p.connect(fan, 4, listen)
    p.connect(listen, 0, inp)
    ctl = {c.label: c for c in sec.controls}
    sub = p.ui("toggle", 340, y + 28, 24, 24, hint=ctl["subscribe"].doc)
    _label(p, "subscribe", 330, y + 4)
    metro = col.obj(p, f"metro {RENEW_S * 1000}")
    p.connect(sub, 0, metro)
    stop = col.obj(p, "sel 0")
    p.connect(sub, 0, stop)
    sources = {str(ctl["subscribe"].send): metro, f"{registry_prefix(ctl)}/unsubscribe": stop}
    ping = p.ui("button", 430, y + 28, 24, 24, hint=ctl["ping"].doc)
    _label(p, "ping", 425, y + 4)
    sync = p.ui("button", 540, y + 28, 24, 24, hint=ctl["sync"].doc)
    _label(p, "sync", 535, y + 4)
    sources |= {str(ctl["ping"].send): ping, str(ctl["sync"].send): sync}
    for k, (address, src) in enumerate(sources.items()):
        store = col.obj(p, "int")  # holds the receive port; a bang sends it
        p.connect(fan, k, store, 1)
        p.connect(src, 0, store)
        pre = col.obj(p, f"prepend {address}")
        p.connect(store, 0, pre)
        p.connect(pre, 0, out)
    pong = p.ui("button", 480, y + 28, 24, 24, hint="Flashes on /pong.", ignoreclick=1)
    _label(p, "pong", 475, y + 4)
    state = p.msg("-", 620, y + 28, 120, hint=ctl["generator"].doc)
    _label(p, "generator", 620, y + 4)
    error = p.msg("-", 760, y + 28, 590, hint=ctl["error"].doc)
    _label(p, "last error (what was refused, and why)", 760, y + 4, 300)
    feedback = Feedback(p, inp)
    for c, t in ((ctl["ping"], pong), (ctl["generator"], state), (ctl["error"], error)):
        feedback.route(c, [t], col)


def _slot(p: Patch, sec: Section, x: float, out: str, inp: str) -> None:
    y = 190.0
    p.ui("panel", x, y, SLOT_W - 10, 330, background=1, bgcolor=[0.22, 0.24, 0.27, 1.0])
    _label(p, f"slot {sec.slot}: prompt (Return sends it)", x + 6, y + 4, SLOT_W - 20)
    _label(p, "gain  level  buf", x + 6, y + 96)
    for k, name in enumerate(("mute", "solo", "next", "new")):
        _label(p, name, x + 130, y + 118 + 32 * k)
    _label(p, "pan", x + 6, y + 296)
    buffered = p.ui("flonum", x + 40, y + 256, 60, 22, hint="Seconds of audio ready.", ignoreclick=1)
    places = {"prompt": (x + 6, y + 26, SLOT_W - 22, 66), "gain": (x + 10, y + 116, 24, 130),
              "level": (x + 50, y + 116, 12, 130), "buffered": (x + 74, y + 116, 12, 130),
              "mute": (x + 104, y + 116, 24, 24), "solo": (x + 104, y + 148, 24, 24),
              "next": (x + 104, y + 180, 24, 24), "new": (x + 104, y + 212, 24, 24),
              "pan": (x + 40, y + 296, 160, 20)}
    _section(p, sec, places, Column(x), out, inp, {"buffered": [buffered]})


def perform(registry: Registry) -> dict[str, Any]:
    """The performance patch."""
    p = Patch()
    secs = {s.title: s for s in sections(registry)}
    slots = [s for s in secs.values() if s.slot is not None]
    right = 10 + len(slots) * SLOT_W
    p.comment("Endless: performance patch. Every control of the instrument, over OSC.", 10, 8, 700,
              fontsize=16.0)
    teach(p, (
        f"1. Start `endless play`: it listens for OSC on port {DEFAULT_PORT}.",
        "   On another machine: start it with --listen 0.0.0.0, edit the host box",
        "   (unlocked), lock the patch and click the box.",
        f"2. Turn on subscribe: changes and meters come back to port {REPLY_PORT},",
        f"   renewed every {RENEW_S} s while on. Ping (subscribed): pong flashes.",
    ), (
        "3. Prompt: type, press Return (words and blends: rain:0.7 | thunder:0.3).",
        "   Faders send 0..1 on the /normalized address; menus send their item.",
        "Feedback: [udpreceive] -> [route address] -> [set $1] shows a value",
        "without sending it back. Unlock (Cmd/Ctrl-E) to see the wiring.",
        "Generated by `make layouts` from the registry: edit maxpat.py, not this.",
    ))
    out = p.obj(f"udpsend 127.0.0.1 {DEFAULT_PORT}", 10, PLUMB_Y - 40)
    inp = p.obj(f"udpreceive {REPLY_PORT}", 200, PLUMB_Y - 40)
    _label(p, "wiring (hidden when locked): one [udpsend] out, one [udpreceive] in", 380, PLUMB_Y - 40, 460)
    _connection(p, secs["connection"], out, inp, Column(right, PLUMB_Y, WIRE_W))
    for k, sec in enumerate(slots):
        _slot(p, sec, 10 + k * SLOT_W, out, inp)
    rcol = Column(right + WIRE_W + 10, PLUMB_Y, WIRE_W)
    x = right + 10
    p.ui("panel", right, 190, 360, 540, background=1, bgcolor=[0.22, 0.24, 0.27, 1.0])
    _label(p, "mix: master, crossfade time, curve", x, 194, 300)
    _label(p, "master", x, 218)
    _label(p, "xfade", x, 244)
    _section(p, secs["mix"], {"master": (x + 60, 218, 180, 20), "xfade": (x + 60, 244, 180, 20),
                              "curve": (x + 250, 218, 95, 22)}, rcol, out, inp)
    _label(p, "morph: mode, line position, XY pad (slots 1-4 at the corners)", x, 280, 340)
    _label(p, "position", x, 330)
    _section(p, secs["morph"], {"mode": (x, 304, 80, 22), "position": (x + 60, 330, 120, 20),
                                "xy": (x + 200, 304, 140, 140)}, rcol, out, inp)
    for k in range(4):  # the pad's corners: slot 1 top left .. slot 4 bottom right (x right, y down)
        _label(p, str(k + 1), x + 186 + 158 * (k % 2), 300 + 128 * (k // 2), 16)
    _label(p, "tempo (bpm), quantize (where changes land)", x, 456, 340)
    _section(p, secs["transport"], {"tempo": (x, 480, 70, 22), "quantize": (x + 90, 480, 80, 22)}, rcol, out, inp)
    _label(p, "presets: type a name + Return to store; recall or arm by number", x, 514, 340)
    _label(p, "recall", x + 170, 538)
    _label(p, "arm", x + 170, 564)
    _label(p, "prev / next", x + 250, 538)
    _label(p, "menu", x + 250, 590)
    _section(p, secs["presets"], {"store": (x, 538, 160, 46), "recall": (x + 210, 538, 36, 22),
                                         "arm": (x + 210, 564, 36, 22), "previous": (x + 250, 562, 24, 24),
                                         "next": (x + 280, 562, 24, 24), "done": (x, 620, 340, 22)}, rcol, out, inp)
    menu = p.ui("umenu", x + 290, 590, 56, 22, items=_items(range(1, PRESETS_MENU + 1)),
                hint="Recall a preset by number.")
    plus = rcol.obj(p, "+ 1")  # the menu's index counts from 0, presets from 1
    pre = rcol.obj(p, f"prepend {secs['presets'].controls[1].send}")
    p.connect(menu, 0, plus)
    p.connect(plus, 0, pre)
    p.connect(pre, 0, out)
    _label(p, "record the output (the path comes back in done)", x, 660, 340)
    _section(p, secs["record"], {"record": (x, 684, 24, 24)}, rcol, out, inp)
    return p.patcher(right + 2 * WIRE_W + 20, max(rcol.y, PLUMB_Y + 200) + 20,
                     "Endless performance patch (generated from the parameter registry)")


def files(registry: Registry) -> dict[str, bytes]:
    """Both patches' bytes, keyed by their path from the repository root."""
    return {PERFORM: dumps(perform(registry)), SEQUENCER: dumps(sequencer(registry))}


def previews(path: str, data: bytes) -> list[Preview]:
    """One preview of a patch, drawn from the patch's own boxes."""
    w, h = window(data)
    name = Path(path).name
    return [Preview(name, boxes(data), w, h, f"{name} (Max/MSP, patching view)")]
