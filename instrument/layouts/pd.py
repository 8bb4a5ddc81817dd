"""The Pure Data layout: `max_patches/endless.pd` for Pd vanilla 0.51+, from `common.sections()`.

The main canvas is the panel: every control of every section, each an IEM GUI (or a message box
for text) with a receive name (`endless-gain-2`, `endless-prompt-1`, ...) so other patches and
`pd -send` drive it like a click. Its plumbing is the subpatch [pd osc]:
- send: each GUI's send name (`endless-gain-2-out`) -> [oscformat] -> [s endless-osc] -> [netsend -u -b];
- receive: [netreceive -u -b 9001] -> [oscparse] -> a tree of [route]s built from the addresses
  the controls listen to; each leaf only `set`s its control (no output, so nothing echoes back).
`endless-ctl connect HOST PORT` / `disconnect` / `listen PORT` set where it sends and listens; the
subscribe toggle sends `/endless/subscribe <listen port>` every 30 s while on.
"""

from __future__ import annotations

import re

from instrument.layouts.common import DEFAULT_PORT, RENEW_S, REPLY_PORT, Control, Section, sections
from instrument.layouts.pdfile import (
    BOX_H,
    CHAR_W,
    LINE_H,
    Canvas,
    Node,
    Obj,
    chain,
    escape,
    flow,
    gui_size,
    link_all,
    parse,
    split_atoms,
    width_of,
)
from instrument.layouts.preview import Box, Preview
from instrument.params import Registry

PATH = "max_patches/endless.pd"
SEND = "endless-osc"  # every oscformat's packet goes here, to the netsend
BAND = 560  # px: a feedback subtree wider than this gets its own band ([s]/[r] endless-in-<path>)
COLOURS = "#fcfcfc #000000 #000000"
PREFIX = {"connection": "", "mix": "", "transport": "", "record": "", "morph": "morph-", "presets": "preset-"}
EXAMPLES = (("rain on a tin roof", "waves on a pebble beach"), ("distant thunder", "rain:0.7 | thunder:0.3"),
            ("wind in pine trees", "a crackling fire"), ("birds at dawn", "city traffic at night"))
TEACH = (
    "Endless for Pure Data. 1: click [connect( (endless play listens on UDP 9000 here: for another host or "
    "--osc-port edit the message). 2: turn subscribe on: every change and the meters come back to UDP 9001 "
    "(renewed every 30 s). 3: play. Faders send the /normalized addresses (0..1).",
    "Prompts: in edit mode (Ctrl+E) change a message box's words, leave edit mode, click it. "
    "A blend: list rain:0.7 | thunder:0.3. The box under them shows what the slot plays now.",
    "From other patches or pd -send: endless-ctl connect HOST PORT | disconnect | listen PORT, and each "
    "control's name: endless-gain-N 0..1, endless-mute-N 0/1, endless-next-N bang, endless-prompt-N words, "
    "endless-master, endless-morph-x, endless-tempo, endless-preset-store NAME, endless-preset-recall N ...",
    "Generated from the parameter registry by `make layouts` (instrument/layouts/pd.py): edit that, not "
    "this file. The plumbing is in [pd osc]. Feedback for other patches: [r endless-in-slot-1] ...",
)


def name(section: Section, c: Control) -> str:
    """The receive name that drives a control (its GUI sends on this name + '-out')."""
    if section.slot is not None:
        return f"endless-{c.label}-{section.slot}"
    return f"endless-{PREFIX[section.title]}{c.label}"


def _iem(kind: str, size: str, send: str, receive: str, label: str, tail: str, ldx: int = 0, ldy: int = -9) -> str:
    return (f"{kind} {size} {send or 'empty'} {receive or 'empty'} {label or 'empty'} {ldx} {ldy} 0 10 "
            f"{COLOURS}{tail}")


