"""Compile caches (issue 14, item 4): the key, the folder, and what `endless doctor` says about it.
The speed-up itself is measured on a GPU by benchmarks/bench_first_sound.py, not here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instrument import doctor
from instrument.generator import compile_cache as cc
from tests.conftest import endless

BASE = {"model": "declare-lab/TangoFlux", "dtype": "torch.bfloat16", "batch_sizes": (1, 4), "torch_version": "2.7.1",
        "mode": "reduce-overhead", "device": "NVIDIA H100 80GB HBM3"}


def test_the_key_changes_with_everything_that_changes_the_graphs() -> None:
    key = cc.cache_key(**BASE)  # type: ignore[arg-type]
    assert len(key) == 32 and key == cc.cache_key(**BASE)  # type: ignore[arg-type]
    assert cc.cache_key(**{**BASE, "batch_sizes": (4, 1, 1)}) == key  # type: ignore[arg-type]  # a set of sizes
    assert cc.cache_key(**{**BASE, "dtype": "bfloat16"}) == key  # type: ignore[arg-type]  # "torch." or not
    for field, other in (("model", "tiny"), ("dtype", "float32"), ("batch_sizes", (1,)), ("torch_version", "2.8.0"),
                         ("mode", None), ("device", "NVIDIA H200")):
        assert cc.cache_key(**{**BASE, field: other}) != key, field  # type: ignore[arg-type]


def test_the_cache_lives_in_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cc.cache_root() == tmp_path / "endless" / "torch"


def test_enable_points_inductor_at_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", False)
    assert cc.enable(tmp_path / "t") == tmp_path / "t"
    assert cache_dir() == str(tmp_path / "t" / "inductor") and (tmp_path / "t" / "mega").is_dir()
    assert inductor_config.fx_graph_cache and functorch_config.enable_autograd_cache


def test_a_damaged_mega_cache_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mega").mkdir()
    (tmp_path / "mega" / "k.bin").write_bytes(b"not a cache")
    assert cc.load(tmp_path, "k") == 0 and "compiling afresh" in caplog.text
    assert cc.load(tmp_path, "missing") == 0


def _fill(root: Path) -> None:
    (root / "inductor" / "fxgraph").mkdir(parents=True)
    (root / "inductor" / "fxgraph" / "a").write_bytes(b"x" * 1_500_000)
    (root / "mega").mkdir()
    for i, (model, saved) in enumerate((("tiny", 1.0), ("declare-lab/TangoFlux", 2.0))):
        (root / "mega" / f"k{i}.bin").write_bytes(b"y" * 500_000)
        (root / "mega" / f"k{i}.json").write_text(json.dumps(
            {"model": model, "dtype": "bfloat16", "batch_sizes": [1, 4], "torch": "2.7.1", "mode": "reduce-overhead",
             "device": "NVIDIA H100", "saved": saved, "bytes": 500_000}))
    (root / "mega" / "orphan.json").write_text("{}")  # a note without its .bin: not an entry


def test_summary_and_doctor_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "endless" / "torch"
    (line,) = doctor._compile_cache()
    assert line.status == "info" and str(root) in line.detail and "empty" in line.detail
    _fill(root)
    s = cc.summarize(root)
    assert s.exists and s.files == 6 and s.bytes > 2_500_000
    assert [e["model"] for e in s.entries] == ["declare-lab/TangoFlux", "tiny"]  # newest first
    (line,) = doctor._compile_cache()
    assert line.detail.startswith(f"compile cache {root}: 2.5 MB in 6 files, 2 saved compiles: ")
    assert "declare-lab/TangoFlux bfloat16 batch 1,4 torch 2.7.1 NVIDIA H100" in line.detail


def test_cli_doctor_shows_the_cache(tmp_path: Path) -> None:
    _fill(tmp_path / "endless" / "torch")
    r = endless("doctor", env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    lines = [x for x in r.stdout.splitlines() if "compile cache" in x]
    assert len(lines) == 1 and "2 saved compiles" in lines[0] and str(tmp_path) in lines[0], r.stdout
