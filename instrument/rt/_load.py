"""Loads the compiled core, or says in one line how to build it (there is no fallback)."""

from __future__ import annotations

CORE_VERSION = 3  # RT_VERSION in rt.h

try:
    from instrument.rt._core import ffi, lib  # type: ignore[import-not-found]  # noqa: F401  (re-exported)
except ImportError as e:  # pragma: no cover - a broken install
    raise ImportError(f"the audio core (instrument/rt/_core) is not built ({e}): run `make test` or "
                      "`.venv/bin/pip install -e .`, which compile it (a C compiler is needed: "
                      "scripts/system-deps.sh installs one)") from None

if lib.RT_VERSION != CORE_VERSION:  # pragma: no cover
    raise ImportError(f"the audio core is a stale build (version {lib.RT_VERSION}, this code needs "
                      f"{CORE_VERSION}): run `.venv/bin/pip install -e .` again")