def _gui(c: Control, n: str, vertical: bool = True, length: int = 150) -> str:
    """The IEM GUI text of a control (its look from the widget, its range from the control)."""
    out = n + "-out"
    if c.widget == "fader" and vertical:
        return _iem("vsl", f"20 {length} {c.low:g} {c.high:g} 0 0", out, n, c.label, " 0 1")
    if c.widget == "fader":
        return _iem("hsl", f"{length} 18 {c.low:g} {c.high:g} 0 0", out, n, c.label, " 0 1", 0, -9)
    if c.widget == "toggle":
        return _iem("tgl", "20 0", out, n, c.label, " 0 1", 25, 10)
    if c.widget == "button":
        return _iem("bng", "20 250 50 0", out, n, c.label, "", 25, 10)
    if c.widget == "number":
        return _iem("nbx", f"5 18 {c.low:g} {c.high:g} 0 0", out, n, c.label, f" {c.low:g} 256", 0, -9)
    if c.widget == "menu":
        return _iem("hradio", f"20 1 0 {len(c.choices)}", out, n, c.label, " 0", 0, -9)
    raise ValueError(f"{c.widget}: no Pd GUI for this widget")


def _meter(c: Control, n: str) -> str:
    if c.label == "level":
        return f"vu 15 150 {n} {c.label} -1 -9 0 10 #404040 #000000 1 0"
    return _iem("vsl", f"15 150 {c.low:g} {c.high:g} 0 0", "", n, "buf", " 0 1")


def _display(main: Canvas, x: int, y: int, n: str, chars: int) -> None:
    """A message box that shows text sent to `n` (a [r n] above it sets it)."""
    r = main.add("obj", x, y, f"r {n}")
    main.wire(r, main.add("msg", x, y + 24, f", f {chars}"))


