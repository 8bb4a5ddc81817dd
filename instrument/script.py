"""Timed control scripts: JSON lines of `{"t": seconds, "address": "/endless/...", "args": [...]}`.

`endless render --script FILE` applies each event at its sample; `endless play --script FILE` at
the same frames of the live output (so a recording of it equals the offline render). Blank lines
and lines starting with `#` are skipped. Every line is validated against the parameter registry
and, once the engine is built, through its change check (`check_script`: the blend parser, weights
against the prompt the script has set by then, a generator being there) before anything plays, so
a bad script never half-runs; each error names file:line. What only the moment can refuse (weights
for a prompt a performer has changed meanwhile) is logged with file:line by `run_event`, and the
set goes on. `controllog.py` writes the same format from a live performance.

>>> ev = parse_line('{"t": 1.5, "address": "/endless/xfade", "args": [2]}', "s.jsonl", 1)
>>> (ev.t, ev.address, ev.args)
(1.5, '/endless/xfade', (2,))
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from instrument.control.tomlfile import read_text
from instrument.errors import EndlessError, ParamError, ScriptError
from instrument.params import Ref, Registry, Value

log = logging.getLogger(__name__)

_KEYS = {"t", "address", "args"}


@dataclass(frozen=True)
class Event:
    t: float  # seconds from the start of the output
    address: str
    args: tuple[object, ...]
    where: str = field(default="", compare=False)  # file:line it was read from ("" when made in code)

    def to_json(self) -> str:
        return json.dumps({"t": round(self.t, 6), "address": self.address, "args": list(self.args)})


def parse_line(line: str, where: str, lineno: int) -> Event:
    loc = f"{where}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ScriptError(f"{loc}: not JSON ({e.msg}): each line is "
                          '{"t": seconds, "address": "/endless/...", "args": [...]}') from None
    if not isinstance(obj, dict):
        raise ScriptError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _KEYS
    if unknown:
        raise ScriptError(f"{loc}: unknown key(s) {', '.join(sorted(unknown))}: allowed are t, address, args")
    t, address, args = obj.get("t"), obj.get("address"), obj.get("args", [])
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ScriptError(f"{loc}: t={t!r}: t must be a number of seconds >= 0")
    if not isinstance(address, str):
        raise ScriptError(f"{loc}: address={address!r}: address must be a string like /endless/xfade")
    if not isinstance(args, list):
        args = [args]
    return Event(float(t), address, tuple(args), loc)


def load_script(path: Path, registry: Registry) -> list[Event]:
    """Read and validate a script; events come back sorted by time (stable for equal times)."""
    text = read_text(path, "script", ScriptError, ": check the path")
    events = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        ev = parse_line(line, str(path), i)
        try:
            registry.coerce(registry.resolve(ev.address), ev.args)
        except ParamError as e:
            raise ScriptError(f"{path}:{i}: {e}") from None
        events.append(ev)
    events.sort(key=lambda e: e.t)
    return events


def check_script(events: Sequence[Event], registry: Registry,
                 check_batch: Callable[[Sequence[tuple[Ref, Value]]], dict[int, str]]) -> None:
    """Raise ScriptError naming file:line for the first event (in time order) that the engine would
    refuse when applying the whole script: `check_batch` is `Engine.check_batch`."""
    changes = []
    for ev in events:
        ref = registry.resolve(ev.address)
        changes.append((ref, registry.coerce(ref, ev.args)))
    refused = check_batch(changes)
    if refused:
        i = min(refused)
        raise ScriptError(f"{events[i].where or events[i].address}: {refused[i]}")


def run_event(handle: Callable[[str, Sequence[object], int], object], ev: Event, frame: int = -1) -> None:
    """Apply one script event with `handle` (`Engine.handle`); an error is logged with file:line and
    the set goes on (the rest of the script still plays)."""
    try:
        handle(ev.address, ev.args, frame)
    except EndlessError as e:
        log.error("script %s: %s (event skipped; the set goes on)", ev.where or f"t={ev.t:g}", e)
