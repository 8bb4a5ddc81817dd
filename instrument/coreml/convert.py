"""Convert TangoFlux's Flux transformer to a Core ML package: an fp16 ML Program at fixed shapes.

In the manner of apple/ml-stable-diffusion's `torch2coreml.py`: a small wrapper module around
exactly what is traced, sample inputs with explicit shapes, metadata on the package, and a skip
when an up-to-date package already exists. Added here: a manifest with sha256 of every file,
byte-identical output for identical inputs, and a check of the converted graph (its inputs and
outputs, only allowed ops, tensor rank <= 5, fp16 compute) before the package is put in place.

What the wrapper changes, and why (both measured: computed in fp16, RoPE positions and timestep
sinusoids were off by up to 0.2-0.45 absolute):
- RoPE: the cos/sin tables for txt_ids = 0 and img_ids = arange(645) are computed once in fp32
  (diffusers' float64 frequencies) and baked in as constants; Core ML never sees the positions.
- Timestep: its sinusoidal projection of t * 1000 is an input, computed outside in fp32 by the
  runtime; only the embedding MLP after it is in the graph.
- The key-padding mask is an input (2, 65 + 645) of 1.0 (keep) / 0.0 (pad), turned into an
  additive bias of -1e4 (exp underflows to exactly 0, as the PyTorch boolean mask's -inf does).
- Where diffusers clamps activations to the fp16 range when it runs in fp16, the wrapper does too
  (the trace runs in fp32, so diffusers' own `dtype == float16` branches are not traced).

Works on Linux: conversion and saving need no Mac (`skip_model_load=True`); running needs macOS.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instrument import __version__
from instrument.coreml import (
    BATCH,
    CONVERTER_VERSION,
    DEFAULT_TARGET,
    INPUTS,
    MANIFEST_FORMAT,
    OFFICIAL_REPO,
    OUTPUT,
    TARGETS,
    CoreMLError,
    default_package_path,
    default_target,
    package_name,
    shapes,
)
from instrument.coreml.package import (
    add_manifest,
    import_coremltools,
    inspect_package,
    normalize_package_manifest,
    normalize_spec,
    package_digest,
    package_problems,
    sha256_file,
    up_to_date,
)
from instrument.coreml.patches import converter_patches
from instrument.coreml.traced import (
    TransformerForCoreML,
    load_transformer,
    sample_inputs,
    transformer_fingerprint,
)
from instrument.errors import ConfigError
from instrument.generator.loading import read_config

log = logging.getLogger(__name__)


def _versions(ct: Any) -> dict[str, str]:
    import diffusers

    return {"coremltools": ct.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__, "endless": __version__}


# -- converting -----------------------------------------------------------------------------------
def _source(root: Path, name: str) -> dict[str, Any]:
    files = {f: sha256_file(root / f) for f in ("config.json", "tangoflux.safetensors")}
    return {"model": name, "sha256": files}


def _wanted(source: dict[str, Any], target: str, audio_seq_len: int, text_dim: int) -> dict[str, Any]:
    """The manifest fields that must match for an existing package to count as up to date."""
    return {
        "format": MANIFEST_FORMAT,
        "converter_version": CONVERTER_VERSION,
        "source": source,
        "target": target,
        "shapes": {k: list(v) for k, v in shapes(audio_seq_len, text_dim).items()},
    }


def convert_transformer(
    checkpoint: Path,
    out: Path,
    *,
    target: str = DEFAULT_TARGET,
    source_name: str | None = None,  # recorded as the source model; None: the folder's name
    force: bool = False,  # convert even when an up-to-date package exists
) -> Path:
    """Convert a checkpoint folder's transformer to `out` (an .mlpackage); returns `out`.

    >>> convert_transformer(Path("~/.cache/endless/tiny-v1").expanduser(), Path("tiny.mlpackage"))  # doctest: +SKIP
    """
    if target not in TARGETS:
        raise ConfigError(f"--target {target}: allowed {', '.join(TARGETS)}")
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise ConfigError(f"--out {out}: a Core ML package path must end in .mlpackage")
    root = Path(checkpoint)
    config = read_config(root / "config.json")
    text_dim = config.joint_attention_dim
    t0 = time.perf_counter()
    source = _source(root, source_name or root.name)
    wanted = _wanted(source, target, config.audio_seq_len, text_dim)
    if not force and up_to_date(out, wanted):
        log.info("coreml: %s is up to date (source sha256 and converter v%d match), skipped", out,
                 CONVERTER_VERSION)
        return out

    ct = import_coremltools()
    transformer = load_transformer(root)
    fingerprint = transformer_fingerprint(transformer)
    wrapper = TransformerForCoreML(transformer, config.audio_seq_len).eval()
    example = sample_inputs(config.audio_seq_len, text_dim)
    log.info("coreml: tracing the transformer (%d + %d blocks)", config.num_layers, config.num_single_layers)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-side shape arithmetic
        traced = torch.jit.trace(wrapper, tuple(example.values()), check_trace=False)
    del wrapper, transformer
    gc.collect()

    log.info("coreml: converting to an fp16 ML Program for %s", target)
    with converter_patches() as patches:
        mlmodel = ct.convert(
            traced,
            convert_to="mlprogram",
            inputs=[ct.TensorType(name=k, shape=tuple(v.shape), dtype=np.float32) for k, v in example.items()],
            outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)],
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=ct.precision.FLOAT16,
            skip_model_load=True,  # loading needs macOS; the runtime loads it there
        )
    del traced
    gc.collect()

    versions = _versions(ct)
    meta = mlmodel.user_defined_metadata
    meta.pop("com.github.apple.coremltools.conversion_date", None)  # a date would break byte identity
    meta.update({
        "endless.converter_version": str(CONVERTER_VERSION),
        "endless.source_model": source["model"],
        "endless.source_sha256": source["sha256"]["tangoflux.safetensors"],
        "endless.target": target,
        "endless.shapes": json.dumps(wanted["shapes"], sort_keys=True),
        "endless.versions": json.dumps(versions, sort_keys=True),
        "endless.patches": ",".join(patches),
    })
    mlmodel.author = "Endless (instrument.coreml.convert)"
    mlmodel.short_description = (f"TangoFlux's Flux transformer ({config.num_layers} double + "
                                 f"{config.num_single_layers} single blocks), fp16, batch {BATCH}: one "
                                 "velocity per call for the unconditional and conditional rows")
    mlmodel.version = f"{CONVERTER_VERSION}"
    descriptions = {
        "hidden_states": "noisy latents (2, L, 64)",
        "encoder_hidden_states": "T5 states of 64 tokens then the duration token (2, 65, D)",
        "pooled_projections": "fc(mean T5 state) (2, D)",
        "timestep_proj": "time_proj(t * 1000) computed in fp32 (2, 256)",
        "key_mask": "1.0 keep / 0.0 padding over [65 text rows, L latents] (2, 65 + L)",
        OUTPUT: "the flow-matching velocity (2, L, 64)",
    }
    for name in INPUTS:
        mlmodel.input_description[name] = descriptions[name]
    mlmodel.output_description[OUTPUT] = descriptions[OUTPUT]

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".partial-{os.getpid()}-{out.name}")  # coremltools wants the .mlpackage suffix
    shutil.rmtree(partial, ignore_errors=True)
    try:
        mlmodel.save(str(partial))
        del mlmodel
        gc.collect()
        normalize_spec(partial)
        normalize_package_manifest(partial)
        report = inspect_package(partial)
        problems = package_problems(report, config.audio_seq_len, text_dim)
        if problems:
            raise CoreMLError(f"the converted package is not what Core ML should run: {'; '.join(problems)}")
        manifest = {
            **wanted,
            "transformer_fingerprint": fingerprint,
            "precision": "float16",
            "compute_units_default": "ALL",
            "checkpoint_config": config.to_dict(),
            "opset": report.opset,
            "ops": report.ops,
            "max_rank": report.max_rank,
            "versions": versions,
            "patches": patches,
            "files": package_digest(partial),
        }
        add_manifest(partial, manifest)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("coreml: wrote %s (%.1f MB) in %.1f s", out, size / 1e6, time.perf_counter() - t0)
    return out


def convert_main(model: str = "tangoflux", out: Path | None = None, target: str | None = None,
                 force: bool = False) -> Path:
    """`endless convert-coreml`: resolve `--model` (tangoflux, tiny or a folder) and convert it.

    `target` None: the newest this Mac runs (macOS15 off macOS). Returns the package path; by
    default `default_package_path(model, target)`, where the coreml backend looks for it.
    """
    from instrument.generator.backends import choose_model
    from instrument.generator.loading import resolve_checkpoint

    target = target or default_target()
    if target not in TARGETS:
        raise ConfigError(f"--target {target}: allowed {', '.join(TARGETS)}")
    choice = choose_model(model)
    if choice.stand_in:
        raise CoreMLError("no TangoFlux weights here to convert: run `endless fetch-model` first, "
                          "or pass --model DIR, or --model tiny to try the conversion")
    paths = resolve_checkpoint(choice.model, allow_download=choice.allow_download)
    if choice.model == "tiny":
        name = "tiny"
    elif package_name(choice.model) == "tangoflux":  # the hub id, or our copy of it (fetch-model)
        name = OFFICIAL_REPO
    else:
        name = Path(choice.model).name
    return convert_transformer(paths.root, out or default_package_path(choice.model, target), target=target,
                               source_name=name, force=force)