def _panel(reg: Registry) -> tuple[Canvas, list[tuple[Section, Control]]]:
    """The main canvas (controls, comments) and every (section, control) it holds."""
    main = Canvas("endless", 0, 50, 1240, 900)
    placed: list[tuple[Section, Control]] = []
    y = 8
    for i, t in enumerate(TEACH):  # two columns of two
        main.add("text", 16 + 610 * (i % 2), y, escape(t) + ", f 78")
        y += (LINE_H * (max(len(TEACH[i - 1]), len(t)) // 72 + 1) + 8) * (i % 2)
    secs = {s.title: s for s in sections(reg)}
    y += 10
    conn = secs["connection"]
    on = main.add("msg", 16, y, f"connect 127.0.0.1 {DEFAULT_PORT}")
    off = main.add("msg", 200, y, "disconnect")
    ctl = main.add("obj", 16, y + 30, "s endless-ctl")
    for m in (on, off):
        main.wire(m, ctl)
    main.add("obj", 300, y, _iem("tgl", "20 0", "", "endless-connected", "connected", " 0 1", 25, 10))
    x = 400
    for c in conn.controls:
        n = name(conn, c)
        if c.label == "subscribe":
            main.add("obj", x, y, _iem("tgl", "20 0", n + "-out", n, c.label, " 0 1", 25, 10))
        elif c.widget == "button":
            main.add("obj", x, y, _gui(c, n))
        if c.label == "ping":
            main.add("obj", x + 60, y, _iem("bng", "20 250 50 0", "", "endless-pong", "pong", "", 25, 10))
        if c.widget != "label":
            placed.append((conn, c))
            x += 90 if c.label != "ping" else 150
    main.add("obj", x, y, _iem("tgl", "20 0", "", "endless-print", "print", " 0 1", 25, 10))
    for i, c in enumerate(c for c in conn.controls if c.widget == "label"):
        main.add("text", 870, y + 2 + 44 * i, c.label)
        _display(main, 940, y - 10 + 44 * i, name(conn, c) + "-now", 40)
        placed.append((conn, c))
    for s in (secs[f"slot {i + 1}"] for i in range(len(secs) - 6)):
        _strip(main, s, 16 + (s.slot or 1) * 300 - 300, y + 90, placed)
    main.h = _lower(main, secs, placed, y + 450) + 40
    return main, placed


def _strip(main: Canvas, s: Section, x: int, y: int, placed: list[tuple[Section, Control]]) -> None:
    main.add("text", x, y, f"slot {s.slot}")
    row = {c.label: c for c in s.controls}
    n = name(s, row["prompt"])
    send = main.add("obj", x + 170, y + 76, f"s {n}")
    for i, words in enumerate(EXAMPLES[((s.slot or 1) - 1) % len(EXAMPLES)]):
        main.wire(main.add("msg", x, y + 22 + 26 * i, escape("list " + words)), send)
    _display(main, x, y + 76, n + "-now", 36)
    top = y + 150
    main.add("obj", x, top, _gui(row["gain"], name(s, row["gain"])))
    main.add("obj", x + 45, top, _meter(row["level"], name(s, row["level"])))
    main.add("obj", x + 90, top, _meter(row["buffered"], name(s, row["buffered"])))
    for i, k in enumerate(("mute", "solo", "next", "new")):
        main.add("obj", x + 140, top + 38 * i, _gui(row[k], name(s, row[k])))
    main.add("obj", x, top + 175, _gui(row["pan"], name(s, row["pan"]), vertical=False, length=150))
    placed.extend((s, c) for c in s.controls)


def _lower(main: Canvas, secs: dict[str, Section], placed: list[tuple[Section, Control]], y: int) -> int:
    """Mix, morph, transport, presets and record, in a row under the slot strips; returns its bottom."""
    for title, x, dy in (("mix", 16, 0), ("morph", 300, 0), ("transport", 640, 0), ("record", 640, 120),
                         ("presets", 820, 0)):
        s = secs[title]
        main.add("text", x, y + dy, title)
        cy, cx = y + dy + 40, x
        for c in s.controls:
            if cy > y + 150 and not dy:  # the next column
                cx, cy = cx + 175, y + 40
            n = name(s, c)
            if c.widget == "fader" and c.label == "master":
                main.add("obj", cx, cy, _gui(c, n, length=140))
                cx += 60
            elif c.widget == "xy" and c.xy is not None:
                cx, top = cx + 175, y + 30
                main.add("obj", cx + 30, top, "cnv 1 120 120 empty empty xy 4 10 0 10 #e0e0e0 #404040 0")
                px = Control("fader", "x", send=c.xy[0], types="f", receive=c.xy[0])
                py = Control("fader", "y", send=c.xy[1], types="f", receive=c.xy[1])
                main.add("obj", cx + 30, top + 125, _gui(px, n + "-x", vertical=False, length=120))
                main.add("obj", cx, top, _gui(py, n + "-y", length=120))
                placed += [(s, Control("fader", "xy-x", send=c.xy[0], types="f", receive=c.xy[0])),
                           (s, Control("fader", "xy-y", send=c.xy[1], types="f", receive=c.xy[1]))]
                continue
            elif c.widget == "text":
                store = main.add("msg", cx, cy, "list dawn")
                main.wire(store, main.add("obj", cx, cy + 24, f"s {n}"))
                cy += 55
            elif c.widget == "label":
                main.add("text", cx, cy, c.label)
                _display(main, cx + 50, cy - 8, n + "-now", 30)
            else:
                main.add("obj", cx, cy, _gui(c, n, vertical=False, length=140))
                if c.widget == "menu":
                    main.add("text", cx + 22 * len(c.choices) + 4, cy, " ".join(c.choices))
                cy += 45 if c.widget != "button" else 32
            placed.append((s, c))
    return y + 200


def _sender(s: Section, c: Control) -> Node | None:
    """The plumbing that sends one control: [r <name>-out] (or <name> for text) -> ... -> [s endless-osc]."""
    if c.send is None or c.label in ("subscribe", "sync", "ping"):
        return None  # display only, or a connection sender (_connection)
    n, path = name(s, c), c.send.strip("/").replace("/", " ")
    if c.widget == "text":  # a message box's words (or a name's) -> one list, each word a string
        return chain(f"r {n}", "list", f"oscformat {path}", f"s {SEND}")[0]
    if c.widget == "menu":  # the radio's index -> the choice's name
        return chain(f"r {n}-out", "msg get \\$1 1", f"list store {' '.join(c.choices)}", f"oscformat {path}",
                     f"s {SEND}")[0]
    fmt = f"-f {c.types} " if c.types == "i" else ""
    return chain(f"r {n}-out", f"oscformat {fmt}{path}", f"s {SEND}")[0]


def _connection(pre: str, receive: Node) -> list[Node]:
    """Subscribe (renewed by a metro while on; unsubscribe when off), sync and ping (a counter), the
    port they name (`endless-ctl listen PORT` changes it), and the netsend/netreceive pair."""
    port = Node("r endless-reply-port")
    sub = Node("r endless-subscribe-out")
    t = sub.to(Node("t f f"))
    off = t.to(Node("sel 0"), outlet=1).to(Node(f"f {REPLY_PORT}"))
    off.to(Node(f"oscformat -f i {pre} unsubscribe")).to(Node(f"s {SEND}"))
    on = t.to(Node(f"metro {RENEW_S * 1000}")).to(Node(f"f {REPLY_PORT}"))
    on.to(Node(f"oscformat -f i {pre} subscribe")).to(Node(f"s {SEND}"))
    sync = Node("r endless-sync-out")
    at = sync.to(Node(f"f {REPLY_PORT}"))
    at.to(Node(f"oscformat -f i {pre} sync")).to(Node(f"s {SEND}"))
    ping = Node("r endless-ping-out")  # /ping/to PORT: the pong comes to this patch's port, subscribed or not
    to = ping.to(Node(f"f {REPLY_PORT}"))
    to.to(Node(f"oscformat -f i {pre} ping to")).to(Node(f"s {SEND}"))
    for f in (off, on, at, to):
        port.link(f, inlet=1)
    net = Node("netsend -u -b")
    net.to(Node("s endless-connected"))
    ctl = Node("r endless-ctl")
    route = ctl.to(Node("route listen"))
    both = route.to(Node("t f f"))
    both.to(Node("listen \\$1", "msg")).link(receive)
    both.to(Node("s endless-reply-port"), outlet=1)
    route.link(net, outlet=1)
    packets = Node(f"r {SEND}")
    packets.link(net)
    return [port, sub, sync, ping, ctl, packets, net]


def _trie(reg: Registry, placed: list[tuple[Section, Control]]) -> dict[str, object]:
    """The addresses the controls listen to, as nested dicts of path words; leaves are the control."""
    root: dict[str, object] = {}
    for s, c in placed:
        if c.receive is None:
            continue
        node = root
        words = c.receive[len(reg.prefix) + 1:].split("/")
        for w in words[:-1]:
            node = node.setdefault(w, {})  # type: ignore[assignment]
        node[words[-1]] = (s, c)
    return root


def _leaf(s: Section, c: Control) -> Node:
    """What a feedback value does: `set` its control, show its text, or flash the pong."""
    n = name(s, c)
    if c.widget == "menu":
        r = Node("route " + " ".join(c.choices))
        for i, _ in enumerate(c.choices):
            r.to(Node(f"\\; {n} set {i}", "msg"), outlet=i)
        return r
    if c.widget == "meter":
        return Node(f"s {n}")
    if c.label == "ping":
        return Node("\\; endless-pong bang", "msg")
    if c.label == "generator":
        return chain("list prepend set", "list trim", f"s {n}-now")[0]
    if c.widget in ("text", "label"):  # one symbol with spaces -> the words it holds -> set the display
        first, t = chain("symbol", "t b a b")
        if c.label in ("error", "done"):  # <address> <text>: show the text
            first = Node("list split 1")
            first.to(Node("symbol"), outlet=1).to(t)
        acc, store = Node("list prepend"), Node("list append")
        t.to(store).to(Node("list prepend set")).to(Node("list trim")).to(Node(f"s {n}-now"))
        t.to(Node("list fromsymbol"), outlet=1).to(Node("fudiparse")).to(acc)
        acc.link(acc, inlet=1)
        acc.link(store, inlet=1)
        t.link(acc, outlet=2, inlet=1)
        t.link(store, outlet=2, inlet=1)
        return first
    return Node(f"\\; {n} set \\$1", "msg")


def _routes(d: dict[str, object], path: list[str], bands: list[Node]) -> Node:
    """[route k1 k2 ...] for one trie level; a subtree wider than a band goes to its own band
    ([s endless-in-<path>] here, [r endless-in-<path>] there: other patches may listen too)."""
    r = Node("route " + " ".join(d))
    for i, (k, v) in enumerate(d.items()):
        kid = _leaf(*v) if isinstance(v, tuple) else _routes(v, [*path, k], bands)  # type: ignore[arg-type]
        if isinstance(v, dict) and kid.width() > BAND:
            band = "endless-in-" + "-".join([*path, k])
            bands.append(Node(f"r {band}"))
            bands[-1].to(kid)
            kid = Node(f"s {band}")
        r.to(kid, outlet=i)
    return r


def _plumbing(reg: Registry, placed: list[tuple[Section, Control]]) -> Canvas:
    osc = Canvas("osc", 60, 80, 1200, 800)
    pre = reg.prefix.strip("/").replace("/", " ")
    y = 8
    for t in ("Sending: each control's GUI sends on <name>-out. [oscformat] makes the OSC packet, [s endless-osc] "
              "takes it to [netsend -u -b]. Type tags: -f i where the instrument wants an int.",
              "Receiving: [netreceive -u -b] on the port we subscribe with. [oscparse] makes a list "
              "(endless slot 1 gain normalized 0.5) that [route]s take apart; each ends in 'set', so "
              "feedback moves a control without sending it again.",
              "Subscribe is renewed every 30 s (the instrument drops a UDP subscriber after 60 s without). "
              "print (on the panel) shows every reply but the status meters in the Pd window."):
        osc.add("text", 10, y, escape(t) + ", f 160")
        y += 40
    receive = Node(f"netreceive -u -b {REPLY_PORT}")
    trees = [s for s in (_sender(sec, c) for sec, c in placed) if s is not None]
    senders = [*_connection(pre, receive), *trees]
    y = flow(osc, senders, 10, y + 10, 1180) + 20
    osc.add("text", 10, y, escape("feedback: the instrument's echoes, replies and status"))
    spigot = Node("spigot")
    spigot.to(Node("print endless"))
    printing = Node("r endless-print")
    printing.link(spigot, inlet=1)
    bands: list[Node] = []
    top = _routes(_trie(reg, placed), [], bands)
    split = Node("t a a")
    split.to(top)
    split.to(Node("route status"), outlet=1).to(spigot, outlet=1)
    head = receive.to(Node("oscparse")).to(Node("list trim"))
    for w in pre.split():
        head = head.to(Node(f"route {w}"))
    head.to(split)
    bottom = flow(osc, [receive, printing, *bands], 10, y + 30, 1180)
    for tree in (*senders, receive, printing, *bands):
        link_all(osc, tree)
    osc.h = min(900, bottom + 20)
    return osc


def files(registry: Registry) -> dict[str, bytes]:
    """max_patches/endless.pd: the panel, with its plumbing in [pd osc]."""
    main, placed = _panel(registry)
    main.subpatch(1110, main.h - 30, _plumbing(registry, placed))
    main.add("text", 1040, main.h - 30, "plumbing:")
    return {PATH: ("\n".join(main.render()) + "\n").encode()}


WIDTH = re.compile(r",? f (\d+)$")  # a box's width in characters, after its text
LABEL_AT = {"tgl": 5, "bng": 7, "nbx": 9, "vsl": 9, "hsl": 9, "hradio": 7, "vradio": 7, "cnv": 6, "vu": 4}
KINDS = {"tgl": "toggle", "bng": "button", "nbx": "number", "hradio": "menu", "vradio": "menu", "vu": "meter"}


def previews(path: str, data: bytes) -> list[Preview]:
    """The panel as Pd draws it, read back from the file: each box where the file puts it, its size
    from its own arguments (GUIs) or its text (boxes, comments wrapped as Pd wraps them)."""
    top = parse(data.decode())
    boxes: list[Box] = []
    for o in top.objects:
        boxes += _boxes(o)
    return [Preview(path.rsplit("/", 1)[-1], boxes, top.w, top.h, f"{path} (Pure Data)")]


def _boxes(o: Obj) -> list[Box]:
    size, words = gui_size(o), o.words
    if size is not None:
        kind = KINDS.get(words[0], "fader")
        if words[0] in ("vsl", "hsl") and words[7] == "empty":
            kind = "meter"  # sends nothing: a display
        label = words[LABEL_AT[words[0]]]
        if words[0] == "cnv":
            kind = "xy" if label == "xy" else "panel"
        return [Box(o.x, o.y, size[0], size[1], kind, "" if label == "empty" else label)]
    text = o.text.replace(" \\,", ",").replace(" \\;", ";").replace("\\", "")
    text = text[: m.start()] if (m := WIDTH.search(text)) else text
    if o.kind == "text":
        chars = int(m.group(1)) if m else 60
        lines = _wrap(text, chars)
        return [Box(o.x, o.y + LINE_H * i, chars * CHAR_W, LINE_H, "comment", ln) for i, ln in enumerate(lines)]
    kind = "text" if o.kind == "msg" else "object"
    return [Box(o.x, o.y, width_of(o), BOX_H, kind, text)]


def _wrap(text: str, chars: int) -> list[str]:
    lines, cur = [], ""
    for w in split_atoms(text):
        if cur and len(cur) + 1 + len(w) > chars:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return [*lines, cur] if cur else lines
