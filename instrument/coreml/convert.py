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
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.embeddings import Timesteps
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from safetensors import safe_open
from torch import nn

from instrument import __version__
from instrument.coreml import (
    BATCH,
    CONVERTER_VERSION,
    DEFAULT_TARGET,
    INPUTS,
    MANIFEST_AUTHOR,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    OFFICIAL_REPO,
    OUTPUT,
    TARGETS,
    TEXT_ROWS,
    TIME_PROJ_DIM,
    CoreMLError,
    default_package_path,
    default_target,
    package_name,
    read_manifest,
    shapes,
)
from instrument.coreml.patches import converter_patches
from instrument.errors import ConfigError
from instrument.generator.errors import CheckpointError
from instrument.generator.loading import read_config
from instrument.generator.pipeline import flux_transformer

log = logging.getLogger(__name__)

MASK_BIAS = 1e4  # the additive bias on padded keys (fp16-safe; exp(-1e4) is 0 in fp16 and fp32)
FP16_MAX = 65504.0  # diffusers' Flux blocks clamp to this when running in fp16
MAX_RANK = 5  # Core ML's limit on tensor rank
TRANSFORMER_PREFIX = "transformer."
DATA_FILES = ("Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin")
_UUID_NAMESPACE = uuid.UUID("6f1c5a0e-93a4-4f5e-9d0b-1d3c2a7e5b10")  # fixed: deterministic item ids

# MIL ops the converter produces for this graph, all run by Core ML on the GPU and Neural Engine
# (macOS14: attention as matmul + softmax; macOS15: the fused scaled_dot_product_attention op).
# A new op appearing here after a diffusers or coremltools upgrade fails the conversion: check it
# runs where it should (Xcode's performance report) before adding it.
ALLOWED_OPS = frozenset({
    "abs", "add", "cast", "clip", "concat", "const", "expand_dims", "gelu", "layer_norm", "linear",
    "matmul", "mul", "real_div", "reduce_max", "reduce_mean", "reshape", "scaled_dot_product_attention",
    "silu", "slice_by_index", "softmax", "split", "sqrt", "square", "squeeze", "stack", "sub", "transpose",
})


