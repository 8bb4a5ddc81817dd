"""A small .maxpat writer and reader: boxes, patchlines and the patcher around them, as Max 8/9 saves it.

`Patch` places boxes (`obj` for object boxes, `ui` for interface objects, `msg`, `comment`) and
connects them; `dumps()` writes the JSON the way Max does (tab-indented; each box's keys in
alphabetical order) and `DUMP` is how the tests re-serialise a parsed file to compare its bytes.
Each object's inlets, outlets and outlet types come from `spec()`, one table for every object the
layouts use, so a patchline's index is checked here against the box it lands on. `boxes()` reads a
file back into preview `Box`es (the geometry is `patching_rect`, the kind comes from `maxclass`).

>>> p = Patch()
>>> a = p.msg("/endless/ping", 10, 10)
>>> b = p.obj("udpsend 127.0.0.1 9000", 10, 40)
>>> p.connect(a, 0, b, 0)
>>> [(x.kind, x.label) for x in boxes(dumps(p.patcher(200, 100)))]
[('label', '/endless/ping'), ('object', 'udpsend 127.0.0.1 9000')]
"""

from __future__ import annotations

import json
import math
from typing import Any

from instrument.errors import ParamError
from instrument.layouts.preview import Box

DUMP: dict[str, Any] = {"indent": "\t", "ensure_ascii": False}  # json.dumps settings (tests use them)
CHAR_W = 7.0  # Arial 12 in Max: about this many pixels a character (boxes are sized from it)
LINE_H = 14.0  # one more line of a wrapped box

# Interface objects: maxclass -> (inlets, outlet types).
UI: dict[str, tuple[int, tuple[str, ...]]] = {
    "slider": (1, ("",)), "toggle": (1, ("int",)), "button": (1, ("bang",)),
    "textedit": (1, ("", "int", "", "")), "umenu": (1, ("int", "", "")),
    "number": (1, ("", "bang")), "flonum": (1, ("", "bang")), "pictslider": (2, ("int", "int")),
    "panel": (1, ()), "comment": (1, ()), "message": (2, ("",)),
}
_TRIGGER = {"b": "bang", "i": "int", "f": "float", "s": "", "l": ""}
_FIXED: dict[str, tuple[int, tuple[str, ...]]] = {
    "udpsend": (1, ()), "udpreceive": (1, ("",)), "prepend": (1, ("",)), "int": (2, ("int",)),
    "metro": (2, ("bang",)), "loadmess": (1, ("",)), "loadbang": (1, ("bang",)),
    "notein": (1, ("int", "int", "int")), "stripnote": (2, ("int", "int")), "split": (3, ("", "")),
    "transport": (2, ("int", "int", "float", "float", "float", "", "int", "float", "")),
    "print": (1, ()),
}
_ARITHMETIC = ("+", "-", "*", "/", "%")


def spec(text: str) -> tuple[int, tuple[str, ...]]:
    """(inlets, outlet types) of the object box `text` (its class and arguments, attributes after @)."""
    words = text.split()
    args = [w for w in words[1:] if not w.startswith("@")]
    name = words[0] if words else ""
    if name == "route":
        return 2, ("",) * (len(args) + 1)
    if name in ("sel", "select"):
        return (2 if len(args) == 1 else 1), ("bang",) * len(args) + ("",)
    if name in ("t", "trigger"):
        return 1, tuple(_TRIGGER[a] for a in args)
    if name in _ARITHMETIC:
        return 2, ("float" if args and "." in args[0] else "int",)
    if name in _FIXED:
        return _FIXED[name]
    raise ParamError(f"Max object {name!r}: not in maxbox.spec(): add its inlets and outlets there")


def width(text: str, minimum: float = 30.0, fontsize: float = 12.0) -> float:
    """About how wide Max draws `text` in a box (Arial at `fontsize`)."""
    return max(minimum, math.ceil(len(text) * CHAR_W * fontsize / 12.0) + 12.0)


