"""Helpers shared by the generator tests: the tiny checkpoint (built once per session) and upstream.

Upstream is the `tangoflux` 0.1.0 package, installed without its pinned dependencies:
    .venv/bin/pip install --no-deps tangoflux==0.1.0
Its modules import `datasets` at the top (unused for inference), so a stub stands in for it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from instrument.generator.tiny import build_tiny_checkpoint

UPSTREAM_INSTALL = ".venv/bin/pip install --no-deps tangoflux==0.1.0"

_WORDS = ["rain", "thunder", "wind", "sea", "waves", "birds", "forest", "night", "city", "traffic"]
PROMPTS = {
    "1 word": "rain",
    "10 words": " ".join(_WORDS),
    "40 words": " ".join((_WORDS * 4)[:40]),
    "unknown words": "Xylophone on a rainy Sunday?!",  # falls back to characters
}

_tiny: dict[int, Path] = {}


def tiny_checkpoint(factory: pytest.TempPathFactory, seed: int = 0) -> Path:
    """The tiny checkpoint for `seed`, built once per test session."""
    if seed not in _tiny:
        _tiny[seed] = build_tiny_checkpoint(factory.mktemp(f"tiny-seed{seed}"), seed=seed)
    return _tiny[seed]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    a64, b64 = a.double(), b.double()
    return float((a64 - b64).norm() / b64.norm())


def import_upstream() -> types.ModuleType:
    """The `tangoflux` package, with a stub for `datasets` when that is not installed."""
    if "datasets" not in sys.modules and importlib.util.find_spec("datasets") is None:
        stub = types.ModuleType("datasets")
        stub.load_dataset = None  # type: ignore[attr-defined]
        stub.Audio = None  # type: ignore[attr-defined]
        sys.modules["datasets"] = stub
    try:
        return importlib.import_module("tangoflux")
    except ImportError as exc:
        pytest.fail(f"the upstream reference is not installed ({exc}): run `{UPSTREAM_INSTALL}`")


def upstream_model(checkpoint: Path) -> Any:
    """Upstream's `TangoFlux` built from the checkpoint's config.json and loaded as upstream loads it."""
    from tangoflux.model import TangoFlux

    config = json.loads((checkpoint / "config.json").read_text())
    config["text_encoder_name"] = str(checkpoint / config["text_encoder_name"])
    model = TangoFlux(config)
    result = model.load_state_dict(load_file(str(checkpoint / "tangoflux.safetensors")), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys == [
        "text_encoder.encoder.embed_tokens.weight"
    ]  # as upstream's own comment says
    return model.eval()


def upstream_inference(checkpoint: Path) -> Any:
    """Upstream's `TangoFluxInference` on the tiny checkpoint: its hub download pointed at the folder,
    its `AutoencoderOobleck()` given the tiny VAE config, the working directory at the checkpoint (its
    config names the text encoder by a relative path)."""
    tangoflux = import_upstream()
    from diffusers import AutoencoderOobleck

    vae_config = json.loads((checkpoint / "config.json").read_text())["vae_config"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tangoflux, "snapshot_download", lambda repo_id: str(checkpoint))
        mp.setattr(tangoflux, "AutoencoderOobleck", lambda: AutoencoderOobleck(**vae_config))
        mp.chdir(checkpoint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # diffusers' Oobleck uses the old weight_norm
            inference = tangoflux.TangoFluxInference(name="tiny", device="cpu")
    inference.model.eval()
    inference.vae.eval()
    return inference


# -- our modules and the libraries', with the same weights (test_nets_parity, bench_nets_parity) ----
def seeded_state(module: torch.nn.Module, seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Random values for a module's state dict: matrices ~ scale / sqrt(fan-in), vectors ~ 0.1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        x = torch.randn(v.shape, generator=g)
        out[k] = x * (scale / max(1, v[0].numel()) ** 0.5) if v.ndim > 1 else 0.1 * x
    return out


def flux_pair(seed: int, **kw: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(diffusers' FluxTransformer2DModel, ours) of the same shape with the same weights, eval."""
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel

    from instrument.generator.flux import FluxTransformer

    ref = FluxTransformer2DModel(**kw, guidance_embeds=False).eval()
    ours = FluxTransformer(**kw).eval()
    state = seeded_state(ref, seed)
    ref.load_state_dict(state)
    ours.load_state_dict(state)  # strict: the same names, nothing left over
    return ref, ours


def t5_pair(seed: int, **cfg: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers' T5EncoderModel, ours) of the same config with the same weights, eval."""
    from transformers import T5Config as HFConfig
    from transformers import T5EncoderModel

    from instrument.generator.t5 import T5Config, T5Encoder

    ref = T5EncoderModel(HFConfig(**cfg, dropout_rate=0.0)).eval()
    ours = T5Encoder(T5Config(**cfg)).eval()
    state = seeded_state(ref, seed)
    ref.load_state_dict(state)
    ours.load_state_dict(state)
    return ref, ours
