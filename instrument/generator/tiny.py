"""A tiny random-weight TangoFlux, saved in the official checkpoint layout, for tests and offline demos.

`build_tiny_checkpoint(dir)` writes:

    dir/config.json              upstream's keys; text_encoder_name "text_encoder"; our "vae_config"
    dir/tangoflux.safetensors    text_encoder.*, fc.*, duration_emebdder.*, transformer.* (upstream's keys)
    dir/vae.safetensors          a narrow AutoencoderOobleck (same strides: 44.1 kHz, 2048 samples per latent)
    dir/text_encoder/            a 2-layer T5 encoder and an offline Unigram tokenizer (no downloads)

The real classes at toy size: 1 double + 1 single Flux block with one 128-wide head, T5 d_model 32.
The sounds are noise and mean nothing; the shapes, the code path and the cost structure are real.
Same seed -> the same bytes: every tensor is drawn from its own generator, seeded by the seed and
its key, so the result does not depend on the order in which the libraries build their modules.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_oobleck import AutoencoderOobleck
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from instrument.generator.model import TangoFluxConfig, TangoFluxModel

TEXT_ENCODER_DIR = "text_encoder"

TINY_VAE_CONFIG: dict[str, Any] = {
    "encoder_hidden_size": 4,
    "downsampling_ratios": [2, 4, 4, 8, 8],  # as the real VAE: 2048 samples per latent
    "channel_multiples": [1, 1, 1, 1, 1],
    "decoder_channels": 4,
    "decoder_input_channels": 64,
    "audio_channels": 2,
    "sampling_rate": 44100,
}

TINY_CONFIG = TangoFluxConfig(
    num_layers=1,
    num_single_layers=1,
    in_channels=64,
    attention_head_dim=128,  # fixed by Flux's RoPE axes (16, 56, 56)
    joint_attention_dim=32,  # = the tiny T5's d_model
    num_attention_heads=1,
    audio_seq_len=645,
    max_duration=30.0,
    text_encoder_name=TEXT_ENCODER_DIR,
    vae_config=TINY_VAE_CONFIG,
)

# Words the tiny tokenizer knows whole; anything else falls back to single characters, then <unk>.
_WORD_TEXT = """
a an the and or of in on at to from with without by for over under near into through across between
is are was were be been it its this that these those there here very more less much many some few
rain raindrops drizzle storm thunder lightning wind breeze gust gale hail snow sleet fog mist cloud
sea ocean waves wave surf tide shore beach harbor river stream creek brook waterfall water drip
drops splash bubbles bubbling underwater lake pond puddle ice cracking fire crackling campfire
embers flame forest woods jungle trees tree leaves leaf branches grass meadow field garden desert
cave mountain valley canyon night day morning evening dawn dusk midnight summer winter autumn spring
birds bird birdsong chirping singing song crow owl hooting seagulls gulls ducks geese frogs frog
crickets insects bees buzzing cicadas wolves wolf howling dogs dog barking cat cats meowing purring
horse horses galloping hooves cows cattle sheep goats whale whales dolphins monkeys lion roaring
city street traffic cars car engine motor truck bus train trains railway tram subway station airport
airplane plane helicopter jet boat ship horn horns siren sirens bells bell church clock ticking
chimes footsteps steps walking running crowd people voices voice talking whispering laughing
children playing market cafe restaurant kitchen cooking sizzling frying boiling kettle cups dishes
clinking door creaking knocking typing keyboard office machine machines factory industrial hum
humming drone buzz noise static radio distant close far loud quiet soft gentle heavy light deep low
high bright dark warm cold calm peaceful eerie dreamy ambient atmospheric cinematic ethereal
haunting mysterious slow fast steady rhythmic evolving pulsing swelling fading rising falling
echoing reverberant metallic wooden glass hollow resonant muffled crisp rumble rumbling roar rushing
flowing trickling whoosh hiss hissing crack snap pop thump thud clatter rattle scraping rustling
swaying howl music melody harmony chord chords drone pad pads synth synthesizer piano guitar strings
violin cello flute choir organ drums drum percussion bass kick snare cymbals gong marimba harp bowl
bowls electronic techno house ambient jazz orchestral lofi beat beats tempo groove loop texture
textures long short tiny huge vast wide empty open small large old new ancient futuristic space
alien sci-fi robot robots spaceship laser underwater cavern tunnel hall cathedral room studio
recording field sound sounds audio noise soundscape background foreground layer layers slowly
quickly together while after before during against around behind above below beneath
"""
_WORDS = _WORD_TEXT.split()
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&%+*=#@"


def tiny_tokenizer() -> T5Tokenizer:
    """An offline T5 (Unigram) tokenizer over a fixed small vocabulary: <pad>=0, </s>=1, <unk>=2."""
    words = list(dict.fromkeys(_WORDS))  # dedupe, keep order
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -6.0)]
    vocab += [(f"▁{w}", -8.0 - i * 1e-3) for i, w in enumerate(words)]
    vocab += [(f"▁{c}", -12.0) for c in _CHARS] + [(c, -12.5) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)  # Flan-T5's model_max_length


def tiny_t5_config(vocab_size: int) -> T5Config:
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "d_model": TINY_CONFIG.joint_attention_dim,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_decoder_layers": 0,
        "num_heads": 4,
        "feed_forward_proj": "gated-gelu",  # as Flan-T5
        "dropout_rate": 0.0,
        "tie_word_embeddings": False,
        "use_cache": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
    return T5Config(**kwargs)


def _key_seed(seed: int, key: str) -> int:
    return (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (2**63)


def _draw(key: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """A deterministic value for one parameter, scaled so activations stay near unit size."""
    g = torch.Generator("cpu").manual_seed(_key_seed(seed, key))
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        return 0.02 * x
    if leaf in ("alpha", "beta"):  # Snake, log-scale: exp(~0) = 1
        return 0.1 * x
    if leaf == "weight_g":  # weight norm: each output filter's norm
        # Small residual branches keep the random decoder near-linear: at full size, a random Snake
        # stack amplifies relative input errors ~100x, which would swamp parity checks of the audio.
        return (0.3 if ".res_unit" in key else 1.0) * (1.0 + 0.05 * x)
    if leaf == "weights":  # Fourier frequencies of the duration embedder (upstream: randn)
        return x
    if "norm" in key and len(shape) == 1:
        return 1.0 + 0.1 * x
    if "shared" in key or "embed_tokens" in key:
        return x
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return x / math.sqrt(fan_in)


def _fill(module: torch.nn.Module, seed: int, prefix: str) -> dict[str, torch.Tensor]:
    """Deterministic values for a module's state dict; tied tensors get one value."""
    state = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    first_key_of: dict[tuple[int, tuple[int, ...]], str] = {}
    for key in sorted(state):
        t = state[key]
        tie = (t.data_ptr(), tuple(t.shape)) if t.device.type != "meta" else None
        if tie is not None and tie in first_key_of:
            out[key] = out[first_key_of[tie]]
            continue
        out[key] = _draw(prefix + key, t.shape, seed)
        if tie is not None:
            first_key_of[tie] = key
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(
        {k: v.contiguous().clone() for k, v in sorted(tensors.items())}, str(path), metadata={"format": "pt"}
    )


