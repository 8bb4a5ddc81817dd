"""The archive's SQLite index file and the lock that says whether another process has the archive open.

WAL with synchronous=NORMAL: a killed process loses no committed row; a power cut may lose the last
rows, never the index's consistency (their files then have no row and are removed at the next open).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; every open reconciles
    fcntl = None  # type: ignore[assignment]

__all__ = ["SCHEMA", "LockFile", "lock_exclusive", "open_index", "quarantine"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL UNIQUE,       -- name in clips/
    prompt TEXT NOT NULL DEFAULT '', -- the blend's prompts without weights
    blend TEXT NOT NULL DEFAULT '',  -- the prompt text as the slot had it
    seed INTEGER, steps INTEGER, guidance REAL,
    model TEXT NOT NULL DEFAULT '',
    seconds REAL NOT NULL,
    loudness REAL,                   -- LUFS
    created REAL NOT NULL,           -- unix time
    plays INTEGER NOT NULL DEFAULT 0,
    last_played REAL,
    embedding BLOB,                  -- float32 little-endian
    embedder TEXT,                   -- the id of the embedder that made `embedding`
    bytes INTEGER NOT NULL,
    bad INTEGER NOT NULL DEFAULT 0   -- its file was found damaged
);
CREATE INDEX IF NOT EXISTS clips_embedder ON clips (embedder);
"""


def open_index(path: Path) -> sqlite3.Connection:
    """Open (or create) the index in WAL mode; sqlite3.DatabaseError when the file is not a usable
    SQLite database (checked here, not at the first query)."""
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=10.0, isolation_level="DEFERRED")
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL").fetchone()
        db.execute("PRAGMA synchronous = NORMAL")
        ok = db.execute("PRAGMA quick_check").fetchone()
        if ok is None or ok[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {ok[0] if ok else 'no answer'}")
        cols = {r[1] for r in db.execute("PRAGMA table_info(clips)")}
        if cols and not {"id", "file", "created", "bytes", "bad"} <= cols:
            raise sqlite3.DatabaseError(f"a table 'clips' of another shape ({', '.join(sorted(cols))})")
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def quarantine(path: Path) -> Path | None:
    """Move an unreadable index (and its -wal and -shm files) aside; returns its new name, or None when
    there was nothing to move."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = None
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            dst = path.with_name(f"{path.name}.unreadable-{stamp}{suffix}")
            os.replace(src, dst)
            moved = moved or dst
    return moved


class LockFile:
    """An advisory lock on `root/.lock`: held shared by every open archive, exclusive while reconciling."""

    def __init__(self, fd: int, exclusive: bool) -> None:
        self.fd = fd
        self.exclusive = exclusive  # False: another process had the archive open (no repair here)

    def shared(self) -> None:
        if fcntl is not None and self.exclusive:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        self.exclusive = False

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


def lock_exclusive(root: Path) -> LockFile:
    """The archive's lock: exclusive (this process may repair the archive) when no other process has
    the archive open, else shared (`exclusive` False: that process is left alone, no repair here)."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return LockFile(fd, True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return LockFile(fd, False)
    return LockFile(fd, True)
