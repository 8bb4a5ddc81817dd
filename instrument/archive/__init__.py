"""The clip archive (issue 14): every generated clip kept on disk with its prompt's embedding.

Modules: `store` (the `Archive`: FLAC files plus a SQLite index, eviction, similarity search),
`files` (crash-safe FLAC writing, tags a lost index is rebuilt from), `index` (the SQLite file and
the open lock), `embed` (sentence-transformers offline, or the built-in hashing embedder) and
`writer` (the thread that embeds and writes, so no caller waits on a disk or a model).
"""

from __future__ import annotations

from instrument.archive.embed import (
           BUILTIN_ID,
           DEFAULT_MODEL,
           BuiltinEmbedder,
           Embedder,
           embed_prompt,
           load_embedder,
)
from instrument.archive.store import Archive, Entry
from instrument.archive.writer import ArchiveWriter

__all__ = ["BUILTIN_ID", "DEFAULT_MODEL", "Archive", "ArchiveWriter", "BuiltinEmbedder", "Embedder", "Entry",
           "embed_prompt", "load_embedder"]
