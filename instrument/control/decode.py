"""MIDI bytes to control events (`Hit`s) for a list of bindings.

mido decodes each message (`mido.Message.from_bytes`: status, channel, data ranges, lengths); a
malformed one (a data byte above 127, a lone data byte, a short message) gives no hit. What mido
does not do is here: pairing a 14-bit CC's MSB and LSB, following the NRPN parameter a controller
selected, and reading relative encoders.

>>> d = Decoder([Binding("cc", 7, "xfade")])
>>> d.feed((0xB0, 7, 127)), d.feed((0xB0, 200, 5)), d.feed((5,)), d.feed((0xE0, 5))
([Hit(index=0, kind='abs', x=1.0)], [], [], [])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import mido

from instrument.control.mapfile import Binding
from instrument.control.mapkeys import SOURCES, Source

HitKind = Literal["abs", "rel", "press", "release", "program"]
Midi = Sequence[int]  # one message's bytes: (status, data1[, data2])
NRPN_CCS = frozenset({99, 98, 101, 100, 6, 38, 96, 97})  # NRPN/RPN select, data entry, increment


@dataclass(frozen=True)
class Hit:
    """A decoded control event for binding `index`: `abs` x in 0..1; `rel` x signed ticks; `press` and
    `release` x = velocity 0..1; `program` x = the program number."""

    index: int
    kind: HitKind
    x: float


def relative_ticks(mode: str, v: int) -> int:
    """Signed ticks of a relative encoder's 7-bit value.

    >>> [relative_ticks("twos_complement", v) for v in (1, 3, 127, 125)]
    [1, 3, -1, -3]
    >>> [relative_ticks("binary_offset", v) for v in (65, 63)], [relative_ticks("sign_magnitude", v) for v in (1, 65)]
    ([1, -1], [1, -1])
    """
    if mode == "twos_complement":
        return v - 128 if v >= 64 else v
    if mode == "binary_offset":
        return v - 64
    if mode == "sign_magnitude":
        return -(v & 0x3F) if v & 0x40 else v & 0x3F
    raise ValueError(f"relative mode {mode!r}: allowed twos_complement, binary_offset, sign_magnitude")


class Decoder:
    """Turns MIDI bytes into `Hit`s for a list of bindings; keeps the per-channel 14-bit and NRPN state.

    14-bit CC: the value applies when the LSB arrives (controllers send MSB, then LSB); a controller
    that sends MSBs alone is recognised at its second MSB, and each MSB applies from then on.
    NRPN: CC 99/98 select the parameter, CC 6 (+ CC 38 for 14 bits) carry the value, CC 96/97 step
    it; selecting an RPN (CC 101/100) stops data reaching NRPN bindings until an NRPN is selected.
    """

    def __init__(self, bindings: Sequence[Binding]) -> None:
        self.tables: dict[Source, dict[tuple[int | None, int | None], list[int]]] = {s: {} for s in SOURCES}
        for i, b in enumerate(bindings):
            self.tables[b.source].setdefault((b.channel, b.number), []).append(i)
        self.bindings = list(bindings)
        self._msb: dict[tuple[int, int], int] = {}  # (channel, MSB controller) -> last MSB
        self._pending: set[tuple[int, int]] = set()  # an MSB waits for its LSB
        self._msb_only: set[tuple[int, int]] = set()
        self._nrpn: dict[int, list[int | None]] = {}  # channel -> [param MSB, param LSB, data MSB, rpn?]

    def _find(self, src: Source, ch: int, num: int | None) -> list[int]:
        t = self.tables[src]
        return t.get((ch, num), []) + t.get((None, num), [])

    def feed(self, data: Midi) -> list[Hit]:
        """The hits of one message's bytes; none for a malformed message or one no binding uses."""
        try:
            msg = mido.Message.from_bytes(data)
        except (ValueError, TypeError, IndexError):  # IndexError: mido on a pitch bend one data byte short
            return []
        if msg.type == "control_change":
            return self._cc(msg.channel, msg.control, msg.value)
        if msg.type == "note_on" and msg.velocity > 0:
            return [Hit(i, "press", msg.velocity / 127) for i in self._find("note", msg.channel, msg.note)]
        if msg.type in ("note_on", "note_off"):
            return [Hit(i, "release", 0.0) for i in self._find("note", msg.channel, msg.note)]
        if msg.type == "program_change":
            found = self._find("program", msg.channel, msg.program) + self._find("program", msg.channel, None)
            return [Hit(i, "program", float(msg.program)) for i in found]
        return []

    def _cc(self, ch: int, cc: int, v: int) -> list[Hit]:
        hits: list[Hit] = []
        for i in self._find("cc", ch, cc):
            mode = self.bindings[i].mode
            hits.append(Hit(i, "abs", v / 127) if mode == "absolute" else Hit(i, "rel", relative_ticks(mode, v)))
        if cc < 32 and (self.tables["cc14"].get((ch, cc)) or self.tables["cc14"].get((None, cc))):
            key = (ch, cc)
            self._msb[key] = v
            if key in self._msb_only or key in self._pending:
                self._msb_only.add(key)
                hits += [Hit(i, "abs", (v << 7) / 16383) for i in self._find("cc14", ch, cc)]
            else:
                self._pending.add(key)
        elif 32 <= cc < 64 and (ch, cc - 32) in self._msb:
            key = (ch, cc - 32)
            self._pending.discard(key)
            self._msb_only.discard(key)
            hits += [Hit(i, "abs", (self._msb[key] << 7 | v) / 16383) for i in self._find("cc14", ch, cc - 32)]
        if cc in NRPN_CCS and self.tables["nrpn"]:
            hits += self._nrpn_cc(ch, cc, v)
        return hits

    def _nrpn_cc(self, ch: int, cc: int, v: int) -> list[Hit]:
        st = self._nrpn.setdefault(ch, [None, None, None, 1])
        if cc in (99, 98):
            st[0 if cc == 99 else 1], st[3] = v, 0
            return []
        if cc in (101, 100):
            st[3] = 1
            return []
        if st[3] or st[0] is None or st[1] is None:
            return []
        idx = self._find("nrpn", ch, st[0] << 7 | st[1])
        if cc == 6:
            st[2] = v
            return [Hit(i, "abs", v / 127) for i in idx if self.bindings[i].bits == 7]
        if cc == 38:
            if st[2] is None:
                return []
            return [Hit(i, "abs", (st[2] << 7 | v) / 16383) for i in idx if self.bindings[i].bits == 14]
        return [Hit(i, "rel", 1.0 if cc == 96 else -1.0) for i in idx]