class Patch:
    """Boxes and patchlines of one patcher, in the order they were placed."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.lines: list[dict[str, Any]] = []
        self._io: dict[str, tuple[int, int]] = {}

    def _add(self, maxclass: str, rect: tuple[float, float, float, float], inlets: int,
             outlets: tuple[str, ...], **attrs: Any) -> str:
        box_id = f"obj-{len(self.items) + 1}"
        box: dict[str, Any] = {"id": box_id, "maxclass": maxclass, "numinlets": inlets,
                               "numoutlets": len(outlets), "patching_rect": [float(v) for v in rect]}
        if outlets:
            box["outlettype"] = list(outlets)
        if maxclass not in ("comment", "panel", "message", "newobj"):
            box["parameter_enable"] = 0
        box.update({k: v for k, v in attrs.items() if v is not None})
        self.items.append({"box": dict(sorted(box.items()))})
        self._io[box_id] = (inlets, len(outlets))
        return box_id

    def obj(self, text: str, x: float, y: float, w: float | None = None, **attrs: Any) -> str:
        """An object box; a box narrower than its text wraps onto more lines, as Max draws it."""
        inlets, outlets = spec(text)
        need = width(text, fontsize=float(attrs.get("fontsize", 12.0)))
        w = w or need
        lines = max(1, math.ceil(need / w))
        if lines > 1:
            attrs["linecount"] = lines
        return self._add("newobj", (x, y, w, 22.0 + LINE_H * (lines - 1)), inlets, outlets, text=text, **attrs)

    def msg(self, text: str, x: float, y: float, w: float | None = None, **attrs: Any) -> str:
        return self._add("message", (x, y, w or width(text), 22.0), *UI["message"], text=text, **attrs)

    def comment(self, text: str, x: float, y: float, w: float | None = None, lines: int = 1,
                **attrs: Any) -> str:
        if lines > 1:
            attrs["linecount"] = lines
        return self._add("comment", (x, y, w or width(text), 20.0 + LINE_H * (lines - 1)), *UI["comment"],
                         text=text, **attrs)

    def ui(self, maxclass: str, x: float, y: float, w: float, h: float, **attrs: Any) -> str:
        return self._add(maxclass, (x, y, w, h), *UI[maxclass], **attrs)

    def connect(self, src: str, outlet: int, dst: str, inlet: int = 0) -> None:
        if not 0 <= outlet < self._io[src][1] or not 0 <= inlet < self._io[dst][0]:
            raise ParamError(f"patchline {src}:{outlet} -> {dst}:{inlet}: no such outlet or inlet")
        self.lines.append({"patchline": {"destination": [dst, inlet], "source": [src, outlet]}})

    def patcher(self, w: float, h: float, description: str = "") -> dict[str, Any]:
        """The whole document (`{"patcher": {...}}`) with a window of `w` x `h`."""
        return {"patcher": {
            "fileversion": 1,
            "appversion": {"major": 8, "minor": 6, "revision": 0, "architecture": "x64", "modernui": 1},
            "classnamespace": "box",
            "rect": [40.0, 80.0, float(w), float(h)],
            "bglocked": 0, "openinpresentation": 0,
            "default_fontsize": 12.0, "default_fontface": 0, "default_fontname": "Arial",
            "gridonopen": 1, "gridsize": [15.0, 15.0], "gridsnaponopen": 1, "objectsnaponopen": 1,
            "statusbarvisible": 2, "toolbarvisible": 1,
            "lefttoolbarpinned": 0, "toptoolbarpinned": 0, "righttoolbarpinned": 0, "bottomtoolbarpinned": 0,
            "toolbars_unpinned_last_save": 0, "tallnewobj": 0, "boxanimatetime": 200,
            "enablehscroll": 1, "enablevscroll": 1, "devicewidth": 0.0,
            "description": description, "digest": "", "tags": "", "style": "", "subpatcher_template": "",
            "assistshowspatchername": 0,
            "boxes": self.items,
            "lines": self.lines,
            "dependency_cache": [],
            "autosave": 0,
        }}


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, **DUMP) + "\n").encode()


def _kind(box: dict[str, Any]) -> str:
    cls = box.get("maxclass", "")
    if cls == "slider":
        return "meter" if box.get("ignoreclick") else "fader"
    return {"toggle": "toggle", "button": "button", "textedit": "text", "umenu": "menu", "pictslider": "xy",
            "number": "number", "flonum": "number", "comment": "comment", "panel": "panel",
            "message": "label"}.get(cls, "object")


def boxes(data: bytes) -> list[Box]:
    """Every box of a .maxpat as a preview `Box`, from its own `patching_rect`, `maxclass` and text."""
    doc = json.loads(data)
    out = []
    for item in doc["patcher"]["boxes"]:
        b = item["box"]
        x, y, w, h = b["patching_rect"]
        out.append(Box(x, y, w, h, _kind(b), str(b.get("text", ""))))
    return out


def window(data: bytes) -> tuple[int, int]:
    """The patcher window's size (the preview's canvas)."""
    rect = json.loads(data)["patcher"]["rect"]
    return int(rect[2]), int(rect[3])


def teach(p: Patch, left: tuple[str, ...], right: tuple[str, ...]) -> None:
    """Two columns of teaching comments under the title (lines short enough for the preview)."""
    for x, lines in ((10.0, left), (520.0, right)):
        for k, line in enumerate(lines):
            p.comment(line, x, 32 + 15 * k, 500, fontsize=11.0)