def full_t5_config(vocab_size: int) -> T5Config:
    """Flan-T5-large's encoder shape (d_model 1024, 24 layers, 16 heads, gated-GELU)."""
    cfg = tiny_t5_config(vocab_size)
    cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads = 1024, 64, 2816, 24, 16
    return cfg


# The official architecture (515M transformer + Oobleck VAE, T5-large encoder) with random weights:
# the real compute cost for benchmarks, never a claim about sound.
FULL_CONFIG = TangoFluxConfig(text_encoder_name=TEXT_ENCODER_DIR)


def build_tiny_checkpoint(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random-weight TangoFlux checkpoint (official layout plus a local text encoder).

    Returns the directory. Loads with `load_pipeline(directory)` and with upstream's classes.
    """
    return build_random_checkpoint(directory, TINY_CONFIG, tiny_t5_config, seed)


def build_random_checkpoint(
    directory: str | os.PathLike[str], config: TangoFluxConfig, t5_config: Any, seed: int = 0
) -> Path:
    """A random-weight checkpoint of any size; `t5_config(vocab_size)` gives the text encoder's shape."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)

    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(t5_config(len(tokenizer)))  # on the CPU, so _fill sees the tied weights
    text_encoder.load_state_dict(_fill(text_encoder, seed, "text_encoder."))
    text_encoder.eval()
    te_dir = root / TEXT_ENCODER_DIR
    text_encoder.save_pretrained(te_dir, safe_serialization=True)
    tokenizer.save_pretrained(te_dir)

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' Oobleck uses the old weight_norm
        model = TangoFluxModel(config, text_encoder)
        vae = AutoencoderOobleck(**(config.vae_config or {}))
    weights = {
        f"text_encoder.{k}": v
        for k, v in text_encoder.state_dict().items()
        if k != "encoder.embed_tokens.weight"  # tied to shared.weight; upstream's checkpoint lacks it too
    }
    for name in ("fc", "duration_emebdder", "transformer"):
        weights.update({f"{name}.{k}": v for k, v in _fill(getattr(model, name), seed, f"{name}.").items()})
    _save(weights, root / "tangoflux.safetensors")
    _save(_fill(vae, seed, "vae."), root / "vae.safetensors")
    (root / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return root


def ensure_tiny_checkpoint(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """`directory` holding a tiny checkpoint, built once (into a temporary sibling, then renamed)."""
    root = Path(directory)
    if (root / "config.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        build_tiny_checkpoint(tmp, seed)
        try:
            tmp.rename(root)
        except OSError:  # another process built it first
            if not (root / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
