"""Prompt embeddings: the built-in embedder ranks related prompts first and is the same in every
process; sentence-transformers loads a real (tiny, random) model from a folder and from a Hugging Face
cache, offline; a model that is not there falls back to the built-in embedder with one log line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from instrument.archive import embed
from instrument.archive.embed import BUILTIN_ID, BuiltinEmbedder, STEmbedder, embed_prompt, load_embedder
from tests.conftest import ROOT
from tests.st_fixtures import as_hf_cache, build_tiny_st


def _cos(e: BuiltinEmbedder, a: str, b: str) -> float:
    va, vb = e.embed([a, b])
    return float(va @ vb)


@pytest.mark.parametrize(("query", "near", "far"), [
    ("heavy rain on a tin roof", "rain on a roof", "a jazz saxophone solo"),
    ("a jazz saxophone solo", "smoky jazz club saxophone", "heavy rain on a tin roof"),
    ("birds in a forest at dawn", "forest birdsong", "deep bass drum loop"),
    ("thunderstorm with wind", "wind and thunder", "soft piano melody"),
])
def test_builtin_ranks_related_prompts_first(query: str, near: str, far: str) -> None:
    e = BuiltinEmbedder()
    assert _cos(e, query, near) > _cos(e, query, far) + 0.1


def test_builtin_vectors_are_unit_float32_and_stop_words_alone_are_zero() -> None:
    e = BuiltinEmbedder()
    m = e.embed(["rain", "the of a", "Rain!"])
    assert m.dtype == np.float32 and m.shape == (3, e.dim)
    assert np.linalg.norm(m[0]) == pytest.approx(1.0, abs=1e-6)
    assert not m[1].any()  # nothing to embed: a zero row, never NaN
    np.testing.assert_array_equal(m[0], m[2])  # case and punctuation do not matter
    with pytest.raises(ValueError, match="dim must be >= 16"):
        BuiltinEmbedder(dim=4)


def test_builtin_is_the_same_in_another_process() -> None:
    """crc32, not Python's salted hash: a vector stored yesterday matches one made today."""
    code = ("import json; from instrument.archive.embed import BuiltinEmbedder as B; "
            "print(json.dumps(B().embed(['heavy rain on a tin roof'])[0].tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONHASHSEED="12345"), check=True)
    there = np.array(json.loads(out.stdout), np.float32)
    np.testing.assert_array_equal(there, BuiltinEmbedder().embed(["heavy rain on a tin roof"])[0])


class Counting:
    """The built-in embedder, counting the texts it is asked to embed (the cache's test)."""

    def __init__(self, id: str = "test:counting") -> None:
        self.inner = BuiltinEmbedder()
        self.id, self.dim = id, self.inner.dim
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_embed_prompt_blends_by_weight_and_caches_each_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed, "_cache", type(embed._cache)())
    e = Counting()
    rain, sax = embed_prompt(e, "rain on a roof"), embed_prompt(e, "jazz saxophone")
    mostly_rain = embed_prompt(e, "rain on a roof:0.9 | jazz saxophone:0.1")
    mostly_sax = embed_prompt(e, "rain on a roof:0.2 | jazz saxophone:0.8")
    assert mostly_rain @ rain > mostly_rain @ sax and mostly_sax @ sax > mostly_sax @ rain
    assert np.linalg.norm(mostly_rain) == pytest.approx(1.0, abs=1e-6)
    assert e.texts == ["rain on a roof", "jazz saxophone"]  # each part embedded once, then cached
    assert not mostly_rain.flags.writeable and not rain.flags.writeable
    other = Counting(id="test:other")  # another embedder's vectors are never taken from the cache
    embed_prompt(other, "rain on a roof")
    assert other.texts == ["rain on a roof"]
    with pytest.raises(ValueError, match="empty prompt"):
        embed_prompt(e, "  ")


def test_the_prompt_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed, "_cache", type(embed._cache)())
    monkeypatch.setattr(embed, "CACHE_SIZE", 8)
    e = Counting()
    for i in range(30):
        embed_prompt(e, f"prompt number {i}")
    assert len(embed._cache) == 8
    embed_prompt(e, "prompt number 29")  # the newest are kept...
    embed_prompt(e, "prompt number 0")  # ...the oldest were dropped
    assert e.texts[30:] == ["prompt number 0"]


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_st(tmp_path_factory.mktemp("tiny_st"))


def test_sentence_transformers_loads_from_a_folder(tiny_st: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = load_embedder(str(tiny_st))
    assert isinstance(e, STEmbedder)
    assert e.id == f"st:{tiny_st.resolve()}" and e.dim == 16
    m = e.embed(["heavy rain on a tin roof", "jazz saxophone solo", "heavy rain on a tin roof"])
    assert m.shape == (3, 16) and m.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(m[0], m[2], atol=1e-6)
    assert not np.allclose(m[0], m[1], atol=1e-3)  # a real model, not a constant
    v = embed_prompt(e, "heavy rain on a tin roof:0.5 | jazz saxophone solo:0.5")
    assert v.shape == (16,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)


def test_sentence_transformers_loads_from_the_hugging_face_cache(tiny_st: Path, tmp_path: Path) -> None:
    """A repo id found in the local cache (HF_HUB_CACHE), with the hub offline: a fresh process, as a
    user's would be (huggingface_hub reads its settings at import)."""
    hub = tmp_path / "hub"
    as_hf_cache(tiny_st, hub, "tiny-org/tiny-st")
    code = ("from instrument.archive.embed import load_embedder as L; e = L('tiny-org/tiny-st'); "
            "print(type(e).__name__, e.id, e.dim, round(float(e.embed(['rain'])[0] @ e.embed(['rain'])[0]), 4))")
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["STEmbedder", "st:tiny-org/tiny-st", "16", "1.0"], out.stderr


def test_a_model_not_on_disk_falls_back_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(embed, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="instrument.archive.embed"):
        first = load_embedder("nobody/not-a-model")
        again = load_embedder("nobody/not-a-model")
        gone = load_embedder(str(tmp_path / "no-such-folder"))
    assert isinstance(first, BuiltinEmbedder) and isinstance(again, BuiltinEmbedder)
    assert first.id == BUILTIN_ID and isinstance(gone, BuiltinEmbedder)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one per model, not one per call
    assert "'nobody/not-a-model'" in lines[0] and "not in the local Hugging Face cache" in lines[0]
    assert "built-in text embedder" in lines[0] and "hf download nobody/not-a-model" in lines[0]
    assert "no such folder" in lines[1]
    assert load_embedder("builtin").id == BUILTIN_ID


def test_a_damaged_model_folder_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "modules.json").write_text("{not json")
    monkeypatch.setattr(embed, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="instrument.archive.embed"):
        e = load_embedder(str(bad))
    assert isinstance(e, BuiltinEmbedder)
    [line] = [r.getMessage() for r in caplog.records]
    assert str(bad) in line and "built-in text embedder" in line
