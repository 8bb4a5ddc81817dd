"""The process's logging: to stderr, and with `endless play --log-file PATH` also to a rotating file,
both behind one rate limit, so no input can make the log grow without bound.

`RateLimit` is the process-wide safety net (the OSC server limits its own reports as well): it sits
on every handler `setup` installs, so it sees every record that reaches them, ours and libraries'
(python-osc logs one warning per argument it cannot parse, through the root logger). A message
template from one logger passes `per_key` times a `period`; the rest are counted, and once the
period is over one line says how many there were, with the last of them. A logger passes at most
`per_logger` lines a period whatever its templates (an f-string makes every line its own template).
The file rotates at `max_bytes` and keeps `backups` old files, so the disk it takes is bounded too.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from instrument.errors import ConfigError

__all__ = ["RateLimit", "setup"]

FILE_BYTES = 5 * 1024 * 1024  # --log-file rotates at this size...
FILE_BACKUPS = 3  # ...and keeps this many old files (PATH.1 .. PATH.3)
PER_KEY = 5  # lines of one template from one logger a period
PER_LOGGER = 50  # lines from one logger a period, whatever the template
PERIOD = 1.0  # seconds
MAX_KEYS = 4096  # templates remembered at once (a flood of distinct texts must not grow the filter)
_SUMMARY = "endless_rate_summary"  # set on the records the filter makes itself: they always pass

_K = TypeVar("_K", tuple[str, int, str], str)  # a window's key: (logger, level, template), or a logger


@dataclass
class _Window:
    start: float
    passed: int = 0
    held: int = 0  # records suppressed in this window
    last: logging.LogRecord | None = None  # the last one suppressed (the summary shows it)


class RateLimit(logging.Filter):
    """Rate-limits the records reaching one handler (see the module's docstring); thread-safe."""

    def __init__(self, handler: logging.Handler, per_key: int = PER_KEY, per_logger: int = PER_LOGGER,
                 period: float = PERIOD) -> None:
        super().__init__()
        self.handler = handler
        self.per_key, self.per_logger, self.period = per_key, per_logger, period
        self.suppressed = 0  # records held back in all (tests, diagnostics)
        self._keys: dict[tuple[str, int, str], _Window] = {}
        self._loggers: dict[str, _Window] = {}
        self._owing: set[tuple[str, int, str] | str] = set()  # windows with records held back
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        now = time.monotonic()
        with self._lock:
            due = self._due(now, flush=False)
            ok = self._admit(record, now)
        for r in due:
            self.handler.handle(r)
        return ok

    def flush(self) -> None:
        """Write the summary of every window still holding records back (at exit, and in tests)."""
        with self._lock:
            due = self._due(time.monotonic(), flush=True)
        for r in due:
            self.handler.handle(r)

    def _admit(self, record: logging.LogRecord, now: float) -> bool:
        lw = self._window(self._loggers, record.name, now)
        key = (record.name, record.levelno, str(record.msg))
        kw = self._window(self._keys, key, now)
        if kw.passed >= self.per_key or lw.passed >= self.per_logger:
            w, k = (kw, key) if kw.passed >= self.per_key else (lw, record.name)
            w.held += 1
            w.last = record
            self._owing.add(k)
            self.suppressed += 1
            return False
        kw.passed += 1
        lw.passed += 1
        return True

    def _window(self, table: dict[_K, _Window], key: _K, now: float) -> _Window:
        w = table.get(key)
        if w is None:
            if len(table) >= MAX_KEYS:
                self._forget(table, now)
            w = table[key] = _Window(now)
        elif now - w.start >= self.period and not w.held:
            w.start, w.passed = now, 0
        return w

    def _forget(self, table: dict[_K, _Window], now: float) -> None:
        """Drop the windows that are over and owe nothing (all of them that owe nothing, if none is over)."""
        idle = [k for k, w in table.items() if not w.held and now - w.start >= self.period]
        for k in idle or [k for k, w in table.items() if not w.held]:
            del table[k]

    def _due(self, now: float, flush: bool) -> list[logging.LogRecord]:
        """Summary records for the windows that are over (all of them with `flush`); those restart."""
        out: list[logging.LogRecord] = []
        for k in list(self._owing):
            w = self._loggers[k] if isinstance(k, str) else self._keys[k]
            if not flush and now - w.start < self.period:
                continue
            self._owing.discard(k)
            assert w.last is not None
            out.append(self._summary(k, w, now))
            w.start, w.passed, w.held, w.last = now, 0, 0, None
        return out

    def _summary(self, key: tuple[str, int, str] | str, w: _Window, now: float) -> logging.LogRecord:
        last = w.last
        assert last is not None
        secs = max(now - w.start, 0.0)
        if isinstance(key, str):
            text = (f"{w.held} more lines from {key} not shown (over {self.per_logger} in {self.period:g} s); "
                    f"the last: {_text(last)}")
        else:
            text = f"{_text(last)} (repeated {w.held} times in {secs:.1f} s)"
        rec = logging.LogRecord(last.name, last.levelno, last.pathname, last.lineno, text, None, None)
        setattr(rec, _SUMMARY, True)
        return rec


def _text(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a record whose arguments do not fit its template: show the template
        return str(record.msg)


_INSTALLED: list[tuple[logging.Handler, RateLimit]] = []  # what `setup` put on the root logger


@atexit.register
def _flush() -> None:
    """At exit (before logging's own shutdown, registered earlier): the counts still held back."""
    for _, limit in _INSTALLED:
        limit.flush()


def setup(verbose: bool = False, log_file: Path | None = None, stream: IO[str] | None = None,
          max_bytes: int = FILE_BYTES, backups: int = FILE_BACKUPS, per_key: int = PER_KEY,
          per_logger: int = PER_LOGGER, period: float = PERIOD) -> list[RateLimit]:
    """Log to `stream` (stderr) and, given `log_file`, to that file rotating at `max_bytes` with
    `backups` old files, each behind a `RateLimit`; returns the limits. Replaces what an earlier
    call installed and nothing else. ConfigError, naming the flag, for a file that cannot be written."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)
    out.setFormatter(logging.Formatter("endless: %(message)s"))
    handlers.append(out)
    if log_file is not None:
        try:
            f = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                     encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--log-file {log_file}: cannot write ({e.strerror}): give a file in a folder "
                              "that exists and is writable") from None
        f.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(f)
    for h, limit in _INSTALLED:
        limit.flush()
        root.removeHandler(h)
        h.close()
    _INSTALLED.clear()
    for h in handlers:
        limit = RateLimit(h, per_key, per_logger, period)
        h.addFilter(limit)
        root.addHandler(h)
        _INSTALLED.append((h, limit))
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return [limit for _, limit in _INSTALLED]
