"""A look at a packet's bytes before python-osc parses it: what it would not parse in silence.

python-osc logs one warning per type tag it does not know and goes on (a datagram of 60,000 `x`
tags: 60,000 log lines, seconds of CPU), and one per bundle element that is neither a message nor
a bundle. `problem()` finds the first of these, so the packet is refused in one answer instead.
"""

from __future__ import annotations

import math
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

TAGS = frozenset("ifdsbhrmtTFN[]")  # what python-osc parses
BUNDLE = b"#bundle\0"
MAX_DEPTH = 32


def problem(data: bytes, depth: int = 0) -> tuple[str, str] | None:
    """(address, why) for the first unsupported type tag, unknown bundle element or broken bundle
    structure, else None (anything else malformed is left to python-osc's parser, which raises).
    A bundle element's size is checked here because python-osc's parser goes back on a negative
    one and loops for ever."""
    if data.startswith(BUNDLE):
        if depth >= MAX_DEPTH:
            return "?", f"bundles nested more than {MAX_DEPTH} deep"
        if len(data) < 16:
            return "?", f"a bundle of {len(data)} bytes: too short for its time tag (16 bytes at least)"
        i, n = 16, 0
        while i < len(data):
            n += 1
            size = int.from_bytes(data[i:i + 4], "big", signed=True) if i + 4 <= len(data) else -1
            i += 4
            if size < 0 or i + size > len(data):
                return "?", f"bundle element {n}: its size does not fit the {len(data)}-byte bundle"
            part = data[i:i + size]
            if not part.startswith((b"/", BUNDLE)):
                return "?", f"bundle element {n} ({size} bytes) is neither a message nor a bundle"
            found = problem(part, depth + 1)
            if found is not None:
                return found
            i += size
        return None
    end = data.find(b"\0")
    if end < 0:
        return None
    start = (end // 4 + 1) * 4
    if data[start:start + 1] != b",":
        return None
    stop = data.find(b"\0", start)
    for b in data[start + 1:stop if stop >= 0 else len(data)]:
        if chr(b) not in TAGS:
            address = data[:end].decode("utf-8", "replace")
            return address, (f"unsupported OSC type tag {chr(b)!r} (supported: {''.join(sorted(TAGS))}): "
                             "the message is not applied")
    return None


FLOAT32_MAX = 3.4028234663852886e38


def encode(address: str, args: tuple[Any, ...]) -> bytes:
    """One OSC message (python-osc picks each argument's type; raises for one it cannot send). A
    float beyond float32's range (a ping's argument echoed back) goes as a double ('d')."""
    b = OscMessageBuilder(address)
    for a in args:
        if isinstance(a, float) and math.isfinite(a) and abs(a) > FLOAT32_MAX:
            b.add_arg(a, OscMessageBuilder.ARG_TYPE_DOUBLE)
        else:
            b.add_arg(a)
    return b.build().dgram
