"""The archive's clip files: FLAC (24-bit) written crash-safely, carrying their own metadata in tags.

A clip is written to a temporary name in the clips folder, flushed to disk, renamed to its final name
and the folder flushed too, so a final name always holds a complete file. The file's TITLE tag holds
the prompt and its COMMENT tag a JSON record of everything the index holds about it that does not
change (prompt, blend, seed, steps, guidance, model, loudness, created time, embedding and its
embedder): a lost index can be rebuilt from the files alone.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from instrument.clips import Clip

__all__ = ["TEMP_PREFIX", "ClipMeta", "fsync_dir", "read_meta", "write_clip_file"]

TEMP_PREFIX = ".tmp-"  # files being written; any left at open are a crash's leftovers
SUFFIX = ".flac"
TAG_VERSION = 1

ClipMeta = dict[str, Any]  # the JSON record in the COMMENT tag (see the module's docstring)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders; the rename is still atomic
    finally:
        os.close(fd)


def _encode_vector(v: np.ndarray | None) -> str | None:
    return None if v is None else base64.b64encode(np.asarray(v, "<f4").tobytes()).decode("ascii")


def decode_vector(text: object) -> np.ndarray | None:
    """The float32 vector a tag holds (None for none or a damaged one)."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return np.frombuffer(raw, "<f4").copy() if raw and len(raw) % 4 == 0 else None


def write_clip_file(folder: Path, clip: Clip, meta: ClipMeta, embedding: np.ndarray | None) -> Path:
    """Write `clip` as a FLAC file in `folder`, complete and synced, under a new final name; returns it.

    Raises OSError or soundfile's errors (a full disk: the temporary file is removed first).
    """
    name = f"{int(meta['created'] * 1000):013d}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    tmp = folder / f"{TEMP_PREFIX}{name}"
    final = folder / name
    record = {**meta, "v": TAG_VERSION, "embedding": _encode_vector(embedding)}
    try:
        with sf.SoundFile(str(tmp), "w", clip.sample_rate, 2, subtype="PCM_24", format="FLAC") as f:
            f.title = str(meta.get("prompt", ""))[:1000]
            f.comment = json.dumps(record, separators=(",", ":"))
            try:
                f.write(clip.audio)
            except sf.LibsndfileError as e:
                raise OSError(_system_error(f) or str(e)) from None
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return final


def _system_error(f: sf.SoundFile) -> str:
    """libsndfile's own words for an open file's last error ("No space left on device"), which the
    exception soundfile raises leaves out ("System error."); "" where this soundfile hides them."""
    try:
        text = sf._ffi.string(sf._snd.sf_strerror(f._file)).decode("utf-8", "replace")
    except (AttributeError, TypeError):
        return ""
    return str(text).removeprefix("System error : ").strip().rstrip(".")


def read_meta(path: Path) -> tuple[ClipMeta, float]:
    """(the file's tag record, its length in seconds); ValueError naming the file when the file or its
    tags cannot be read (a rebuild skips such a file)."""
    try:
        with sf.SoundFile(str(path)) as f:
            comment, seconds = f.comment, f.frames / f.samplerate if f.samplerate > 0 else 0.0
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise ValueError(f"{path.name}: unreadable ({' '.join(str(e).split())})") from None
    try:
        record = json.loads(comment)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("created"), (int, float)):
        raise ValueError(f"{path.name}: no archive tags (not written by the archive, or damaged)")
    if not 0 < seconds < 24 * 3600:
        raise ValueError(f"{path.name}: bad length {seconds!r} s")
    return record, seconds
