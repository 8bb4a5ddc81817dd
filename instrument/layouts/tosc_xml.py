"""The .tosc document format (TouchOSC, hexler's current app): build it, write it, read it back.

A .tosc file is a zlib-compressed XML document: `<lexml version='6'>` around one root `<node>`.
Each node has an ID, a type (GROUP, PAGER, FADER, BUTTON, LABEL, XY, ...), `<properties>` (typed:
s, b, i, f, r for the frame rectangle, c for a colour), `<values>` (what the control holds: x, y,
text, touch, page), `<messages>` (here `<osc>`: send/receive flags, triggers, a path and arguments
made of partials) and `<children>`. Frames are relative to the parent node.

We build an ElementTree and serialize it as the editor saves it: one line, properties sorted by
key, keys and string values in CDATA (which ElementTree cannot write, hence `serialize`). The same
`serialize` applied to the parsed file gives the file back, which is how the tests round-trip it.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

VERSION = "6"  # the lexml version TouchOSC 1.5 writes (10 connections, noDuplicates)
CONNECTIONS = "0000000001"  # connection 1 only (the rightmost character)
NAMESPACE = uuid.UUID("6f1d3b0e-5a1c-4c55-9a57-0e6d1e55e0a1")  # IDs: uuid5 of the node's name path
Colour = tuple[float, float, float, float]
Frame = tuple[int, int, int, int]


@dataclass(frozen=True)
class Partial:
    """A piece of an OSC path or an argument: a CONSTANT, or a control's VALUE (x, y, text)."""

    kind: str  # CONSTANT or VALUE
    conversion: str  # STRING, INTEGER, FLOAT, BOOLEAN
    value: str
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class Osc:
    address: str
    args: tuple[Partial, ...] = ()
    send: bool = True
    receive: bool = True
    trigger: tuple[str, str] | None = ("x", "ANY")  # (value, ANY | RISE | FALL); None: never sends


def _num(v: float | int | bool) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def _leaf(parent: ET.Element, tag: str, text: str) -> ET.Element:
    e = ET.SubElement(parent, tag)
    e.text = text
    return e


def node(parent: ET.Element | None, kind: str, path: str, props: dict[str, object],
         values: tuple[tuple[str, str], ...], messages: tuple[Osc, ...] = ()) -> ET.Element:
    """A node with its properties (str -> s, bool -> b, int -> i, float -> f, 4 ints -> r, 4 floats -> c)."""
    attrib = {"ID": str(uuid.uuid5(NAMESPACE, path)), "type": kind}
    e = ET.Element("node", attrib) if parent is None else ET.SubElement(_children(parent), "node", attrib)
    if parent is None:
        ET.SubElement(e, "includes")
    ps = ET.SubElement(e, "properties")
    for key in sorted(props):
        v = props[key]
        p = ET.SubElement(ps, "property")
        _leaf(p, "key", key)
        if isinstance(v, tuple):
            p.set("type", "r" if all(isinstance(x, int) for x in v) else "c")
            box = ET.SubElement(p, "value")
            for k, x in zip("xywh" if p.get("type") == "r" else "rgba", v, strict=True):
                _leaf(box, k, _num(x))
        else:
            p.set("type", {str: "s", bool: "b", int: "i", float: "f"}[type(v)])
            _leaf(p, "value", v if isinstance(v, str) else _num(v))  # type: ignore[arg-type]
    vs = ET.SubElement(e, "values")
    for key, default in values:
        v = ET.SubElement(vs, "value")
        for tag, text in (("key", key), ("locked", "0"), ("lockedDefaultCurrent", "0"), ("default", default),
                          ("defaultPull", "0")):
            _leaf(v, tag, text)
    if messages:
        ms = ET.SubElement(e, "messages")
        for m in messages:
            _osc(ET.SubElement(ms, "osc"), m)
    return e


def _children(e: ET.Element) -> ET.Element:
    c = e.find("children")
    return c if c is not None else ET.SubElement(e, "children")