# -- what is traced -------------------------------------------------------------------------------
def rope_tables(transformer: FluxTransformer2DModel, text_rows: int, audio_seq_len: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoPE (cos, sin) tables the pipeline's ids give, (text_rows + L, 128) each, fp32 on the CPU.

    The pipeline's ids: every text row at position 0, latent i at (i, i, i). Computed on the CPU,
    where diffusers uses float64 frequencies.
    """
    txt_ids = torch.zeros(text_rows, 3)  # (T, 3)
    img_ids = torch.arange(audio_seq_len)[:, None].repeat(1, 3)  # (L, 3)
    ids = torch.cat([txt_ids, img_ids.float()]).cpu()  # (T + L, 3)
    with torch.no_grad():
        cos, sin = transformer.pos_embed(ids)
    return cos.float(), sin.float()


def time_projection() -> nn.Module:
    """Flux's timestep sinusoids (parameter-free; as `time_text_embed.time_proj`)."""
    return Timesteps(num_channels=TIME_PROJ_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)


def timestep_projection(timestep: torch.Tensor, time_proj: nn.Module | None = None) -> torch.Tensor:
    """The transformer's `time_proj(timestep * 1000)` in fp32: (B,) -> (B, 256), on the CPU.

    `timestep` is what the pipeline passes (t / 1000); the transformer scales it back by 1000.
    """
    proj = time_proj if time_proj is not None else time_projection()
    with torch.no_grad():
        return proj(timestep.detach().float().cpu() * 1000).float()


class TransformerForCoreML(nn.Module):
    """Exactly what is traced: `FluxTransformer2DModel.forward` at fixed shapes, its inputs as below.

    hidden_states (B, L, 64), encoder_hidden_states (B, T, D), pooled_projections (B, D),
    timestep_proj (B, 256) fp32 sinusoids, key_mask (B, T + L) 1 keep / 0 pad -> velocity (B, L, 64).
    """

    def __init__(self, transformer: FluxTransformer2DModel, audio_seq_len: int, text_rows: int = TEXT_ROWS) -> None:
        super().__init__()
        self.transformer = transformer
        cos, sin = rope_tables(transformer, text_rows, audio_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)  # (T + L, 128) fp32
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep_proj: torch.Tensor, key_mask: torch.Tensor
                ) -> torch.Tensor:
        t = self.transformer
        x = t.x_embedder(hidden_states)  # (B, L, inner)
        embed = t.time_text_embed
        temb = embed.timestep_embedder(timestep_proj.to(pooled_projections.dtype))  # (B, inner)
        temb = temb + embed.text_embedder(pooled_projections)  # (B, inner)
        ctx = t.context_embedder(encoder_hidden_states)  # (B, T, inner)
        bias = (key_mask[:, None, None, :] - 1.0) * MASK_BIAS  # (B, 1, 1, T + L): 0 keep, -1e4 pad
        kwargs = {"attention_mask": bias}
        rope = (self.rope_cos, self.rope_sin)
        for block in t.transformer_blocks:
            ctx, x = block(hidden_states=x, encoder_hidden_states=ctx, temb=temb, image_rotary_emb=rope,
                           joint_attention_kwargs=kwargs)
            ctx = ctx.clamp(-FP16_MAX, FP16_MAX)  # as diffusers' FluxTransformerBlock in fp16
        for single in t.single_transformer_blocks:
            ctx, x = single(hidden_states=x, encoder_hidden_states=ctx, temb=temb, image_rotary_emb=rope,
                            joint_attention_kwargs=kwargs)
            ctx, x = ctx.clamp(-FP16_MAX, FP16_MAX), x.clamp(-FP16_MAX, FP16_MAX)  # FluxSingleTransformerBlock
        x = t.norm_out(x, temb)  # (B, L, inner)
        return t.proj_out(x)  # (B, L, 64)


