"""MIDI ports through mido: choosing them by pattern, opening them, and watching them come and go.

Ports are chosen by pattern: a case-insensitive part of the name, or a regular expression
(`--midi-in nano --midi-in "^seq:"`); each pattern may open several ports. Our own ports are never
opened as inputs (no feedback loops). A watcher thread lists the ports every `poll_seconds`: a port
that vanished is reported and closed, one that (re)appears is opened. What arrives on an input and
what to do when an output opens are the caller's (`MidiControl`): this module knows nothing of
the engine or the bus.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instrument.errors import ConfigError

log = logging.getLogger(__name__)

Receiver = Callable[[Any], None]  # called with each mido message, on rtmidi's thread


@dataclass(frozen=True)
class MidiConfig:
    inputs: tuple[str, ...] = ()  # port patterns (part of the name, or a regex); each may match several
    outputs: tuple[str, ...] = ()  # feedback port patterns
    virtual: bool = False  # also open virtual ports `<client>:in` and `<client>-feedback:out` (sequencers, DAWs)
    client_name: str = "endless"
    backend: str | None = None  # mido backend, e.g. "mido.backends.rtmidi/UNIX_JACK" (None: $MIDO_BACKEND)
    poll_seconds: float = 1.0  # how often the watcher looks for ports that vanished or came back
    learn_path: Path | None = None  # where learned controls go when the mapping has no file


@dataclass
class MidiStats:
    received: int = 0
    dropped: int = 0  # the control bus was full
    applied: int = 0  # parameter changes and actions made
    errors: int = 0  # refused by the engine (reported)
    opened: int = 0
    vanished: int = 0


def port_matches(pattern: str, name: str) -> bool:
    """A pattern matches a part of the name (any case), or as a regular expression.

    >>> port_matches("nano", "nanoKONTROL2 SLIDER/KNOB"), port_matches("^seq:", "seq:out")
    (True, True)
    >>> port_matches("(1)", "Launch Control (1)"), port_matches("^out", "seq:out")
    (True, False)
    """
    if pattern.lower() in name.lower():
        return True
    try:
        return re.search(pattern, name, re.IGNORECASE) is not None
    except re.error:
        return False


def open_backend(name: str | None = None) -> Any:
    """The mido backend (`MIDO_BACKEND` by default), loaded now so a missing library fails here."""
    try:
        import mido
    except ImportError:
        raise ConfigError("MIDI needs mido and python-rtmidi: pip install mido python-rtmidi") from None
    spec = name or os.environ.get("MIDO_BACKEND") or "mido.backends.rtmidi"
    try:
        return mido.Backend(spec, load=True)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"MIDI backend {spec!r} cannot be loaded ({e}): pip install python-rtmidi, or set "
                          "MIDO_BACKEND (e.g. mido.backends.rtmidi/UNIX_JACK with JACK running)") from None


@dataclass
class _Port:
    name: str
    port: Any  # a mido port
    virtual: bool = False


class Ports:
    """The MIDI inputs and feedback outputs matching `cfg`, kept open while they exist.

    `receiver(name)` gives the callback for input `name` (rtmidi calls it on its own thread);
    `on_output()` is called whenever an output opens (to show it the current state); `backend` is a
    mido backend object (None: `cfg.backend` loaded at `start`), given by tests to fake ports.
    """

    def __init__(self, cfg: MidiConfig, receiver: Callable[[str], Receiver], on_output: Callable[[], None],
                 on_event: Callable[[str], None], stats: MidiStats, backend: Any = None) -> None:
        self.cfg = cfg
        self.receiver = receiver
        self.on_output = on_output
        self.on_event = on_event
        self.stats = stats
        self._backend = backend
        self._lock = threading.Lock()  # the two tables (the watcher, the sender and callers read them)
        self._inputs: dict[str, _Port] = {}
        self._outputs: dict[str, _Port] = {}
        self._missing: set[str] = set()  # ports we had that vanished: reported once, re-opened on return
        self._unopenable: set[str] = set()
        self._waiting: set[tuple[str, str]] = set()  # (kind, pattern)s that matched nothing yet (reported once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the virtual ports and every matching port now, then watch for changes."""
        if self._backend is None:
            self._backend = open_backend(self.cfg.backend)
        if self.cfg.virtual:
            name = self.cfg.client_name
            try:
                self._add(self._inputs, self.virtual_in, self._backend.open_input(
                    "in", client_name=name, callback=self.receiver(self.virtual_in)), virtual=True)
                self._add(self._outputs, self.virtual_out,
                          self._backend.open_output("out", client_name=f"{name}-feedback"), virtual=True)
            except Exception as e:
                raise ConfigError(f"cannot open virtual MIDI ports {self.virtual_in} and {self.virtual_out} ({e}); "
                                  "is a MIDI system running (JACK: set MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK)?"
                                  ) from None
            log.info("MIDI: virtual ports %s and %s", self.virtual_in, self.virtual_out)
            self.on_output()
        try:
            self.scan()
        except Exception as e:  # rtmidi raises SystemError when there is no MIDI system at all
            self.close()
            raise ConfigError(f"no MIDI system ({e}): on Linux without ALSA MIDI, start JACK and set "
                              "MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK") from None
        self._thread = threading.Thread(target=self._watch, name="endless-midi-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching and close every port (inputs first: nothing arrives after this)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            ports = list(self._inputs.values()) + list(self._outputs.values())
            self._inputs.clear()
            self._outputs.clear()
        for p in ports:
            self._close(p)

    @property
    def virtual_in(self) -> str:
        """The virtual input's name as JACK lists it (ALSA lists `endless:in 128:0`)."""
        return f"{self.cfg.client_name}:in"

    @property
    def virtual_out(self) -> str:
        return f"{self.cfg.client_name}-feedback:out"

    @property
    def inputs(self) -> list[str]:
        with self._lock:
            return sorted(self._inputs)

    @property
    def outputs(self) -> list[str]:
        with self._lock:
            return sorted(self._outputs)

    def send(self, msgs: Sequence[Sequence[int]]) -> None:
        """Send raw messages on every output (the feedback sender's thread). A port that fails is
        skipped: the watcher reports it when it has vanished."""
        with self._lock:
            outs = list(self._outputs.values())
        if not outs or not msgs:
            return
        import mido

        parsed = [mido.Message.from_bytes(list(m)) for m in msgs]
        for p in outs:
            try:
                for msg in parsed:
                    p.port.send(msg)
            except Exception as e:
                log.debug("MIDI feedback to %r failed: %r", p.name, e)

    def _watch(self) -> None:
        failing = False
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.scan()
                failing = False
            except Exception as e:  # the MIDI system went away: say so once, keep watching
                if not failing:
                    self.on_event(f"MIDI: listing ports failed ({e!r}); still trying")
                failing = True

    def _ours(self, name: str) -> bool:
        """Our virtual ports, and (JACK) the source port rtmidi makes for an output we opened: never
        inputs, or feedback would come straight back in."""
        if name.startswith(self.cfg.client_name):
            return True
        with self._lock:
            opened_out = any(not p.virtual for p in self._outputs.values())
        return opened_out and re.match(r"RtMidiOut Client(-\d+)?:RtMidi output", name) is not None

    def scan(self) -> None:
        """Close ports that vanished, open ports that match and are new or back."""
        for kind, patterns, table in (("input", self.cfg.inputs, self._inputs),
                                      ("output", self.cfg.outputs, self._outputs)):
            if not patterns:
                continue
            names = self._backend.get_input_names() if kind == "input" else self._backend.get_output_names()
            with self._lock:
                gone = [p for n, p in table.items() if not p.virtual and n not in names]
                for p in gone:
                    del table[p.name]
            for p in gone:
                self._close(p)
                self._missing.add(f"{kind}:{p.name}")
                self.stats.vanished += 1
                self.on_event(f"MIDI {kind} {p.name!r} disappeared: it is opened again when it returns")
            for pat in patterns:
                hits = [n for n in names if port_matches(pat, n) and not self._ours(n)]
                if not hits and (kind, pat) not in self._waiting:
                    self._waiting.add((kind, pat))
                    self.on_event(f"no MIDI {kind} matches {pat!r} (now: {', '.join(names) or 'none'}); "
                                  "it is opened when it appears")
                for n in hits:
                    if n not in table:
                        self._open(kind, n, table, back=f"{kind}:{n}" in self._missing)

    def _open(self, kind: str, name: str, table: dict[str, _Port], back: bool) -> None:
        try:
            port = (self._backend.open_input(name, callback=self.receiver(name)) if kind == "input"
                    else self._backend.open_output(name))
        except Exception as e:
            if f"{kind}:{name}" not in self._unopenable:  # said once; tried again every scan
                self._unopenable.add(f"{kind}:{name}")
                self.on_event(f"MIDI {kind} {name!r} cannot be opened: {e}")
            return
        self._unopenable.discard(f"{kind}:{name}")
        self._add(table, name, port)
        self._missing.discard(f"{kind}:{name}")
        self.stats.opened += 1
        if kind == "output":
            self.on_output()  # show the current state on the controller
        if back:
            self.on_event(f"MIDI {kind} {name!r} is back")
        else:
            log.info("MIDI %s %r opened", kind, name)

    def _add(self, table: dict[str, _Port], name: str, port: Any, virtual: bool = False) -> None:
        with self._lock:
            table[name] = _Port(name, port, virtual)

    def _close(self, p: _Port) -> None:
        try:
            p.port.close()
        except Exception as e:
            log.debug("closing MIDI port %r: %r", p.name, e)
