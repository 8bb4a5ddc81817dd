"""Core ML: TangoFlux's transformer as an `.mlpackage`, run on a Mac's Neural Engine or GPU.

- `convert.py`: `convert_transformer()` traces a small wrapper around the Flux transformer at fixed
  shapes and converts it to an fp16 ML Program (works on Linux: converting and saving need no Mac).
- `traced.py`: that wrapper (`TransformerForCoreML`), the fp32 tables and inputs it is given, the
  transformer's weights alone, and `record_calls()` (the calls a real pipeline run makes).
- `package.py`: the saved package: byte-identical writing, its manifest, and the check of its graph.
- `runtime.py`: `CoreMLTransformer`, a drop-in for `pipe.model.transformer` (macOS), the parity gate
  against the PyTorch fp32 transformer, and `make_coreml_transformer()` with its fallback to MPS.
- `patches.py`: converter patches from the repository's `patches/`, applied while converting.

This module holds only what needs neither torch nor coremltools (names, shapes, where packages
live, the manifest, `coreml_status()` for `endless doctor`), so it imports in milliseconds.

The package's graph, per call (batch 2: the unconditional and the conditional row of one clip):

    hidden_states          (2, 645, 64)   the noisy latents
    encoder_hidden_states  (2, 65, D)     T5 states of 64 tokens, then the duration token
    pooled_projections     (2, D)         fc(mean T5 state)
    timestep_proj          (2, 256)       sinusoids of t * 1000, computed outside in fp32
    key_mask               (2, 710)       1.0 keep, 0.0 padding: [65 text rows, 645 latents]
    -> velocity            (2, 645, 64)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from instrument.errors import EndlessError

CONVERTER_VERSION = 1  # bump when convert.py or traced.py change what it builds: existing packages are rebuilt
BATCH = 2  # classifier-free guidance: unconditional + conditional rows
TEXT_TOKENS = 64  # = instrument.generator.conditioning.MAX_TEXT_TOKENS (a test checks it)
TEXT_ROWS = TEXT_TOKENS + 1  # the duration token follows the text
LATENT_CHANNELS = 64
TIME_PROJ_DIM = 256  # diffusers' CombinedTimestepTextProjEmbeddings.time_proj width
INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep_proj", "key_mask")
OUTPUT = "velocity"
TARGETS = ("macOS14", "macOS15")  # macOS15: Core ML's fused scaled_dot_product_attention op
DEFAULT_TARGET = "macOS15"
COMPUTE_UNITS = ("ALL", "CPU_AND_GPU", "CPU_AND_NE", "CPU_ONLY")  # coremltools.ComputeUnit names
DEFAULT_COMPUTE_UNITS = "ALL"
MANIFEST_AUTHOR = "com.endless.instrument"  # the package item that carries our manifest
MANIFEST_NAME = "manifest.json"
MANIFEST_PATH = f"Data/{MANIFEST_AUTHOR}/{MANIFEST_NAME}"
MANIFEST_FORMAT = "endless-coreml-transformer"
OFFICIAL_REPO = "declare-lab/TangoFlux"  # = instrument.generator.loading.OFFICIAL_REPO (that imports torch)


class CoreMLError(EndlessError):
    """A Core ML package cannot be built, read or used (to be merged into instrument/errors.py)."""

    exit_code = 5


def shapes(audio_seq_len: int = 645, text_dim: int = 1024) -> dict[str, tuple[int, ...]]:
    """The package's input and output shapes for a checkpoint's `audio_seq_len` and T5 width."""
    return {
        "hidden_states": (BATCH, audio_seq_len, LATENT_CHANNELS),
        "encoder_hidden_states": (BATCH, TEXT_ROWS, text_dim),
        "pooled_projections": (BATCH, text_dim),
        "timestep_proj": (BATCH, TIME_PROJ_DIM),
        "key_mask": (BATCH, TEXT_ROWS + audio_seq_len),
        OUTPUT: (BATCH, audio_seq_len, LATENT_CHANNELS),
    }


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "endless"


def default_package_dir() -> Path:
    return _cache_dir() / "coreml"


def _tangoflux_dir() -> Path:
    # = instrument.generator.backends.local_models_dir() (that module imports torch)
    return _cache_dir() / "models" / "tangoflux"


def package_name(model: str) -> str:
    """A file-name-safe name for a model as the worker loads it: "tiny", a hub id or a folder.

    >>> package_name("tiny"), package_name("declare-lab/TangoFlux")
    ('tiny', 'tangoflux')
    """
    if model in ("tiny", "tangoflux", OFFICIAL_REPO):
        return "tangoflux" if model != "tiny" else "tiny"
    path = Path(model).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        if resolved == _tangoflux_dir().resolve():
            return "tangoflux"
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in resolved.name) or "model"
        return f"{stem}-{digest}"
    return model.replace("/", "--")


def default_package_path(model: str, target: str = DEFAULT_TARGET) -> Path:
    """Where `endless convert-coreml` writes, and the coreml backend looks, by default."""
    return default_package_dir() / f"{package_name(model)}-{target}.mlpackage"


def default_target() -> str:
    """The newest target this Mac can run; off macOS, DEFAULT_TARGET (macOS15)."""
    if macos_version() is None:
        return DEFAULT_TARGET
    return next((t for t in reversed(TARGETS) if target_supported(t)), TARGETS[0])


def find_package(model: str) -> Path:
    """The converted package for `model` in the default folder: the newest target this machine can
    run (off macOS: any) that has a manifest; else where `default_target()`'s would be."""
    for target in reversed(TARGETS):
        path = default_package_path(model, target)
        if read_manifest(path) is not None and (macos_version() is None or target_supported(target)):
            return path
    return default_package_path(model, default_target())


