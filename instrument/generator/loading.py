"""Find and load TangoFlux checkpoints in the official layout.

A checkpoint is a folder with `config.json`, `tangoflux.safetensors` and `vae.safetensors` (the
Hugging Face repo `declare-lab/TangoFlux`), plus a text encoder: `config.json`'s
`text_encoder_name`, a hub id (`google/flan-t5-large`) or a folder. `--model` values:

- a folder with that layout (`--model-dir DIR`);
- a hub id, looked up in the Hugging Face cache only (no download unless `allow_download=True`);
- `tiny`: a tiny random-weight checkpoint, built once into a cache folder (`tiny.py`).

The loading follows upstream's `TangoFluxInference`: T5 from the text encoder, then the whole of
`tangoflux.safetensors` on top (its `text_encoder.*` keys included), the VAE from `vae.safetensors`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instrument.generator.checkpoint import TangoFluxConfig
from instrument.generator.download import OFFICIAL_REPO
from instrument.generator.errors import CheckpointError, ModelNotFoundError

if TYPE_CHECKING:  # torch, diffusers and transformers take seconds to import: only where a model loads
    import torch
    from diffusers.models.autoencoders.autoencoder_oobleck import AutoencoderOobleck

    from instrument.generator.model import TangoFluxModel
    from instrument.generator.pipeline import TangoFluxPipeline

TINY = "tiny"
TINY_VERSION = 1  # bump when tiny.py changes what it builds, so cached tiny checkpoints are rebuilt
CHECKPOINT_FILES = ("config.json", "tangoflux.safetensors", "vae.safetensors")
TEXT_ENCODER_PREFIX = "text_encoder."
_LAYOUT = "a folder with config.json, tangoflux.safetensors and vae.safetensors"


@dataclass(frozen=True)
class CheckpointPaths:
    root: Path
    config: Path
    weights: Path  # tangoflux.safetensors
    vae: Path  # vae.safetensors
    text_encoder: Path  # a transformers folder: T5 config, weights and tokenizer


def default_tiny_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "endless" / f"tiny-v{TINY_VERSION}"


def _offline_note() -> str:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return " (HF_HUB_OFFLINE is set)" if value.upper() in ("1", "ON", "YES", "TRUE") else ""


def _is_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def _snapshot(repo_id: str, patterns: list[str], allow_download: bool, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id, allow_patterns=patterns, local_files_only=not allow_download, cache_dir=cache_dir
        )
    except (OSError, ValueError) as exc:  # hub errors: LocalEntryNotFound, HTTP, offline mode, bad id
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFoundError(
            f"no weights for {repo_id!r} in the Hugging Face cache{_offline_note()} ({reason}): "
            f"download them once with network access, pass --model-dir DIR ({_LAYOUT}), "
            "or --model tiny to try the instrument offline"
        ) from exc
    return Path(path)


def resolve_checkpoint(
    model: str | os.PathLike[str] = OFFICIAL_REPO,
    *,
    text_encoder: str | os.PathLike[str] | None = None,  # overrides config.json's text_encoder_name
    allow_download: bool = False,  # False: the Hugging Face cache only
    cache_dir: str | Path | None = None,  # the Hugging Face cache; None: its default
    tiny_dir: str | Path | None = None,  # where `tiny` is built; None: default_tiny_dir()
) -> CheckpointPaths:
    """The files of a checkpoint given as a folder, a hub id or `tiny`; raises ModelError subclasses."""
    name = os.fspath(model)
    if name == TINY and not Path(name).exists():
        root = Path(tiny_dir) if tiny_dir is not None else default_tiny_dir()
        if not (root / "config.json").is_file():  # built once (imports torch)
            from instrument.generator.tiny import ensure_tiny_checkpoint

            root = ensure_tiny_checkpoint(root)
    elif Path(name).expanduser().is_dir():
        root = Path(name).expanduser()
    elif _is_repo_id(name):
        root = _snapshot(name, ["config.json", "*.safetensors"], allow_download, cache_dir)
    else:
        raise ModelNotFoundError(
            f"--model-dir {name}: no such folder; expected {_LAYOUT}, a hub id such as "
            f"{OFFICIAL_REPO!r} in the Hugging Face cache, or --model tiny"
        )
    missing = [f for f in CHECKPOINT_FILES if not (root / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{root}: missing {', '.join(missing)}; expected {_LAYOUT} "
            "(pass it as --model-dir DIR, or --model tiny to try the instrument offline)"
        )
    config = read_config(root / "config.json")
    te_name = os.fspath(text_encoder) if text_encoder is not None else config.text_encoder_name
    return CheckpointPaths(
        root=root,
        config=root / "config.json",
        weights=root / "tangoflux.safetensors",
        vae=root / "vae.safetensors",
        text_encoder=_resolve_text_encoder(te_name, root, allow_download, cache_dir),
    )


def _resolve_text_encoder(name: str, root: Path, allow_download: bool, cache_dir: str | Path | None) -> Path:
    for candidate in (root / name, Path(name).expanduser()):
        if candidate.is_dir():
            return candidate
    if _is_repo_id(name):
        return _snapshot(name, ["*.json", "*.model", "*.safetensors"], allow_download, cache_dir)
    raise ModelNotFoundError(
        f"text encoder {name!r}: no such folder under {root} and not a hub id; "
        "pass --model-dir DIR with its text encoder, or --model tiny"
    )


def read_config(path: Path) -> TangoFluxConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return TangoFluxConfig.from_dict(data, source=str(path))


def _key_summary(keys: list[str]) -> str:
    return f"{len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"


def load_model(paths: CheckpointPaths) -> tuple[TangoFluxModel, AutoencoderOobleck, Any]:
    """(model, vae, tokenizer) on the CPU, in the checkpoint's dtypes, weights checked key by key."""
    import torch
    from diffusers.models.autoencoders.autoencoder_oobleck import AutoencoderOobleck
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, T5EncoderModel

    from instrument.generator.model import TangoFluxModel

    config = read_config(paths.config)
    tokenizer = AutoTokenizer.from_pretrained(paths.text_encoder)
    text_encoder = T5EncoderModel.from_pretrained(paths.text_encoder)
    weights = load_file(str(paths.weights), device="cpu")

    te_weights = {
        k[len(TEXT_ENCODER_PREFIX) :]: v for k, v in weights.items() if k.startswith(TEXT_ENCODER_PREFIX)
    }
    # Copied in place (not assigned) so T5's tied embeddings stay tied.
    result = text_encoder.load_state_dict(te_weights, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(
            f"{paths.weights}: text_encoder keys the T5 in {paths.text_encoder} does not have: "
            f"{_key_summary(result.unexpected_keys)}"
        )

    with torch.device("meta"):  # built without random init; every tensor comes from the file
        model = TangoFluxModel(config, text_encoder)
    rest = {k: v for k, v in weights.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    result = model.load_state_dict(rest, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith(TEXT_ENCODER_PREFIX)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{paths.weights} does not fit {paths.config}: missing {_key_summary(missing)}, "
            f"unexpected {_key_summary(result.unexpected_keys)}"
        )

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' Oobleck uses the old weight_norm
        vae = AutoencoderOobleck(**(config.vae_config or {}))
    try:
        vae.load_state_dict(load_file(str(paths.vae), device="cpu"), strict=True, assign=True)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{paths.vae} does not fit the VAE config in {paths.config}: {reason}") from exc

    on_meta = [n for n, t in [*model.named_parameters(), *vae.named_parameters()] if t.device.type == "meta"]
    if on_meta:
        raise CheckpointError(f"{paths.root}: tensors left without weights: {_key_summary(on_meta)}")
    return model, vae, tokenizer


def load_pipeline(
    model: str | os.PathLike[str] = OFFICIAL_REPO,
    *,
    text_encoder: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,  # None: float32
    vae_device: str | torch.device | None = None,
    vae_dtype: torch.dtype | None = None,  # None: float32
    text_device: str | torch.device | None = None,
    cache_size: int = 256,
    allow_download: bool = False,
    cache_dir: str | Path | None = None,
    tiny_dir: str | Path | None = None,
) -> TangoFluxPipeline:
    """A ready pipeline from a checkpoint folder, a hub id (cache only by default) or `tiny`.

    >>> pipe = load_pipeline("tiny")                                       # doctest: +SKIP
    >>> pipe = load_pipeline(device="cuda", dtype=torch.bfloat16)          # doctest: +SKIP
    """
    import torch

    from instrument.generator.pipeline import TangoFluxPipeline

    paths = resolve_checkpoint(
        model,
        text_encoder=text_encoder,
        allow_download=allow_download,
        cache_dir=cache_dir,
        tiny_dir=tiny_dir,
    )
    tangoflux, vae, tokenizer = load_model(paths)
    return TangoFluxPipeline(
        tangoflux,
        vae,
        tokenizer,
        device=device,
        dtype=torch.float32 if dtype is None else dtype,
        vae_device=vae_device,
        vae_dtype=torch.float32 if vae_dtype is None else vae_dtype,
        text_device=text_device,
        cache_size=cache_size,
        name=TINY if os.fspath(model) == TINY else os.fspath(model),
    )