def sample_inputs(audio_seq_len: int, text_dim: int, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Inputs with the package's explicit shapes, in its input order (values only steer the trace)."""
    g = torch.Generator("cpu").manual_seed(seed)
    want = shapes(audio_seq_len, text_dim)
    key_mask = torch.ones(want["key_mask"])  # (2, T + L)
    key_mask[0, TEXT_ROWS - 1 - 40 : TEXT_ROWS - 1] = 0.0  # a padded prompt: 24 tokens + duration kept
    return OrderedDict(
        hidden_states=torch.randn(want["hidden_states"], generator=g),  # (2, L, 64)
        encoder_hidden_states=torch.randn(want["encoder_hidden_states"], generator=g),  # (2, T, D)
        pooled_projections=torch.randn(want["pooled_projections"], generator=g),  # (2, D)
        timestep_proj=timestep_projection(torch.full((BATCH,), 0.7)),  # (2, 256)
        key_mask=key_mask,
    )


def pipeline_call(pipe: Any, requests: list[Any]) -> dict[str, Any]:
    """The keyword arguments of one transformer call as the pipeline makes it for `requests`
    (`ClipRequest`s), captured from a real 1-step run: what parity checks and timings feed."""
    calls: list[dict[str, Any]] = []

    class Capture(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kw: Any) -> Any:
            calls.append(kw)
            return self.inner(**kw)

    inner = pipe.model.transformer
    pipe.model.transformer = Capture(inner)
    try:
        pipe.denoise(requests, steps=1)
    finally:
        pipe.model.transformer = inner
    return calls[0]


# -- loading only the transformer ----------------------------------------------------------------
def load_transformer(root: Path) -> FluxTransformer2DModel:
    """The checkpoint's Flux transformer alone (fp32, CPU, eval): T5 and the VAE are not loaded."""
    config = read_config(root / "config.json")
    weights = root / "tangoflux.safetensors"
    with torch.device("meta"):
        model = flux_transformer(config)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            if key.startswith(TRANSFORMER_PREFIX):
                state[key[len(TRANSFORMER_PREFIX):]] = f.get_tensor(key).float()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{weights}: transformer keys do not fit {root / 'config.json'}: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def transformer_fingerprint(transformer: nn.Module) -> str:
    """A cheap identity of a transformer's weights: names, shapes and the first and last 4096 values
    of every tensor, as fp32. Same checkpoint -> same fingerprint, on any device."""
    h = hashlib.sha256()
    for name, tensor in sorted(transformer.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        ends = torch.cat([flat[:4096], flat[-4096:]]).float().cpu().numpy()
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
        h.update(ends.astype("<f4").tobytes())
    return h.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- coremltools ----------------------------------------------------------------------------------
def import_coremltools() -> Any:
    """coremltools, imported quietly (off macOS it logs that its runtime is missing, which we know),
    its logger kept at WARNING (at INFO it logs every op and pass: thousands of lines)."""
    logger = logging.getLogger("coremltools")
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as e:
        raise CoreMLError(f"coremltools cannot be imported ({e}): `pip install coremltools==9.0`") from e
    finally:
        logger.setLevel(logging.WARNING)
    return coremltools


def _versions(ct: Any) -> dict[str, str]:
    import diffusers

    return {"coremltools": ct.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__, "endless": __version__}


def _normalize_spec(package: Path) -> None:
    """Rewrite the model spec with protobuf's deterministic serialization (map fields in key order;
    coremltools' default order varies from run to run), so identical conversions give identical bytes."""
    from coremltools.proto import Model_pb2

    path = package / DATA_FILES[0]
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    path.write_bytes(spec.SerializeToString(deterministic=True))


def _normalize_package_manifest(package: Path) -> None:
    """Give the package's Manifest.json item ids derived from the item paths (coremltools draws random
    UUIDs), so identical conversions give identical bytes."""
    path = package / "Manifest.json"
    data = json.loads(path.read_text())
    items = data["itemInfoEntries"]
    new_ids = {old: str(uuid.uuid5(_UUID_NAMESPACE, f"{v['author']}/{v['path']}")) for old, v in items.items()}
    data["itemInfoEntries"] = {new_ids[k]: v for k, v in items.items()}
    data["rootModelIdentifier"] = new_ids[data["rootModelIdentifier"]]
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


def _add_manifest(package: Path, manifest: dict[str, Any]) -> None:
    from coremltools.libmodelpackage import ModelPackage

    staging = package.with_name(package.name + ".manifest")
    staging.mkdir(exist_ok=True)
    try:
        item = staging / MANIFEST_NAME
        item.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        pkg = ModelPackage(str(package))
        pkg.addItem(str(item), MANIFEST_NAME, MANIFEST_AUTHOR, "Endless: how this package was made, sha256")
        del pkg  # the C++ side writes Manifest.json when it goes
        gc.collect()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _normalize_package_manifest(package)


# -- checking a package ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PackageReport:
    """What a converted package holds, read from its spec (no Mac needed)."""

    inputs: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    outputs: dict[str, tuple[tuple[int, ...], str]]
    opset: str  # e.g. "CoreML8" (macOS15)
    ops: dict[str, int]  # MIL op type -> count, nested blocks included
    max_rank: int  # the largest rank of any op output
    compute_dtypes: dict[str, int]  # output dtype of every non-const op -> count
    const_dtypes: dict[str, int]  # dtype of every float const (weights, tables) -> count
    fp32_ops: tuple[str, ...]  # non-const ops with an fp32 output (only the output cast expected)
    metadata: dict[str, str] = field(default_factory=dict)


def _array_type(feature: Any) -> tuple[tuple[int, ...], str]:
    from coremltools.proto import FeatureTypes_pb2

    arr = feature.type.multiArrayType
    return tuple(int(d) for d in arr.shape), FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)


def _walk(operations: Iterable[Any]) -> Iterable[Any]:
    for op in operations:
        yield op
        for block in op.blocks:
            yield from _walk(block.operations)


def inspect_package(package: Path) -> PackageReport:
    """Read a package's spec: inputs, outputs, ops, ranks and dtypes."""
    ct = import_coremltools()
    from coremltools.proto import MIL_pb2

    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    opset = fn.opset
    ops: Counter[str] = Counter()
    compute: Counter[str] = Counter()
    consts: Counter[str] = Counter()
    fp32_ops: list[str] = []
    max_rank = 0
    name = MIL_pb2.DataType.Name
    for op in _walk(fn.block_specializations[opset].operations):
        ops[op.type] += 1
        for out in op.outputs:
            tensor = out.type.tensorType
            max_rank = max(max_rank, int(tensor.rank))
            dtype = name(tensor.dataType)
            if op.type == "const":
                if dtype.startswith("FLOAT"):
                    consts[dtype] += 1
                continue
            compute[dtype] += 1
            if dtype == "FLOAT32":
                fp32_ops.append(f"{op.type}:{out.name}")
    return PackageReport(
        inputs={f.name: _array_type(f) for f in spec.description.input},
        outputs={f.name: _array_type(f) for f in spec.description.output},
        opset=opset,
        ops=dict(sorted(ops.items())),
        max_rank=max_rank,
        compute_dtypes=dict(compute),
        const_dtypes=dict(consts),
        fp32_ops=tuple(fp32_ops),
        metadata=dict(spec.description.metadata.userDefined),
    )


def package_problems(report: PackageReport, audio_seq_len: int, text_dim: int) -> list[str]:
    """What is wrong with a converted package (empty when nothing): shapes, ops, rank, precision."""
    want = shapes(audio_seq_len, text_dim)
    problems = []
    for name in INPUTS:
        if report.inputs.get(name) != (want[name], "FLOAT32"):
            problems.append(f"input {name}: {report.inputs.get(name)}, expected {(want[name], 'FLOAT32')}")
    if set(report.inputs) != set(INPUTS):
        problems.append(f"inputs {sorted(report.inputs)}, expected {sorted(INPUTS)}")
    if report.outputs != {OUTPUT: (want[OUTPUT], "FLOAT32")}:
        problems.append(f"outputs {report.outputs}, expected {OUTPUT} {want[OUTPUT]} FLOAT32")
    unknown = sorted(set(report.ops) - ALLOWED_OPS)
    if unknown:
        problems.append(f"ops outside the allowlist: {', '.join(unknown)}")
    if report.max_rank > MAX_RANK:
        problems.append(f"a tensor of rank {report.max_rank}; Core ML allows at most {MAX_RANK}")
    if set(report.const_dtypes) - {"FLOAT16"}:
        problems.append(f"float constants of types {report.const_dtypes}; expected FLOAT16 only")
    if report.fp32_ops != (f"cast:{OUTPUT}",):
        problems.append(f"fp32 compute: {list(report.fp32_ops)[:5]}; expected only the cast to {OUTPUT}")
    return problems


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


def package_digest(package: Path) -> dict[str, str]:
    """sha256 of the package's model and weight files."""
    return {f: sha256_file(package / f) for f in DATA_FILES}


def up_to_date(package: Path, wanted: dict[str, Any]) -> bool:
    """Whether `package` exists, was built from the same source, converter, target and shapes, and
    its files still have the hashes its manifest lists."""
    manifest = read_manifest(package)
    if manifest is None or any(manifest.get(k) != v for k, v in wanted.items()):
        return False
    try:
        return bool(manifest.get("files") == package_digest(package))
    except OSError:
        return False


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
        _normalize_spec(partial)
        _normalize_package_manifest(partial)
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
        _add_manifest(partial, manifest)
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