def read_manifest(package: Path) -> dict[str, Any] | None:
    """The manifest inside a package, or None when there is no readable one."""
    try:
        data = json.loads((Path(package) / MANIFEST_PATH).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def parity_path(package: Path) -> Path:
    """The record of parity gates this package passed, next to it (the package itself stays as built)."""
    package = Path(package)
    return package.with_name(package.name.removesuffix(".mlpackage") + ".parity.json")


def parity_records(package: Path) -> list[dict[str, Any]]:
    """Parity gates this package passed (each: its key fields and the measured numbers)."""
    try:
        data = json.loads(parity_path(package).read_text())
    except (OSError, ValueError):
        return []
    records = data.get("passed") if isinstance(data, dict) else None
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def macos_version() -> tuple[int, ...] | None:
    """(major, minor) of macOS, or None elsewhere."""
    if sys.platform != "darwin":
        return None
    release = platform.mac_ver()[0]
    try:
        return tuple(int(p) for p in release.split(".")[:2])
    except ValueError:
        return None


def target_supported(target: str) -> bool:
    """Whether this Mac's Core ML can load a package built for `target` ("macOS15" needs macOS 15)."""
    version = macos_version()
    return version is not None and version[:1] >= (int(target.removeprefix("macOS")),)


def unavailable_reason() -> str | None:
    """Why Core ML cannot run here (not macOS, no coremltools), or None when it can."""
    if sys.platform != "darwin":
        return f"Core ML runs only on macOS (this is {platform.system()} {platform.machine()})"
    try:
        found = importlib.util.find_spec("coremltools") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "coremltools is not installed: `pip install coremltools==9.0`"
    return None


def coreml_status(model: str = "tangoflux", package: Path | None = None) -> str:
    """One line for `endless doctor`: where `--backend coreml` would run the model, and why.

    Reads only files: no torch, no coremltools import.
    """
    path = package if package is not None else find_package(model)
    manifest = read_manifest(path) if path.is_dir() else None
    why_not = unavailable_reason()
    if why_not is not None:
        have = f"; package {path} is ready for a Mac" if manifest else ""
        return (f"coreml: {why_not}, so --backend coreml is not available; the transformer runs with torch "
                f"here (`endless convert-coreml` still converts){have}")
    if manifest is None:
        what = "is not a converted package" if path.exists() else "does not exist"
        flags = "" if package_name(model) == "tangoflux" else f" --model {model}"
        return (f"coreml: {path} {what}: --backend coreml would fall back to MPS fp32; run "
                f"`endless convert-coreml{flags}` once")
    target = str(manifest.get("target", DEFAULT_TARGET))
    if not target_supported(target):
        mac = ".".join(map(str, macos_version() or ()))
        return (f"coreml: {path} needs {target} but this is macOS {mac}: --backend coreml would fall back to "
                f"MPS; convert with `endless convert-coreml --target macOS14`")
    passed = [r for r in parity_records(path) if r.get("compute_units") == DEFAULT_COMPUTE_UNITS
              and r.get("macos") == platform.mac_ver()[0]]
    gate = "parity passed here" if passed else "the parity gate runs on first use"
    return (f"coreml: --backend coreml runs the transformer on Core ML (compute units {DEFAULT_COMPUTE_UNITS}, "
            f"{path.name}, {gate}), T5 and the VAE on MPS fp32")
