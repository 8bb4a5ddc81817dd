"""The TOML files the instrument reads and writes (controller mappings, presets): one strict reader
(valid TOML, known keys only, the format's version) and one writer (values as TOML, whole-file
atomic writes), so both formats fail and save the same way."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from instrument.errors import EndlessError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_text(path: Path, what: str, error: type[EndlessError], fix: str = "") -> str:
    """A file's text, read as UTF-8; `error` naming the file (and `what` it is) if it cannot be read
    or is not UTF-8 text. `fix` follows the reason for an unreadable file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror}){fix}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8") from None


def read_versioned(text: str, where: str, keys: Iterable[str], version: int, error: type[EndlessError],
                   see: str = "", fix: str = "") -> dict[str, Any]:
    """The top-level table of `text`; raises `error` naming `where` for invalid TOML, an unknown key
    (`see` is appended) or another version than `version` (`fix` is appended)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{where}: not valid TOML: {e}") from None
    check_keys(doc, keys, where, error, see)
    if doc.get("version") != version:
        raise error(f"{where}: version = {doc.get('version')!r}: this instrument reads version = {version}{fix}")
    return doc


def check_keys(t: dict[str, Any], keys: Iterable[str], where: str, error: type[EndlessError], see: str = "") -> None:
    allowed = list(keys)
    for k in t:
        if k not in allowed:
            raise error(f"{where}: unknown key {k!r}: allowed {', '.join(allowed)}{see}")


def toml_value(v: object) -> str:
    """A value as TOML (the subset mappings and presets use).

    >>> toml_value({36: "dawn", 38: 2}), toml_value([1.5, True])
    ('{ 36 = "dawn", 38 = 2 }', '[1.5, true]')
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} has no TOML form here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes are all valid in TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"{v!r} has no TOML form here")


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) and k.isascii() else toml_value(k)


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
