"""Pure Data patch text: a canvas builder that numbers objects and wires them, a tree layout for the
plumbing, and a reader that parses a .pd file back (objects per canvas, connections, GUI geometry).

The reader is what the preview and the tests use, so both see the file, not the generator's variables.

>>> c = Canvas("main", 0, 0, 400, 300)
>>> a, b = c.add("obj", 10, 10, "loadbang"), c.add("obj", 10, 40, "print hi")
>>> c.wire(a, b)
>>> text = "\\n".join(c.render()) + "\\n"
>>> top = parse(text)
>>> [(o.kind, o.text) for o in top.objects], top.connects
([('obj', 'loadbang'), ('obj', 'print hi')], [(0, 0, 1, 0)])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FONT = 12
CHAR_W, LINE_H, BOX_H = 7, 16, 19  # Pd's metrics at font size 12 (zoom 1)
ROW = 28  # the plumbing's vertical step
COMMENT_CHARS = 60  # Pd wraps a comment without a width at 60 characters


@dataclass
class Obj:
    kind: str  # "obj", "msg", "text", or "canvas" (a subpatch's box)
    x: int
    y: int
    text: str
    sub: Canvas | None = None

    @property
    def words(self) -> list[str]:
        return split_atoms(self.text)


@dataclass
class Canvas:
    name: str
    x: int
    y: int
    w: int
    h: int
    objects: list[Obj] = field(default_factory=list)
    connects: list[tuple[int, int, int, int]] = field(default_factory=list)

    def add(self, kind: str, x: int, y: int, text: str) -> int:
        self.objects.append(Obj(kind, x, y, text))
        return len(self.objects) - 1

    def wire(self, src: int, dst: int, outlet: int = 0, inlet: int = 0) -> None:
        self.connects.append((src, outlet, dst, inlet))

    def subpatch(self, x: int, y: int, sub: Canvas) -> int:
        self.objects.append(Obj("canvas", x, y, f"pd {sub.name}", sub))
        return len(self.objects) - 1

    def render(self, top: bool = True) -> list[str]:
        head = f"#N canvas {self.x} {self.y} {self.w} {self.h} {FONT if top else self.name + ' 0'};"
        out = [head]
        for o in self.objects:
            if o.sub is not None:
                out += o.sub.render(top=False)
                out.append(f"#X restore {o.x} {o.y} {o.text};")
            else:
                out.append(f"#X {o.kind} {o.x} {o.y} {o.text};")
        out += [f"#X connect {a} {b} {c} {d};" for a, b, c, d in self.connects]
        return out


def escape(text: str) -> str:
    """A comment's or a message's text as Pd stores it (commas, semicolons and dollars escaped)."""
    return text.replace("\\", "").replace(",", " \\,").replace(";", " \\;").replace("$", "\\$")


def split_atoms(text: str) -> list[str]:
    """The atoms of an object's text: split at unescaped spaces, escapes kept (`\\,` is one atom)."""
    return [a for a in re.split(r"(?<!\\)\s+", text.strip()) if a]


def width_of(o: Obj) -> int:
    """A box's width in pixels, as Pd draws it (text boxes; GUIs use `gui_size`)."""
    text, chars = o.text, None
    if m := re.search(r", f (\d+)$", text):
        text, chars = text[: m.start()], int(m.group(1))
    n = chars if chars is not None else min(len(text.replace("\\", "")), COMMENT_CHARS)
    return max(3, n) * CHAR_W + 5


def gui_size(o: Obj) -> tuple[int, int] | None:
    """Width and height of an IEM GUI (from its own arguments), or None for a text box."""
    w = o.words
    if o.kind != "obj" or not w:
        return None
    a = w[1:]
    if w[0] in ("tgl", "bng"):
        return int(a[0]), int(a[0])
    if w[0] in ("vsl", "hsl", "vu"):
        return int(a[0]), int(a[1])
    if w[0] == "cnv":
        return int(a[1]), int(a[2])
    if w[0] == "nbx":
        return int(a[0]) * CHAR_W + int(a[1]) // 2 + 4, int(a[1])
    if w[0] in ("hradio", "vradio"):
        size, n = int(a[0]), int(a[3])
        return (size * n, size) if w[0] == "hradio" else (size, size * n)
    return None


