"""`endless doctor`: every check reports, broken packages become `fail` lines, never tracebacks."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from instrument import doctor
from instrument.doctor import Check, run_checks
from tests.conftest import endless

STATUSES = {"ok", "warn", "fail", "info"}


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_run_checks_covers_the_basics() -> None:
    t0 = time.perf_counter()
    checks = run_checks()
    elapsed = time.perf_counter() - t0
    names = by_name(checks)
    for name in ("python", "numpy", "soundfile", "soxr", "portaudio", "jack", "torch", "diffusers",
                 "transformers", "coremltools", "model cache", doctor.TANGOFLUX_REPO,
                 doctor.TEXT_ENCODER_REPO, "hf offline"):
        assert name in names, f"no {name!r} check in {sorted(names)}"
    for c in checks:
        assert c.status in STATUSES
        assert c.detail.strip(), c
        assert c.line() == f"{c.status:>4}  {c.detail}"
        assert "\n" not in c.line()
    # everything the project depends on is installed in the test environment
    for name in ("python", "numpy", "soundfile", "soxr", "portaudio", "diffusers", "transformers"):
        assert names[name].status == "ok", names[name]
    assert names["torch"].status in ("ok", "warn")  # warn: CPU only
    assert elapsed < 10, f"doctor took {elapsed:.1f} s"


def test_line_format() -> None:
    assert Check("x", "ok", "numpy 2.4.6").line() == "  ok  numpy 2.4.6"
    assert Check("x", "fail", "soxr cannot be imported").line() == "fail  soxr cannot be imported"


def test_broken_import_is_a_fail_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soxr", None)  # `import soxr` now raises ImportError
    checks = by_name(run_checks())
    soxr = checks["soxr"]
    assert soxr.status == "fail"
    assert "soxr" in soxr.detail and "pip install soxr" in soxr.detail
    assert checks["numpy"].status == "ok" and "model cache" in checks  # the others still ran


def test_missing_portaudio_library_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> ModuleType:
        if name == "sounddevice":  # what sounddevice raises when libportaudio cannot be loaded
            raise OSError("PortAudio library not found")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)
    checks = by_name(run_checks())
    pa = checks["portaudio"]
    assert pa.status == "fail"
    assert "apt-get install libportaudio2" in pa.detail and "brew install portaudio" in pa.detail
    assert checks["jack"].status in ("info", "warn")


def test_broken_generator_packages_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    checks = by_name(run_checks())
    assert checks["torch"].status == "fail" and "pip install torch" in checks["torch"].detail
    assert checks["diffusers"].status == "fail" and "pip install" in checks["diffusers"].detail


def test_a_check_that_raises_becomes_a_fail_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[Check]:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(doctor, "CHECKS", (("python", doctor._python), ("exploding", boom)))
    checks = run_checks()
    assert [c.name for c in checks] == ["python", "exploding"]
    assert checks[1].status == "fail" and "kaboom" in checks[1].detail


def _snapshot(cache: Path, repo: str, files: list[str]) -> None:
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    for f in files:
        (snap / f).write_bytes(b"x")


def test_model_cache_finds_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    checks = by_name(run_checks())
    assert "does not exist" in checks["model cache"].detail
    assert checks[doctor.TANGOFLUX_REPO].status == "warn"
    assert "endless fetch-model" in checks[doctor.TANGOFLUX_REPO].detail

    _snapshot(cache, doctor.TANGOFLUX_REPO, ["config.json", "tangoflux.safetensors", "vae.safetensors"])
    _snapshot(cache, doctor.TEXT_ENCODER_REPO, ["config.json"])  # an interrupted download
    checks = by_name(run_checks())
    assert str(cache) in checks["model cache"].detail and "2 models" in checks["model cache"].detail
    assert checks[doctor.TANGOFLUX_REPO].status == "ok"
    t5 = checks[doctor.TEXT_ENCODER_REPO]
    assert t5.status == "warn" and "*.safetensors" in t5.detail


def test_hf_offline_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "is set" in by_name(run_checks())["hf offline"].detail
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "not set" in by_name(run_checks())["hf offline"].detail


@pytest.mark.jack
def test_cli_doctor_sees_the_jack_server(jack_env: dict[str, str]) -> None:
    r = endless("doctor", env=jack_env, timeout=60)
    assert r.returncode == 0, r.stderr  # no fail lines here
    lines = r.stdout.splitlines()
    assert any(ln.startswith("  ok  PortAudio") and "JACK Audio Connection Kit" in ln for ln in lines), \
        r.stdout
    assert any(ln.startswith("info  JACK: server") and "reachable" in ln for ln in lines), r.stdout
    assert any(ln.startswith("  ok ") and "output device" in ln for ln in lines), r.stdout
