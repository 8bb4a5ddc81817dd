"""Prompt embeddings: sentence-transformers when its model is on disk, else a built-in hashing embedder.

`load_embedder()` never touches the network: it loads all-MiniLM-L6-v2 (or the model named) from a
directory or from the local Hugging Face cache. When that model is not there it returns the built-in
embedder (hashed word unigrams and character trigrams, deterministic, no dependencies) and logs one
line saying so. Each embedder has an `id` stored with every vector it made, so vectors from
different embedders are never compared. Loading sentence-transformers imports torch (seconds): call
`load_embedder` off the audio and control paths.

>>> e = BuiltinEmbedder()
>>> v = embed_prompt(e, "rain:0.7 | thunder:0.3")
>>> v.shape, round(float(v @ v), 6)
((512,), 1.0)
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from instrument.blend import parse_blend
from instrument.errors import one_line

__all__ = ["BUILTIN_ID", "DEFAULT_MODEL", "BuiltinEmbedder", "Embedder", "STEmbedder", "embed_prompt",
           "load_embedder"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUILTIN_ID = "builtin:hash-v1"
CACHE_SIZE = 1024  # prompt parts whose vectors embed_prompt keeps (per process, all embedders)

Vector = npt.NDArray[np.float32]

# Words that carry no sound: without this, "a" and "on" would make any two prompts look alike.
_STOP = frozenset(["a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "for", "from", "by",
                   "over", "under", "into", "onto", "is", "are", "its"])
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class Embedder(Protocol):
    """What turns prompts into vectors (read-only members: a plain attribute or a property fits)."""

    @property
    def id(self) -> str:
        """Stored with each vector: "st:sentence-transformers/all-MiniLM-L6-v2", "builtin:hash-v1"."""
        ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vector:
        """(len(texts), dim) float32, each row L2-normalised (a zero row only for a text with no words)."""
        ...


def _normalise(m: npt.NDArray[Any]) -> Vector:
    m = np.asarray(m, dtype=np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return np.ascontiguousarray(np.divide(m, norms, out=np.zeros_like(m), where=norms > 0), dtype=np.float32)


class BuiltinEmbedder:
    """Hashed features into `dim` signed buckets, L2-normalised: each content word (weight 1) and its
    character trigrams, with word boundaries, sharing a weight of 1 (so "roof" and "roofs" are close).
    Deterministic across processes and machines (crc32, not Python's salted hash)."""

    def __init__(self, dim: int = 512) -> None:
        if dim < 16:
            raise ValueError(f"BuiltinEmbedder dim must be >= 16, got {dim}")
        self.dim = dim
        self.id = BUILTIN_ID if dim == 512 else f"{BUILTIN_ID}-{dim}"

    def _add(self, v: npt.NDArray[np.float64], feature: str, weight: float) -> None:
        h = zlib.crc32(feature.encode("utf-8"))
        v[h % self.dim] += weight if (h >> 31) & 1 else -weight

    def embed(self, texts: Sequence[str]) -> Vector:
        out = np.zeros((len(texts), self.dim), np.float64)
        for row, text in zip(out, texts, strict=True):
            words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
            for w in words:
                self._add(row, "w:" + w, 1.0)
                padded = f"<{w}>"
                grams = [padded[i:i + 3] for i in range(len(padded) - 2)]
                for g in grams:
                    self._add(row, "c:" + g, 1.0 / len(grams))
        return _normalise(out)


class STEmbedder:
    """A sentence-transformers model (already loaded); `embed` is serialised by a lock (one model,
    called from the archive's writer and from whoever looks up a fallback)."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.id = f"st:{name}"
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vector:
        with self._lock:
            out = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True,
                                    show_progress_bar=False)
        return _normalise(np.asarray(out).reshape(len(texts), self.dim))


def _cached_repo(name: str) -> str | None:
    """The repo id under which `name` is in the local Hugging Face cache (checked without torch), if any."""
    from huggingface_hub import try_to_load_from_cache

    for repo in (name, f"sentence-transformers/{name}") if "/" not in name else (name,):
        if isinstance(try_to_load_from_cache(repo, "modules.json"), str):
            return repo
    return None


def _load_st(source: str) -> Any:
    """SentenceTransformer(source) on the CPU, offline, without transformers' progress bars."""
    import transformers.utils.logging as tlog
    from sentence_transformers import SentenceTransformer

    bars = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        return SentenceTransformer(source, device="cpu", local_files_only=True)
    finally:
        if bars:
            tlog.enable_progress_bar()


_warned: set[str] = set()  # models whose absence was logged (one line per model a process)


def load_embedder(model: str | None = None) -> Embedder:
    """The sentence-transformers model `model` (a directory, or a Hugging Face repo id looked up in the
    local cache only; default all-MiniLM-L6-v2), or the built-in embedder when it cannot be loaded
    offline (one log line says why and how to get it). `model="builtin"` asks for the built-in one."""
    name = model or DEFAULT_MODEL
    if name == "builtin":
        return BuiltinEmbedder()
    path = Path(name).expanduser()
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    why = "no such folder" if looks_like_path else "not in the local Hugging Face cache"
    source: str | None = None
    if path.is_dir():
        source = str(path.resolve())
    elif not looks_like_path:
        try:
            source = _cached_repo(name)
        except ValueError as e:  # not a valid repo id either
            why = " ".join(str(e).split())[:200]
    if source is not None:
        try:
            return STEmbedder(_load_st(source), source)
        except Exception as e:  # a damaged download, a missing file, an import failure: never fatal
            why = one_line(e)
    if name not in _warned:
        _warned.add(name)
        log.warning("embeddings: sentence-transformers model %r cannot be loaded offline (%s): using the "
                    "built-in text embedder (%s); to use the model, download it once with "
                    "`hf download %s` or pass a folder that holds it", name, why, BUILTIN_ID, name)
    return BuiltinEmbedder()


_cache: OrderedDict[tuple[str, str], Vector] = OrderedDict()
_cache_lock = threading.Lock()


def _part_vectors(embedder: Embedder, parts: Sequence[str]) -> list[Vector]:
    """The vectors of prompt parts, from the bounded per-process cache where it has them."""
    found: dict[str, Vector] = {}
    with _cache_lock:
        for p in parts:
            v = _cache.get((embedder.id, p))
            if v is not None:
                _cache.move_to_end((embedder.id, p))
                found[p] = v
    missing = [p for p in dict.fromkeys(parts) if p not in found]
    if missing:
        fresh = embedder.embed(missing)
        with _cache_lock:
            for p, v in zip(missing, fresh, strict=True):
                v = np.array(v, dtype=np.float32)
                v.flags.writeable = False
                found[p] = _cache[(embedder.id, p)] = v
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return [found[p] for p in parts]


def embed_prompt(embedder: Embedder, prompt: str) -> Vector:
    """The unit vector of a prompt or a blend ("rain:0.7 | thunder:0.3": the weighted mean of its
    parts' vectors, normalised). ValueError, as parse_blend words it, for an empty or malformed blend.
    The result is read-only (it may be shared through the cache)."""
    parts = parse_blend(prompt)
    vectors = _part_vectors(embedder, [p for p, _ in parts])
    if len(parts) == 1:
        return vectors[0]
    mean = sum(w * v.astype(np.float64) for (_, w), v in zip(parts, vectors, strict=True))
    out = _normalise(np.asarray(mean))
    out.flags.writeable = False
    return out