def parse(text: str) -> Canvas:
    """A .pd file's canvases: the top one, each subpatch as an object of its parent (`Obj.sub`)."""
    stack: list[Canvas] = []
    top: Canvas | None = None
    for rec in _records(text):
        words = split_atoms(rec)
        if words[:2] == ["#N", "canvas"]:
            x, y, w, h = (int(v) for v in words[2:6])
            c = Canvas(words[6] if len(words) > 7 else "", x, y, w, h)
            if top is None:
                top = c
            stack.append(c)
        elif words[:2] == ["#X", "restore"]:
            sub = stack.pop()
            stack[-1].objects.append(Obj("canvas", int(words[2]), int(words[3]), " ".join(words[4:]), sub))
        elif words[:2] == ["#X", "connect"]:
            a, b, c2, d = (int(v) for v in words[2:6])
            stack[-1].connects.append((a, b, c2, d))
        elif words[0] == "#X" and words[1] in ("obj", "msg", "text", "floatatom", "symbolatom"):
            body = rec.split(None, 4)[4] if len(words) > 4 else ""
            stack[-1].objects.append(Obj(words[1], int(words[2]), int(words[3]), body))
        elif words[0] == "#X" and words[1] == "coords":
            pass
        else:
            raise ValueError(f"unexpected Pd record {rec[:60]!r}: endless.pd uses canvases, objects, "
                             "messages, comments and connections only")
    if top is None:
        raise ValueError("no '#N canvas' line: not a Pd patch")
    return top


def _records(text: str) -> list[str]:
    """The file's records: split at unescaped semicolons, newlines inside a record joined."""
    out, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == ";":
            rec = "".join(cur).replace("\n", " ").strip()
            if rec:
                out.append(rec)
            cur = []
        else:
            cur.append(ch)
        i += 1
    if "".join(cur).strip():
        raise ValueError(f"a record without its ';' at the end: {''.join(cur).strip()[:60]!r}")
    return out


@dataclass
class Node:
    """One object of the plumbing and what its outlets feed: laid out as a tree, wired as drawn."""

    text: str
    kind: str = "obj"
    kids: list[tuple[int, Node, int]] = field(default_factory=list)  # (outlet, child, inlet)
    links: list[tuple[int, Node, int]] = field(default_factory=list)  # wires outside the tree
    index: int = -1  # where `place` put it

    def to(self, child: Node, outlet: int = 0, inlet: int = 0) -> Node:
        self.kids.append((outlet, child, inlet))
        return child

    def link(self, other: Node, outlet: int = 0, inlet: int = 0) -> None:
        """A wire to a node placed elsewhere (a feedback loop, a second tree): made by `flow`."""
        self.links.append((outlet, other, inlet))

    def width(self) -> int:
        own = width_of(Obj(self.kind, 0, 0, self.text)) + 12
        return max(own, sum(k.width() for _, k, _ in self.kids))

    def depth(self) -> int:
        return 1 + max((k.depth() for _, k, _ in self.kids), default=0)

    def place(self, canvas: Canvas, x: int, y: int) -> int:
        """Add this tree to `canvas` with its root at (x, y); its children side by side below."""
        me = self.index = canvas.add(self.kind, x, y, self.text)
        cx = x
        for outlet, kid, inlet in self.kids:
            canvas.wire(me, kid.place(canvas, cx, y + ROW), outlet, inlet)
            cx += kid.width()
        return me


def chain(*texts: str) -> tuple[Node, Node]:
    """Objects each feeding the next's left inlet: (first, last)."""
    first = last = _node(texts[0])
    for t in texts[1:]:
        last = last.to(_node(t))
    return first, last


def _node(text: str) -> Node:
    """`msg ...` is a message box (so is `\\; name ...`, which sends to a receive name), else an object."""
    if text.startswith("msg "):
        return Node(text[4:], "msg")
    return Node(text, "msg" if text.startswith("\\;") else "obj")


def flow(canvas: Canvas, trees: list[Node], x0: int, y0: int, width: int) -> int:
    """Place trees left to right, wrapping at `width`; returns the y below the last row."""
    x, y, row_h = x0, y0, 0
    for t in trees:
        w, h = t.width(), t.depth() * ROW + 20
        if x > x0 and x + w > x0 + width:
            x, y, row_h = x0, y + row_h, 0
        t.place(canvas, x, y)
        x, row_h = x + w + 10, max(row_h, h)
    return y + row_h


def link_all(canvas: Canvas, node: Node) -> None:
    """Make the wires outside the trees (`Node.link`), once every tree is placed."""
    for outlet, other, inlet in node.links:
        if other.index < 0:
            raise ValueError(f"[{node.text}] links to [{other.text}], which is in no tree placed")
        canvas.wire(node.index, other.index, outlet, inlet)
    for _, kid, _ in node.kids:
        link_all(canvas, kid)