def _osc(o: ET.Element, m: Osc) -> None:
    for tag, flag in (("enabled", True), ("send", m.send), ("receive", m.receive), ("feedback", False),
                      ("noDuplicates", False)):
        _leaf(o, tag, _num(flag))
    _leaf(o, "connections", CONNECTIONS)
    if m.trigger is not None:
        t = ET.SubElement(ET.SubElement(o, "triggers"), "trigger")
        _leaf(t, "var", m.trigger[0])
        _leaf(t, "condition", m.trigger[1])
    for tag, parts in (("path", (Partial("CONSTANT", "STRING", m.address),)), ("arguments", m.args)):
        holder = ET.SubElement(o, tag)
        for part in parts:
            p = ET.SubElement(holder, "partial")
            for k, text in (("type", part.kind), ("conversion", part.conversion), ("value", part.value),
                            ("scaleMin", _num(part.low)), ("scaleMax", _num(part.high))):
                _leaf(p, k, text)


def _cdata(tag: str, parent: str, ptype: str | None) -> bool:
    """Whether the editor writes this element's text as CDATA."""
    return tag in ("key", "default", "var") or (tag == "value" and (parent == "partial" or ptype == "s"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def serialize(root: ET.Element) -> bytes:
    """The document as TouchOSC saves it (UTF-8, one line), from a built or a parsed tree."""
    out = ["<?xml version='1.0' encoding='UTF-8'?>", f"<lexml version='{VERSION}'>"]

    def walk(e: ET.Element, parent: str, ptype: str | None) -> None:
        attrs = "".join(f" {k}='{_escape(v)}'" for k, v in e.attrib.items())
        if len(e) == 0:
            text = e.text or ""
            if _cdata(e.tag, parent, ptype):
                if "]]>" in text:
                    raise ValueError(f"{text[:40]!r}: text for a .tosc may not contain ']]>'")
                body = f"<![CDATA[{text}]]>"
            else:
                body = _escape(text)
            out.append(f"<{e.tag}{attrs}>{body}</{e.tag}>")
            return
        out.append(f"<{e.tag}{attrs}>")
        for child in e:
            walk(child, e.tag, e.get("type") if e.tag == "property" else None)
        out.append(f"</{e.tag}>")

    walk(root, "lexml", None)
    out.append("</lexml>")
    return "".join(out).encode("utf-8")


def compress(xml: bytes) -> bytes:
    return zlib.compress(xml, 9)


def parse(data: bytes) -> ET.Element:
    """The root node of a .tosc file's bytes (raises zlib.error or ParseError on a broken file)."""
    doc = ET.fromstring(zlib.decompress(data))
    if doc.tag != "lexml" or doc.find("node") is None:
        raise ValueError(f"not a TouchOSC document: root <{doc.tag}>, expected <lexml> holding a <node>")
    root = doc.find("node")
    assert root is not None
    return root


def prop(e: ET.Element, key: str) -> str | None:
    """A node's property value as text (None if it has none)."""
    for p in e.iterfind("properties/property"):
        if p.findtext("key") == key:
            return p.findtext("value")
    return None


def frame(e: ET.Element) -> Frame:
    for p in e.iterfind("properties/property"):
        if p.findtext("key") == "frame":
            return tuple(int(float(p.findtext(f"value/{k}") or 0)) for k in "xywh")  # type: ignore[return-value]
    raise ValueError(f"node {e.get('ID')} ({e.get('type')}) has no frame")


def default(e: ET.Element, key: str) -> str | None:
    for v in e.iterfind("values/value"):
        if v.findtext("key") == key:
            return v.findtext("default")
    return None


def children(e: ET.Element) -> list[ET.Element]:
    return list(e.iterfind("children/node"))


def walk(e: ET.Element, x: int = 0, y: int = 0) -> Iterator[tuple[ET.Element, Frame]]:
    """Every node below `e` with its frame made absolute (relative to `e`'s origin plus x, y)."""
    for c in children(e):
        fx, fy, fw, fh = frame(c)
        yield c, (x + fx, y + fy, fw, fh)
        yield from walk(c, x + fx, y + fy)
