"""The TouchOSC layout: a real .tosc that parses, round-trips, and sends only what the instrument takes.

Every OSC message is read back from the committed file's bytes as TouchOSC would send it (the
address from its path partials, the type tags from its argument conversions) and checked against
the registry with `common.check_send` / `check_receive`. py2tosc (a development dependency: a
reader checked against the TouchOSC editor's own files) must load it, find nothing wrong, and
write the same XML back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from instrument.layouts import common, tosc, tosc_xml
from instrument.layouts.preview import draw, same_pixels
from instrument.params import Registry

ROOT = Path(__file__).resolve().parents[1]
REG = Registry(slots=common.LAYOUT_SLOTS)
DATA = (ROOT / tosc.PATH).read_bytes()
TAGS = {"FLOAT": "f", "INTEGER": "i", "STRING": "s"}


def _nodes() -> list[ET.Element]:
    return list(tosc_xml.parse(DATA).iter("node"))


def _messages(scope: ET.Element | None = None) -> list[tuple[ET.Element, ET.Element, str, str]]:
    """(node, <osc>, address, type tags) for every OSC message under `scope` (default: the file)."""
    out = []
    for n in (scope if scope is not None else tosc_xml.parse(DATA)).iter("node"):
        for osc in n.iterfind("messages/osc"):
            path = osc.findall("path/partial")
            assert all(p.findtext("type") == "CONSTANT" for p in path), n.get("ID")
            address = "".join(p.findtext("value") or "" for p in path)
            tags = "".join(TAGS[p.findtext("conversion") or ""] for p in osc.iterfind("arguments/partial"))
            out.append((n, osc, address, tags))
    return out


def _page(name: str) -> ET.Element:
    device = tosc_xml.children(tosc_xml.parse(DATA))[0]
    return next(p for p in tosc_xml.children(device) if tosc_xml.prop(p, "name") == name)


def test_the_file_is_zlib_xml_that_round_trips_byte_for_byte():
    xml = zlib.decompress(DATA)
    doc = ET.fromstring(xml)
    assert doc.tag == "lexml" and doc.get("version") == tosc_xml.VERSION
    again = tosc_xml.serialize(tosc_xml.parse(DATA))
    assert again == xml
    assert tosc_xml.compress(again) == DATA


def test_regenerating_reproduces_the_committed_file():
    assert tosc.files(Registry(slots=common.LAYOUT_SLOTS)) == {tosc.PATH: DATA}


def test_every_node_has_a_unique_id_and_a_frame_inside_its_parent():
    nodes = _nodes()
    assert len(nodes) > 200
    ids = [n.get("ID") for n in nodes]
    assert len(set(ids)) == len(ids)
    for parent in nodes:
        _, _, pw, ph = tosc_xml.frame(parent)
        names = [tosc_xml.prop(c, "name") for c in tosc_xml.children(parent)]
        assert len(set(names)) == len(names), names
        for c in tosc_xml.children(parent):
            x, y, w, h = tosc_xml.frame(c)
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= pw and y + h <= ph, \
                (tosc_xml.prop(c, "name"), (x, y, w, h), "outside", (pw, ph))


def test_every_message_sent_is_one_the_instrument_takes():
    sent = [(n, osc, a, t) for n, osc, a, t in _messages() if osc.findtext("send") == "1"]
    assert len(sent) >= 80
    for n, osc, address, tags in sent:
        assert common.check_send(REG, address, tags) is None, (tosc_xml.prop(n, "name"), address, tags)
        for part in osc.iterfind("arguments/partial"):  # a constant is checked as itself, not a sample
            if part.findtext("type") == "CONSTANT" and address in (REG.prefix + "/curve", REG.prefix + "/quantize",
                                                                   REG.prefix + "/morph/mode"):
                ref = REG.resolve(address)
                REG.coerce(ref, [part.findtext("value")])
        assert osc.findtext("feedback") == "0"  # TouchOSC's own echo would send each echo straight back
    by_kind = {(n.get("type"), tosc_xml.prop(n, "buttonType"), t) for n, _, _, t in sent}
    assert {("FADER", None, "f"), ("BUTTON", "1", "i"), ("BUTTON", "0", ""), ("XY", None, "f")} <= by_kind


def test_every_address_listened_to_is_one_the_instrument_sends():
    heard = [(n, a) for n, osc, a, _ in _messages() if osc.findtext("receive") == "1"]
    assert len(heard) >= 80
    for n, address in heard:
        assert common.check_receive(REG, address) is None, (tosc_xml.prop(n, "name"), address)


def test_faders_send_and_receive_normalized_so_they_follow_the_instrument():
    faders = [(a, osc) for n, osc, a, _ in _messages() if n.get("type") == "FADER" and osc.findtext("send") == "1"]
    normalized = {a for a, osc in faders if a.endswith("/normalized")}
    assert normalized >= {f"/endless/slot/{s}/{k}/normalized" for s in range(1, 5) for k in ("gain", "pan")}
    assert all(osc.findtext("receive") == "1" for _, osc in faders)


def test_the_same_controls_as_common_sections():
    """The tablet page has every control `common.sections()` lists, but those TouchOSC cannot show."""
    page = _page("tablet")
    msgs = _messages(page)
    sends = {(a, t) for _, osc, a, t in msgs if osc.findtext("send") == "1"}
    hears = {a for _, osc, a, _ in msgs if osc.findtext("receive") == "1"}
    scripted = {tosc_xml.prop(n, "name") for n in page.iter("node") if tosc_xml.prop(n, "script")}
    no_text_entry = {"/endless/preset/store", "/endless/preset/arm"} | {f"/endless/slot/{s}/prompt" for s in range(1, 5)}
    for c in common.controls(REG):
        if c.xy:
            assert {(c.xy[0], "f"), (c.xy[1], "f")} <= sends
        elif c.label in tosc.SCRIPT_SENDS:
            assert c.label in scripted
        elif c.send and c.send not in no_text_entry:
            assert any(a == c.send for a, _ in sends), c.send
        if c.receive:
            assert c.receive in hears, c.receive


def test_the_phone_has_a_page_per_slot_and_a_mix_page():
    pages = tosc_xml.children(tosc_xml.children(_page("phone"))[0])
    assert [tosc_xml.prop(p, "tabLabel") for p in pages] == ["slot 1", "slot 2", "slot 3", "slot 4", "mix"]
    for s, page in enumerate(pages[:4], 1):
        got = {a for _, _, a, _ in _messages(page)}
        assert {f"/endless/slot/{s}/{k}" for k in ("gain/normalized", "pan/normalized", "mute", "solo", "next",
                                                    "regenerate", "prompt")} <= got
        assert {f"/endless/status/slot/{s}/level", f"/endless/status/slot/{s}/buffered"} <= got
        assert not any(f"/slot/{o}/" in a for a in got for o in range(1, 5) if o != s)


def test_the_root_script_subscribes_with_the_reply_port_and_renews():
    root = tosc_xml.parse(DATA)
    lua = tosc_xml.prop(root, "script") or ""
    assert f"local REPLY_PORT = {common.REPLY_PORT}" in lua and f"RENEW_MS = {common.RENEW_S * 1000}" in lua
    for part in ("function init()", "function update()", "getMillis()", "sendOSC(", "tag = 'i'",
                 "'/endless/' .. what", "function onReceiveNotify(key)"):
        assert part in lua, part
    for key in tosc.SCRIPT_SENDS:  # sent with the port, or with nothing over TCP (REPLY_PORT = 0)
        assert common.check_send(REG, f"/endless/{key}" + ("/to" if key == "ping" else ""), "i") is None
        assert common.check_send(REG, f"/endless/{key}", "") is None
        buttons = [n for n in root.iter("node") if tosc_xml.prop(n, "name") == key]
        assert len(buttons) == 2 and all(f"root:notify('{key}')" in (tosc_xml.prop(b, "script") or "") for b in buttons)


def test_py2tosc_reads_it_finds_nothing_wrong_and_writes_it_back():
    import py2tosc  # a development dependency (pyproject's dev extra)

    doc = py2tosc.loads(DATA)
    assert [str(i) for i in doc.validate()] == []
    assert doc.dumps().encode() == zlib.decompress(DATA)


def test_previews_regenerate_identically():
    previews = tosc.previews(tosc.PATH, DATA)
    assert [p.name for p in previews] == ["endless.tosc-tablet", "endless.tosc-phone"]
    for p in previews:
        assert len(p.boxes) > 50
        assert same_pixels(ROOT / "docs" / "layouts" / f"{p.name}.png", draw(p.boxes, p.width, p.height, p.title, p.scale))


def test_previews_come_from_the_file_bytes():
    """Moving a fader in the file moves it in the preview: the geometry is read back, not recomputed."""
    xml = zlib.decompress(DATA).replace(b"<x>0</x><y>100</y><w>64</w><h>380</h>", b"<x>0</x><y>90</y><w>64</w><h>380</h>", 1)
    assert xml != zlib.decompress(DATA)
    moved = tosc.previews(tosc.PATH, zlib.compress(xml))[0].boxes
    before = tosc.previews(tosc.PATH, DATA)[0].boxes
    assert [b for b in moved if b not in before] and len(moved) == len(before)


def test_a_file_that_is_not_a_layout_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"not a TouchOSC document: root <patch>, expected <lexml>"):
        tosc_xml.parse(zlib.compress(b"<patch/>"))
    with pytest.raises(ValueError, match="may not contain"):
        tosc_xml.serialize(ET.fromstring("<node><properties><property type='s'><key>script</key>"
                                         "<value>a]]&gt;b</value></property></properties></node>"))
