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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instrument.generator.checkpoint import TangoFluxConfig
from instrument.generator.download import OFFICIAL_REPO
from instrument.generator.errors import CheckpointError, ModelNotFoundError

if TYPE_CHECKING:  # torch takes seconds to import: only where a model loads
    import torch

    from instrument.generator.model import TangoFluxModel
    from instrument.generator.oobleck import OobleckVAE
    from instrument.generator.pipeline import TangoFluxPipeline

TINY = "tiny"
TINY_VERSION = 1  # bump when tiny.py changes what it builds, so cached tiny checkpoints are rebuilt
CHECKPOINT_FILES = ("config.json", "tangoflux.safetensors", "vae.safetensors")
TEXT_ENCODER_PREFIX = "text_encoder."
TIED_EMBEDDING = "encoder.embed_tokens.weight"  # T5's input embedding, tied to shared.weight
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


def load_text_encoder(folder: Path, overrides: dict[str, torch.Tensor], source: Path, device: str = "cpu"
                      ) -> tuple[torch.nn.Module, Any]:
    """(T5 encoder, tokenizer) from a transformers T5 folder, `overrides` (TangoFlux's `text_encoder.*`
    weights, prefix removed) on top of the folder's own `model.safetensors`; ours (`t5.py`), which
    imports no transformers. A folder without `tokenizer.json` gets transformers' tokenizer."""
    from safetensors import safe_open

    from instrument.generator.model import empty_modules
    from instrument.generator.t5 import T5Config, T5Encoder, Tokenizer

    config = T5Config.read(folder / "config.json")
    if (folder / "tokenizer.json").is_file():
        tokenizer: Any = Tokenizer(folder / "tokenizer.json")
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    with empty_modules():
        encoder = T5Encoder(config)
    expected = set(encoder.state_dict()) - {TIED_EMBEDDING}  # the same tensor as shared.weight
    state = {("shared.weight" if k == TIED_EMBEDDING else k): v for k, v in overrides.items()}
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise CheckpointError(
            f"{source}: text_encoder keys the T5 in {folder} does not have: {_key_summary(unexpected)}")
    need = expected - set(state)
    if need:  # from the folder's own weights (TangoFlux's file usually holds them all)
        own = folder / "model.safetensors"
        if not own.is_file():
            raise CheckpointError(f"{folder}: no model.safetensors, and {source} lacks "
                                  f"{_key_summary(sorted(need))} of the text encoder")
        with safe_open(str(own), framework="pt", device=device) as f:
            keys = set(f.keys())
            for key in sorted(need):
                name = TIED_EMBEDDING if key == "shared.weight" and key not in keys else key
                if name in keys:
                    state[key] = f.get_tensor(name)
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(f"{folder}: text encoder weights missing: {_key_summary(missing)}")
    state[TIED_EMBEDDING] = state["shared.weight"]
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.eval(), tokenizer


def load_model(paths: CheckpointPaths, device: str | torch.device = "cpu") -> tuple[TangoFluxModel, OobleckVAE, Any]:
    """(model, vae, tokenizer) on `device`, in the checkpoint's dtypes, weights checked key by key.
    Our modules only (`flux.py`, `t5.py`, `oobleck.py`): no diffusers or transformers import. On a
    GPU the tensors go there as they are read (and are converted there): no CPU copy of the model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from instrument.generator.model import TangoFluxModel, empty_modules
    from instrument.generator.oobleck import OobleckConfig, load_decoder

    device = str(device)
    config = read_config(paths.config)
    weights = load_file(str(paths.weights), device=device)
    te_weights = {
        k[len(TEXT_ENCODER_PREFIX) :]: v for k, v in weights.items() if k.startswith(TEXT_ENCODER_PREFIX)
    }
    text_encoder, tokenizer = load_text_encoder(paths.text_encoder, te_weights, paths.weights, device)

    with empty_modules():  # every tensor comes from the file
        model = TangoFluxModel(config, text_encoder)
    rest = {k: v for k, v in weights.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    result = model.load_state_dict(rest, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith(TEXT_ENCODER_PREFIX)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{paths.weights} does not fit {paths.config}: missing {_key_summary(missing)}, "
            f"unexpected {_key_summary(result.unexpected_keys)}"
        )

    vae_config = OobleckConfig.from_dict(config.vae_config, str(paths.config))
    with safe_open(str(paths.vae), framework="pt", device=device) as f:  # the decoder's tensors only
        vae_state = {k: f.get_tensor(k) for k in f.keys() if k.startswith("decoder.")}  # noqa: SIM118
    vae = load_decoder(vae_config, vae_state, str(paths.vae))

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
    warm = _CudaWarmUp(device)  # CUDA's own start-up (context, cuBLAS, cuDNN) while the weights are read
    try:
        tangoflux, vae, tokenizer = load_model(paths, device=_load_device(device, vae_device, text_device))
    finally:
        warm.join()
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


def _load_device(device: Any, vae_device: Any, text_device: Any) -> str:
    """Where the weights are read to: the GPU when every part runs there, else the CPU."""
    devices = {str(d) for d in (device, vae_device or device, text_device or device)}
    one = devices.pop() if len(devices) == 1 else "cpu"
    return one if one.startswith("cuda") else "cpu"


class _CudaWarmUp:
    """On CUDA, a thread that starts the context and the libraries the first clip needs (cuBLAS in
    fp32 and bf16, cuDNN's fp16 convolutions, attention) while the main thread reads the weights,
    instead of during the first clip (not measured apart: bench_first_sound.py times the load and
    the first clip together with the other start-up changes). Any error is left for the
    real work to meet: nothing here is needed for correctness."""

    def __init__(self, device: Any) -> None:
        import threading

        self.thread = None
        if str(device).startswith("cuda"):
            self.thread = threading.Thread(target=self._run, args=(str(device),), name="endless-cuda-warmup",
                                           daemon=True)
            self.thread.start()

    @staticmethod
    def _run(device: str) -> None:
        import torch
        import torch.nn.functional as F

        try:
            x = torch.randn(256, 256, device=device)
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                y = x.to(dtype)
                _ = y @ y
            h = x.to(torch.float16)[None, :, :64]  # (1, 256, 64)
            _ = F.conv1d(h, torch.randn(64, 256, 7, device=device, dtype=torch.float16), padding=3)
            q = torch.randn(2, 2, 80, 128, device=device, dtype=torch.bfloat16)
            _ = F.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(2, 1, 1, 80, dtype=torch.bool,
                                                                                 device=device))
            torch.cuda.synchronize(device)
        except Exception:  # noqa: BLE001, S110 (the real work reports its own errors)
            pass

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
