"""The clip archive: FLAC files in `root/clips/` and a SQLite index `root/index.sqlite` (WAL).

A clip becomes visible (a row) only after its file is complete, synced and renamed (files.py), and a
row is deleted before its file, so a crash at any moment leaves at worst a file without a row. At
open the archive reconciles (when no other process has it open): temporary and row-less files are
removed, rows whose file is gone are dropped, one log line says what was done. An index SQLite cannot
read is moved aside and rebuilt from the files' tags (play counts start again), also in one line.
A clip file found damaged on `load` is reported once, marked bad (never offered by `similar` again)
and evicted first. Eviction to the limits removes the least recently played clip first; a clip never
played counts as played when it was made. All methods are thread-safe (one lock around the index;
encoding a file happens outside it).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from instrument.archive.files import TEMP_PREFIX, decode_vector, read_meta, write_clip_file
from instrument.archive.index import SCHEMA, lock_exclusive, open_index, quarantine
from instrument.blend import parse_blend
from instrument.clips import Clip, ClipInfo, load_clip
from instrument.errors import ClipError, ConfigError

__all__ = ["Archive", "Entry"]

log = logging.getLogger(__name__)

_COLS = ("id, file, prompt, blend, seed, steps, guidance, model, seconds, loudness, created, plays, "
         "last_played, embedder, bytes, bad")
_EVICT_ORDER = "bad DESC, COALESCE(last_played, created), id"


@dataclass(frozen=True)
class Entry:
    """One archived clip: its file and how it was made (prompt is the blend's prompts without weights;
    blend the text as the slot had it), its loudness in LUFS, and how often and when it was played."""

    id: int
    path: Path
    prompt: str
    blend: str
    seed: int | None
    steps: int | None
    guidance: float | None
    model: str
    seconds: float
    loudness: float | None
    created: float
    plays: int
    last_played: float | None
    embedder: str | None
    bytes: int
    bad: bool = False  # its file was found damaged or missing on load


def _prompts(text: str) -> str:
    try:
        return " | ".join(p for p, _ in parse_blend(text))
    except ValueError:
        return text.strip()


def _loudness(clip: Clip) -> float | None:
    """Integrated loudness (ITU-R BS.1770, pyloudnorm) in LUFS; None for silence or a clip too short."""
    import pyloudnorm

    if clip.frames <= int(0.4 * clip.sample_rate):
        return None
    value = float(pyloudnorm.Meter(clip.sample_rate).integrated_loudness(clip.audio.astype(np.float64)))
    return value if np.isfinite(value) else None


class Archive:
    """Every clip kept, with a similarity search over prompt embeddings (see the module's docstring)."""

    def __init__(self, root: Path, *, max_clips: int | None = None, max_bytes: int | None = None) -> None:
        for flag, value in (("max_clips", max_clips), ("max_bytes", max_bytes)):
            if value is not None and value < 1:
                raise ConfigError(f"archive {flag} {value}: must be at least 1 (or None for no limit)")
        self.root = Path(root).expanduser()
        self.clips_dir = self.root / "clips"
        self.max_clips, self.max_bytes = max_clips, max_bytes
        try:
            self.clips_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--archive {self.root}: cannot create the folder ({e.strerror}): give a "
                              "writable folder, or --no-archive") from None
        self._lock = threading.RLock()
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # embedder -> (ids, unit rows)
        try:
            self._lockfile = lock_exclusive(self.root)
        except OSError as e:
            raise ConfigError(f"--archive {self.root}: cannot open its lock file ({e.strerror}): give a "
                              "writable folder, or --no-archive") from None
        try:
            self._open(self.root / "index.sqlite")
        except BaseException:
            self._lockfile.release()
            raise

    def _open(self, path: Path) -> None:
        try:
            self._db = open_index(path)
            rebuilt = None
        except sqlite3.DatabaseError as e:
            if not self._lockfile.exclusive:
                raise ConfigError(f"archive index {path} is unreadable ({e}) and another process has the "
                                  "archive open: quit it, then start again to rebuild the index") from None
            rebuilt = (e, quarantine(path))
            self._db = open_index(path)
        self._db.executescript(SCHEMA)
        if rebuilt is not None:
            self._rebuild(*rebuilt)
        if self._lockfile.exclusive:
            self._reconcile()
            self._lockfile.shared()
        self.prune()

    @staticmethod
    def default_dir() -> Path:
        """The platform's user data folder for the instrument's archive (~/.local/share/endless/archive)."""
        return platformdirs.user_data_path("endless", appauthor=False) / "archive"

    # -- writing ---------------------------------------------------------------------------------
    def add(self, clip: Clip, *, embedding: np.ndarray | None = None, embedder: str | None = None,
            loudness: float | None = None) -> Entry:
        """Keep `clip` (its file complete and synced before its row exists), then evict to the limits.
        `loudness` (LUFS) is measured when not given. Raises OSError or soundfile's error on a full or
        unwritable disk (nothing is left behind then)."""
        info = clip.info
        vec = None if embedding is None else np.asarray(embedding, np.float32).ravel()
        if vec is not None and (embedder is None or not np.isfinite(vec).all() or not vec.any()):
            vec = None  # a vector without its embedder's id, or a useless one, is never stored
        meta: dict[str, Any] = {
            "prompt": _prompts(info.prompt), "blend": info.prompt, "seed": info.seed, "steps": info.steps,
            "guidance": info.guidance, "model": info.model, "created": time.time(),
            "loudness": _loudness(clip) if loudness is None else float(loudness),
            "embedder": embedder if vec is not None else None,
        }
        path = write_clip_file(self.clips_dir, clip, meta, vec)
        size = path.stat().st_size
        with self._lock:
            new_id = self._insert(path.name, meta, clip.seconds, size, vec)
            self._db.commit()
            self._cache_vector(new_id, meta["embedder"], vec)
            self.prune()
            entry = self.get(new_id)
        if entry is None:  # evicted at once: a limit smaller than this one clip
            raise ConfigError(f"archive limit max_bytes={self.max_bytes}: smaller than one clip ({size} "
                              "bytes): raise it")
        return entry

    def _insert(self, name: str, meta: dict[str, Any], seconds: float, size: int, vec: np.ndarray | None) -> int:
        blob = None if vec is None else np.asarray(vec, "<f4").tobytes()
        cur = self._db.execute(
            "INSERT INTO clips (file, prompt, blend, seed, steps, guidance, model, seconds, loudness, created,"
            " embedding, embedder, bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (name, meta.get("prompt", ""), meta.get("blend", ""), meta.get("seed"), meta.get("steps"),
             meta.get("guidance"), str(meta.get("model", "")), float(seconds), meta.get("loudness"),
             float(meta["created"]), blob, meta.get("embedder") if blob else None, int(size)))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def played(self, id: int) -> None:
        """Count a play (the eviction order follows the last one)."""
        with self._lock:
            self._db.execute("UPDATE clips SET plays = plays + 1, last_played = ? WHERE id = ?",
                             (time.time(), id))
            self._db.commit()

    def remove(self, id: int) -> None:
        """Forget a clip: its row first, then its file (a crash between leaves an orphan, removed at open)."""
        with self._lock:
            row = self._db.execute("SELECT file, embedder FROM clips WHERE id = ?", (id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM clips WHERE id = ?", (id,))
            self._db.commit()
            self._uncache_vector(id, row[1])
        (self.clips_dir / row[0]).unlink(missing_ok=True)

    def prune(self) -> int:
        """Evict to the limits (damaged clips first, then the least recently played); returns how many."""
        removed = 0
        with self._lock:
            while True:
                n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM clips").fetchone()
                over = (self.max_clips is not None and n > self.max_clips) or (
                    self.max_bytes is not None and size > self.max_bytes)
                if not over or n == 0:
                    return removed
                (victim,) = self._db.execute(f"SELECT id FROM clips ORDER BY {_EVICT_ORDER} LIMIT 1").fetchone()
                self.remove(int(victim))
                removed += 1

    # -- reading ---------------------------------------------------------------------------------
    def _entry(self, row: tuple[Any, ...]) -> Entry:
        (id_, file, prompt, blend, seed, steps, guidance, model, seconds, loudness, created, plays,
         last_played, embedder, size, bad) = row
        return Entry(int(id_), self.clips_dir / file, prompt or "", blend or "", seed, steps, guidance,
                     model or "", float(seconds), loudness, float(created), int(plays), last_played,
                     embedder, int(size), bool(bad))

    def get(self, id: int) -> Entry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM clips WHERE id = ?", (id,)).fetchone()
        return None if row is None else self._entry(row)

    def entries(self, limit: int = 100, offset: int = 0) -> list[Entry]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM clips ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
                                    (limit, offset)).fetchall()
        return [self._entry(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM clips").fetchone()[0])

    def load(self, entry: Entry, sample_rate: int) -> Clip | None:
        """The clip at `sample_rate`, read-only, its info saying how it was made; None for a damaged or
        missing file (one log line; the entry is marked bad and evicted first). Never raises for that."""
        try:
            clip = load_clip(entry.path, sample_rate)
        except ClipError as e:
            with self._lock:
                self._db.execute("UPDATE clips SET bad = 1 WHERE id = ?", (entry.id,))
                self._db.commit()
                self._uncache_vector(entry.id, entry.embedder)
            log.warning("archive: clip %d skipped: %s", entry.id, e)
            return None
        info = ClipInfo(str(entry.path), entry.blend, entry.seed, entry.model, 0.0, entry.steps, entry.guidance)
        return replace(clip, info=info)

    def _cache_vector(self, id: int, embedder: str | None, vec: np.ndarray | None) -> None:
        """Append a new clip's vector to its embedder's search matrix, if that is built (no re-read)."""
        cached = self._vectors.get(str(embedder))
        if cached is None or vec is None:
            return
        ids, m = cached
        if m.shape[1] != len(vec):  # an empty matrix, or another dim: read again when asked
            del self._vectors[str(embedder)]
            return
        unit = (vec / np.linalg.norm(vec)).astype(np.float32)[None, :]
        self._vectors[str(embedder)] = (np.append(ids, np.int64(id)), np.concatenate([m, unit]))

    def _uncache_vector(self, id: int, embedder: str | None) -> None:
        cached = self._vectors.get(str(embedder))
        if cached is not None:
            keep = cached[0] != id
            self._vectors[str(embedder)] = (cached[0][keep], cached[1][keep])

    def _matrix(self, embedder: str) -> tuple[np.ndarray, np.ndarray]:
        cached = self._vectors.get(embedder)
        if cached is None:
            rows = self._db.execute("SELECT id, embedding FROM clips WHERE embedder = ? AND bad = 0 "
                                    "AND embedding IS NOT NULL", (embedder,)).fetchall()
            vecs = [np.frombuffer(b, "<f4") for _, b in rows]
            dim = max((len(v) for v in vecs), default=0)
            keep = [(i, v) for (i, _), v in zip(rows, vecs, strict=True) if len(v) == dim]
            ids = np.array([i for i, _ in keep], np.int64)
            m = np.array([v for _, v in keep], np.float32).reshape(len(keep), dim)
            norms = np.linalg.norm(m, axis=1, keepdims=True)
            cached = self._vectors[embedder] = (ids, m / np.where(norms > 0, norms, 1.0))
        return cached

    def similar(self, vector: np.ndarray, embedder: str, k: int = 8,
                exclude: Collection[int] = ()) -> list[tuple[Entry, float]]:
        """The `k` clips whose prompt vectors (from `embedder` only) are most like `vector` by cosine,
        best first, leaving out damaged clips and the ids in `exclude`."""
        v = np.asarray(vector, np.float32).ravel()
        with self._lock:
            ids, m = self._matrix(embedder)
            if k < 1 or len(ids) == 0 or m.shape[1] != len(v) or not np.linalg.norm(v):
                return []
            scores = m @ (v / np.linalg.norm(v))
            if exclude:
                scores = np.where(np.isin(ids, np.fromiter(exclude, np.int64)), -np.inf, scores)
            top = np.argsort(-scores, kind="stable")[:k]
            out = []
            for i in top:
                entry = self.get(int(ids[i])) if np.isfinite(scores[i]) else None
                if entry is not None:
                    out.append((entry, float(scores[i])))
        return out

    def vector(self, id: int) -> tuple[np.ndarray, str] | None:
        """A clip's stored prompt vector and its embedder's id, if it has one."""
        with self._lock:
            row = self._db.execute("SELECT embedding, embedder FROM clips WHERE id = ?", (id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return np.frombuffer(row[0], "<f4").copy(), str(row[1])

    # -- open, repair, close -----------------------------------------------------------------------
    def _reconcile(self) -> None:
        """Remove temporary and row-less files, drop rows whose file is missing; one line if any."""
        with self._lock:
            known = {f: i for i, f in self._db.execute("SELECT id, file FROM clips")}
            on_disk = {p.name for p in self.clips_dir.iterdir() if p.is_file()}
            temps = [n for n in on_disk if n.startswith(TEMP_PREFIX)]
            orphans = [n for n in on_disk if n not in known and not n.startswith(TEMP_PREFIX)]
            missing = [i for f, i in known.items() if f not in on_disk]
            self._db.executemany("DELETE FROM clips WHERE id = ?", [(i,) for i in missing])
            self._db.commit()
        for n in temps + orphans:
            (self.clips_dir / n).unlink(missing_ok=True)
        if temps or orphans or missing:
            log.warning("archive %s: removed %d unfinished and %d unindexed files, dropped %d entries whose "
                        "file was missing (a crash or a hand edit); %d clips kept", self.root, len(temps),
                        len(orphans), len(missing), self.count())

    def _rebuild(self, error: sqlite3.DatabaseError, moved: Path | None) -> None:
        """Index every clip file whose tags can be read (the index was unreadable and moved aside)."""
        added, skipped = 0, []
        for path in sorted(self.clips_dir.glob("*.flac")):
            if path.name.startswith(TEMP_PREFIX):
                continue
            try:
                meta, seconds = read_meta(path)
            except ValueError as e:
                skipped.append(str(e))
                continue
            vec = decode_vector(meta.get("embedding"))
            with self._lock:
                self._insert(path.name, meta, seconds, path.stat().st_size, vec)
            added += 1
        with self._lock:
            self._db.commit()
        where = f"moved aside to {moved.name}" if moved else "removed"
        log.warning("archive index %s was unreadable (%s): %s and rebuilt from the clip files' tags: %d clips "
                    "(play counts start again)%s", self.root / "index.sqlite", " ".join(str(error).split()),
                    where, added, f"; {len(skipped)} files skipped, e.g. {skipped[0]}" if skipped else "")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lockfile.release()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
