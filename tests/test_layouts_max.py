"""The Max/MSP layouts (max_patches/*.maxpat): valid patcher JSON that round-trips, patchlines that
land on real inlets and outlets, every OSC message the patches send (read from the patch itself: the
message box or `[prepend]` text and the objects feeding it) accepted by the registry, every routed
feedback address one the instrument sends, no path from `[udpreceive]` back out to `[udpsend]`, and
files and previews that regenerate byte for byte (pixel for pixel)."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from instrument.errors import ParamError
from instrument.layouts import maxpat
from instrument.layouts.common import LAYOUT_SLOTS, check_receive, check_send, controls
from instrument.layouts.maxbox import DUMP, Patch
from instrument.layouts.preview import draw, same_pixels
from instrument.params import Registry

pytest.importorskip("PIL")

ROOT = Path(__file__).resolve().parents[1]
REG = Registry(slots=LAYOUT_SLOTS)
PATHS = (maxpat.PERFORM, maxpat.SEQUENCER)

# Inlets and outlets as Max itself saves them (read off real .maxpat files), independent of maxbox.spec().
KNOWN_UI = {"slider": (1, 1), "toggle": (1, 1), "button": (1, 1), "textedit": (1, 4), "umenu": (1, 3),
            "number": (1, 2), "flonum": (1, 2), "pictslider": (2, 2), "message": (2, 1), "comment": (1, 0),
            "panel": (1, 0)}
KNOWN_OBJ = {"udpsend": (1, 0), "udpreceive": (1, 1), "prepend": (1, 1), "int": (2, 1), "metro": (2, 1),
             "transport": (2, 9), "notein": (1, 3), "stripnote": (2, 2), "loadmess": (1, 1), "split": (3, 2),
             "+": (2, 1), "-": (2, 1), "/": (2, 1), "%": (2, 1)}


def committed(path: str) -> bytes:
    return (ROOT / path).read_bytes()


class Graph:
    """A parsed patch: boxes by id and the lines in and out of each."""

    def __init__(self, data: bytes) -> None:
        self.doc: dict[str, Any] = json.loads(data)
        self.boxes = {b["box"]["id"]: b["box"] for b in self.doc["patcher"]["boxes"]}
        self.lines = [tuple(ln["patchline"]["source"]) + tuple(ln["patchline"]["destination"])
                      for ln in self.doc["patcher"]["lines"]]

    def text(self, bid: str) -> str:
        return str(self.boxes[bid].get("text", ""))

    def named(self, name: str) -> list[str]:
        return [i for i, b in self.boxes.items() if b["maxclass"] == "newobj" and self.text(i).split()[0] == name]

    def into(self, bid: str, inlet: int = 0) -> list[tuple[str, int]]:
        return [(s, o) for s, o, d, i in self.lines if d == bid and i == inlet]

    def out_of(self, bid: str) -> list[str]:
        return [d for s, o, d, i in self.lines if s == bid]

    def types(self, bid: str, outlet: int) -> set[str]:
        """What box `bid` sends out of `outlet`: OSC tags ("i", "f", "s"), "bang", or "<selector> <tags>"."""
        b, words = self.boxes[bid], self.text(bid).split()
        cls = b["maxclass"]
        fixed = {"flonum": "f", "number": "i", "toggle": "i", "pictslider": "i", "button": "bang"}
        if cls in fixed:
            return {fixed[cls]}
        if cls == "slider":
            return {"f" if b.get("floatoutput") else "i"}
        if cls == "textedit":
            assert b.get("outputmode") == 1, "a textedit must send its text as one symbol (outputmode 1)"
            return {"text s"} if outlet == 0 else {"other"}
        if cls == "umenu":
            return {"i"} if outlet == 0 else {"s"}
        if cls == "message":
            return {tags(words)}
        name, args = words[0], [w for w in words[1:] if not w.startswith("@")]
        if name in ("+", "-", "*", "/", "%"):
            return {"f" if "." in args[0] else "i"}
        if name in ("int", "stripnote", "notein", "transport"):
            return {"i"}
        if name == "t":
            return {{"i": "i", "f": "f", "b": "bang"}[args[outlet]]}
        if name in ("metro", "loadbang"):
            return {"bang"}
        if name == "loadmess":
            return {tags(args)}
        if name in ("sel", "select") and outlet < len(args):
            return {"bang"}
        if name == "route" and outlet < len(args):
            return {t.split(" ", 1)[1] for t in self.inputs(bid) if t.startswith(args[outlet] + " ")}
        if name in ("sel", "select", "route", "split"):
            return self.inputs(bid)
        raise AssertionError(f"{bid}: no rule for what [{self.text(bid)}] sends")

    def inputs(self, bid: str) -> set[str]:
        return {t for s, o in self.into(bid) for t in self.types(s, o)}

    def sends(self) -> set[tuple[str, str]]:
        """Every (address, tags) that reaches the `[udpsend]`, read from the patch."""
        out: set[tuple[str, str]] = set()
        (udp,) = self.named("udpsend")
        for src, _ in self.into(udp):
            words = self.text(src).split()
            cls = self.boxes[src]["maxclass"]
            if cls == "message" and words[0].startswith("/"):
                assert "$" not in self.text(src), f"{src}: an OSC message box with $: {self.text(src)!r}"
                out.add((words[0], tags(words[1:])))
            elif cls == "newobj" and words[0] == "prepend" and words[1].startswith("/"):
                got = self.inputs(src)
                assert got and got <= {"i", "f", "s"}, f"[{self.text(src)}] gets {got}: one number or symbol each"
                out |= {(words[1], t) for t in got}
            else:
                assert words[0] in ("host", "port") or words[:2] == ["prepend", "port"], \
                    f"{src} ({cls} {self.text(src)!r}) feeds udpsend but is no OSC message nor a host/port setting"
        return out

    def routes(self) -> dict[str, list[str]]:
        """Every `[route]` reached from `[udpreceive]` (through other routes), with its addresses."""
        (udp,) = self.named("udpreceive")
        seen, todo = {}, deque(self.out_of(udp))
        while todo:
            r = todo.popleft()
            if r in seen or self.text(r).split()[0] != "route":
                continue
            seen[r] = self.text(r).split()[1:]
            todo.extend(d for s, o, d, i in self.lines if s == r and o == len(seen[r]))
        return seen


def tags(words: list[str]) -> str:
    def tag(w: str) -> str:
        try:
            int(w)
            return "i"
        except ValueError:
            try:
                float(w)
                return "f"
            except ValueError:
                return "s"
    return "".join(tag(w) for w in words)


def generated(slots: int = LAYOUT_SLOTS) -> dict[str, bytes]:
    return maxpat.files(Registry(slots=slots))


DOCS = [pytest.param(LAYOUT_SLOTS, p, id=f"{Path(p).name}") for p in PATHS] + \
       [pytest.param(2, p, id=f"{Path(p).name}-2-slots") for p in PATHS]


def test_regenerating_reproduces_the_committed_files() -> None:
    made = generated()
    assert sorted(made) == sorted(PATHS)
    for path, data in made.items():
        assert committed(path) == data, f"{path} is out of date: run `make layouts` and commit it"


@pytest.mark.parametrize("path", PATHS)
def test_valid_maxpat_json_that_round_trips(path: str) -> None:
    data = committed(path)
    doc = json.loads(data)
    assert (json.dumps(doc, **DUMP) + "\n").encode() == data
    p = doc["patcher"]
    assert p["fileversion"] == 1 and p["classnamespace"] == "box" and p["appversion"]["major"] >= 8
    assert len(p["rect"]) == 4 and all(isinstance(v, float) for v in p["rect"])
    ids = [b["box"]["id"] for b in p["boxes"]]
    assert len(ids) == len(set(ids)) > 20
    for item in p["boxes"]:
        b = item["box"]
        assert list(b) == sorted(b), f"{b['id']}: keys in Max's (alphabetical) order"
        assert len(b["patching_rect"]) == 4 and b["patching_rect"][2] > 0 and b["patching_rect"][3] > 0
        assert len(b.get("outlettype", [])) == b["numoutlets"], b["id"]
        cls = b["maxclass"]
        want = KNOWN_UI.get(cls) or KNOWN_OBJ.get(str(b.get("text", "")).split()[0])
        text = str(b.get("text", "")).split()
        if cls == "newobj" and text[0] in ("route", "sel", "t"):
            n = len(text) - 1
            want = {"route": (2, n + 1), "sel": (2 if n == 1 else 1, n + 1), "t": (1, n)}[text[0]]
        assert want == (b["numinlets"], b["numoutlets"]), f"{b['id']} {cls} {text}: Max has {want}"
    for ln in p["lines"]:
        assert set(ln["patchline"]) >= {"source", "destination"}


@pytest.mark.parametrize("path", PATHS)
def test_every_patchline_lands_on_a_real_inlet_and_outlet(path: str) -> None:
    g = Graph(committed(path))
    assert g.lines
    for src, outlet, dst, inlet in g.lines:
        assert src in g.boxes and dst in g.boxes, (src, dst)
        assert 0 <= outlet < g.boxes[src]["numoutlets"], f"{src}:{outlet} ({g.text(src)})"
        assert 0 <= inlet < g.boxes[dst]["numinlets"], f"{dst}:{inlet} ({g.text(dst)})"


@pytest.mark.parametrize(("slots", "path"), DOCS)
def test_every_message_sent_is_one_the_instrument_takes(slots: int, path: str) -> None:
    reg = Registry(slots=slots)
    sends = Graph(generated(slots)[path]).sends()
    assert len(sends) >= (5 if path == maxpat.SEQUENCER else 30)
    refused = [why for a, t in sorted(sends) if (why := check_send(reg, a, t))]
    assert not refused, refused


@pytest.mark.parametrize("slots", [LAYOUT_SLOTS, 2])
def test_the_performance_patch_sends_and_shows_every_control(slots: int) -> None:
    reg = Registry(slots=slots)
    g = Graph(generated(slots)[maxpat.PERFORM])
    sends = g.sends()
    routed = {a for args in g.routes().values() for a in args}
    for c in controls(reg):
        if c.send:
            assert (c.send, c.types) in sends, f"{c.label}: {c.send} [{c.types}] is not sent"
        if c.xy:
            assert {(a, "f") for a in c.xy} <= sends
        if c.receive:
            assert c.receive in routed, f"{c.label}: {c.receive} is not routed to it"
    assert (f"{reg.prefix}/preset/recall", "i") in sends  # the preset menu and the recall box
    assert {(f"{reg.prefix}/{a}", "i") for a in ("subscribe", "unsubscribe", "ping/to", "sync")} <= sends
    (metro,) = [m for m in g.named("metro")]
    assert g.text(metro) == "metro 30000"  # subscribe renews the subscription (60 s over UDP) every 30 s


@pytest.mark.parametrize(("slots", "path"), [d for d in DOCS if maxpat.PERFORM in d.values])
def test_every_routed_address_is_one_the_instrument_sends(slots: int, path: str) -> None:
    reg = Registry(slots=slots)
    g = Graph(generated(slots)[path])
    routes = g.routes()
    assert len(routes) == len(g.named("route")) - sum(1 for r in g.named("route") if g.text(r) == "route text")
    wrong = [why for args in routes.values() for a in args if (why := check_receive(reg, a))]
    assert not wrong, wrong


@pytest.mark.parametrize("path", PATHS)
def test_feedback_never_goes_back_out(path: str) -> None:
    """From [udpreceive], a value reaches controls only through [set $1] / [prepend set(symbol)] (which
    change a control without output), so nothing the instrument says is sent back to it."""
    g = Graph(committed(path))
    starts = g.named("udpreceive")
    reached: set[str] = set()
    todo = deque(starts)
    while todo:
        b = todo.popleft()
        if b in reached:
            continue
        reached.add(b)
        words = g.text(b).split()
        if words and (words[0] == "set" or words[:2] in (["prepend", "set"], ["prepend", "setsymbol"])):
            reached.update(g.out_of(b))  # the control is set, and outputs nothing
            continue
        todo.extend(g.out_of(b))
    assert not reached & set(g.named("udpsend"))
    if path == maxpat.PERFORM:
        assert len(reached) > 60  # the feedback reaches the controls


def test_the_sequencer_plays_presets_on_bars_and_notes() -> None:
    g = Graph(committed(maxpat.SEQUENCER))
    (clock,) = g.named("metro")
    assert "@quantize 1n" in g.text(clock) and g.named("transport")[0] in g.out_of(clock)

    def reaches(start: str, want: str) -> bool:
        seen, todo = set(), deque([start])
        while todo:
            b = todo.popleft()
            if b not in seen:
                seen.add(b)
                todo.extend(g.out_of(b))
        return any(g.text(b).startswith(want) for b in seen)

    recall = f"{REG.prefix}/preset/recall"
    assert reaches(g.named("transport")[0], recall)
    assert reaches(g.named("notein")[0], f"prepend {recall}")
    assert reaches(g.named("notein")[0], f"{REG.prefix}/slot/1/prompt ")


@pytest.mark.parametrize("path", PATHS)
def test_previews_regenerate_identically(path: str) -> None:
    data = committed(path)
    (pv,) = maxpat.previews(path, data)
    assert len(pv.boxes) == len(json.loads(data)["patcher"]["boxes"])
    img = draw(pv.boxes, pv.width, pv.height, pv.title, pv.scale)
    png = ROOT / "docs/layouts" / f"{pv.name}.png"
    assert same_pixels(png, img), f"{png} is out of date: run `make layouts` and commit it"


def test_the_writer_refuses_unknown_objects_and_lines_to_nowhere() -> None:
    p = Patch()
    with pytest.raises(ParamError, match=r"Max object 'zl': not in maxbox.spec\(\)"):
        p.obj("zl group 4", 0, 0)
    a, b = p.obj("udpsend 127.0.0.1 9000", 0, 0), p.msg("/endless/ping", 0, 30)
    with pytest.raises(ParamError, match="no such outlet or inlet"):
        p.connect(a, 0, b)  # udpsend has no outlet
