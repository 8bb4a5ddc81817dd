"""What the OSC server is told (`OscConfig`) and what it counts (`OscStats`), and its rate-limited log."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from instrument.errors import ConfigError

log = logging.getLogger("instrument.control.osc")


@dataclass(frozen=True)
class OscConfig:
    host: str = "127.0.0.1"  # --listen: the address to listen on (0.0.0.0: every interface, for a LAN)
    port: int = 9000  # --osc-port (UDP); 0 picks a free port
    tcp_port: int | None = None  # --osc-tcp-port: also OSC 1.1 over TCP, SLIP-framed (TouchOSC's TCP mode)
    allow: tuple[str, ...] = ()  # --allow: client addresses or networks; empty: anyone; loopback always
    status_hz: float = 30.0  # status and meters to subscribers at most this often (<= 30)
    max_subscribers: int = 32
    max_connections: int = 16  # TCP clients at once (when full, one idle 10 s makes room)
    tcp_idle: float = 300.0  # s: a TCP connection that sends nothing this long is closed
    subscribe_ttl: float = 60.0  # s: a UDP subscription ends unless renewed (/subscribe again) within this

    def check(self) -> None:
        """ConfigError, naming the flag, for a value the server cannot run with."""
        if not 0 < self.status_hz <= 30:
            raise ConfigError(f"OSC status rate {self.status_hz:g} Hz: allowed above 0 up to 30 Hz")
        for what, v in (("TCP idle timeout", self.tcp_idle), ("subscription lifetime", self.subscribe_ttl)):
            if not 0 < v < math.inf:
                raise ConfigError(f"OSC {what} {v:g} s: allowed above 0 (a number of seconds)")
        for flag, port in (("--osc-port", self.port), ("--osc-tcp-port", self.tcp_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{flag} {port}: allowed 0..65535 (0: any free port)")


@dataclass
class OscStats:
    packets: int = 0  # datagrams and SLIP frames from allowed peers
    messages: int = 0
    applied: int = 0  # changes the engine accepted
    errors: int = 0  # /error replies (refused messages)
    malformed: int = 0  # packets that did not parse
    handler_exceptions: int = 0  # bugs caught while handling a message (logged; the server goes on)
    refused_peers: int = 0  # packets and connections from addresses not allowed
    bus_full: int = 0  # packets the control bus had no room for
    immediate: int = 0  # packets applied on the thread that received them (the engine was free)
    releases_ignored: int = 0  # buttons' releases (0 or false)
    sent: int = 0
    send_errors: int = 0
    replies_dropped: int = 0  # replies and errors dropped because the sender was this far behind


class RateLog:
    """Logs at most one line a second, counting the rest: a flood of bad messages must not flood
    the log (or the CPU the audio shares)."""

    def __init__(self) -> None:
        self._at = 0.0
        self._skipped = 0

    def __call__(self, text: str, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._at < 1.0:
            self._skipped += 1
            return
        more = f" (and {self._skipped} more since the last report)" if self._skipped else ""
        self._at, self._skipped = now, 0
        if exc is not None:
            log.error("%s%s", text, more, exc_info=exc)
        else:
            log.warning("%s%s", text, more)


class LibraryLogLimit(logging.Filter):
    """On the root logger, where python-osc logs (module-level `logging.warning`, one line per
    argument it cannot parse: 60,000 for one datagram): its lines at most one a second, the next
    one saying how many were left out. Every other line passes."""

    def __init__(self) -> None:
        super().__init__()
        self._at = -math.inf
        self._skipped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if "pythonosc" not in record.pathname:
            return True
        with self._lock:
            now = time.monotonic()
            if now - self._at < 1.0:
                self._skipped += 1
                return False
            if self._skipped:
                record.msg = f"{record.getMessage()} (and {self._skipped} more from python-osc since the last)"
                record.args = None
            self._at, self._skipped = now, 0
        return True


LIBRARY_LOG_LIMIT = LibraryLogLimit()


def limit_library_logs() -> None:
    """Install `LIBRARY_LOG_LIMIT` on the root logger (once; idempotent)."""
    root = logging.getLogger()
    if LIBRARY_LOG_LIMIT not in root.filters:
        root.addFilter(LIBRARY_LOG_LIMIT)
