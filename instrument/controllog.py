"""`endless play --log-control FILE`: a live performance's control changes, written as a script.

The file is in the format `script.py` reads, so `endless render --script FILE` re-renders the
performance. Its own module, not script.py's: it watches the engine, which itself reads scripts.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from pathlib import Path
from typing import IO

from instrument.engine import Engine
from instrument.errors import ScriptError
from instrument.params import Param, Ref, Value
from instrument.script import Event

__all__ = ["ControlLog"]

log = logging.getLogger(__name__)


class ControlLog:
    """`endless play --log-control FILE`: every accepted control change, with the output time it
    took effect, in the script format; `endless render --script FILE` re-renders the performance.
    Changes are noted by whoever holds engine.lock (the control loop, or an input thread such as
    rtmidi's applying a CC at once) and written by the log's own thread, one flushed line each."""

    def __init__(self, path: Path, engine: Engine) -> None:
        try:
            self._f: IO[str] = path.open("w", buffering=1)
        except OSError as e:
            raise ScriptError(f"--log-control {path}: cannot write ({e.strerror}): check the folder") from None
        self.path = path
        self.failed = False  # a write was refused: nothing more is written
        self.engine = engine
        self._q: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        for (key, slot), value in sorted(engine.values.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            p = engine.registry[key]
            if p.target == "generator" and engine.generator is None:
                continue
            args = _args(p, value)
            if args is not None:
                self._q.put(Event(0.0, p.address(engine.registry.prefix, slot), args))  # the starting state
        self._thread = threading.Thread(target=self._write, name="endless-control-log", daemon=True)
        self._thread.start()
        engine.listeners.append(self._changed)

    def _changed(self, ref: Ref, value: Value) -> None:
        args = _args(ref.param, value)
        if args is None:
            return
        t = self.engine.last_change_frame / self.engine.cfg.sample_rate
        self._q.put(Event(t, ref.param.address(self.engine.registry.prefix, ref.slot), args))

    def _write(self) -> None:
        """Write each change as it comes; a write the disk refuses ends the log (said once), never
        the set: the changes after it are taken and dropped."""
        while (ev := self._q.get()) is not None:
            if not self.failed:
                try:
                    self._f.write(ev.to_json() + "\n")
                except OSError as e:
                    self._failed(e)

    def _failed(self, e: OSError) -> None:
        if self.failed:
            return
        self.failed = True
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        log.error("--log-control %s: stopped writing (%s): the changes before it are there; the set goes on",
                  self.path, why)

    def close(self) -> None:
        if self._changed in self.engine.listeners:
            self.engine.listeners.remove(self._changed)
        self._q.put(None)
        self._thread.join(timeout=10)
        try:
            self._f.close()
        except OSError as e:  # the last lines refused (the writer saw no error yet)
            self._failed(e)


def _args(p: Param, value: Value) -> tuple[object, ...] | None:
    """A value as the script line's arguments, as the address takes them back (weights one number
    each); None for no weights, which is what a prompt change leaves (its own line says so)."""
    if p.kind == "trigger":
        return ()
    if p.kind == "weights":
        return tuple(value) if isinstance(value, tuple) and value else None
    return (value,)
