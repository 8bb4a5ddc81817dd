"""Our model code (`flux.py`, `t5.py`, `oobleck.py`) against diffusers' and transformers' modules
with the same weights, and the worker's load path importing neither of those libraries.

The pipeline as a whole is held to upstream TangoFlux in test_pipeline_parity.py; these compare
module by module, so a difference shows where it is. fp32 on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instrument.generator.loading import load_text_encoder, read_config
from instrument.generator.model import flux_transformer
from instrument.generator.oobleck import OobleckConfig, load_decoder
from instrument.generator.t5 import Tokenizer
from instrument.generator.tiny import FULL_CONFIG, TEXT_ENCODER_DIR
from tests.generator_fixtures import PROMPTS, flux_pair, rel_error, t5_pair, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # relative error, fp32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


def test_flux_transformer_equals_diffusers_on_a_wider_config() -> None:
    """Two heads, two double and two single blocks, a padded text mask and half the batch's rows
    masked differently: every branch of the block code, against diffusers with the same weights."""
    ref, ours = flux_pair(1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=128,
                          num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=48)
    g = torch.Generator().manual_seed(2)
    b, t, seq = 4, 9, 40
    text_mask = torch.ones(b, t, dtype=torch.bool)
    text_mask[0, 5:] = False
    text_mask[2, 2:] = False
    mask = torch.cat([text_mask, torch.ones(b, seq, dtype=torch.bool)], 1)[:, None, None, :]
    inputs = dict(hidden_states=torch.randn(b, seq, 64, generator=g),
                  encoder_hidden_states=torch.randn(b, t, 48, generator=g),
                  pooled_projections=torch.randn(b, 48, generator=g),
                  timestep=torch.rand(b, generator=g),
                  txt_ids=torch.zeros(t, 3), img_ids=torch.arange(seq)[:, None].repeat(1, 3).float(),
                  joint_attention_kwargs={"attention_mask": mask}, return_dict=False)
    with torch.no_grad():
        want = ref(**inputs)[0]
        got = ours(**inputs)[0]
    assert got.shape == want.shape == (b, seq, 64)
    assert rel_error(got, want) < TOLERANCE


def test_the_full_size_transformer_has_upstreams_parameter_names_and_shapes() -> None:
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel

    with torch.device("meta"):
        ours = flux_transformer(FULL_CONFIG)
        ref = FluxTransformer2DModel(in_channels=64, num_layers=6, num_single_layers=18, attention_head_dim=128,
                                     num_attention_heads=8, joint_attention_dim=1024, pooled_projection_dim=1024)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_t5_encoder_equals_transformers(checkpoint: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    folder = checkpoint / TEXT_ENCODER_DIR
    ref = T5EncoderModel.from_pretrained(folder).eval()
    ours, tokenizer = load_text_encoder(folder, {}, checkpoint / "tangoflux.safetensors")
    hf = AutoTokenizer.from_pretrained(folder)
    texts = [*PROMPTS.values(), ""]
    for text in texts:
        assert tokenizer(text).input_ids == hf(text).input_ids, text
    batch = hf(texts, max_length=64, padding="max_length", truncation=True, return_tensors="pt")
    mine = tokenizer(texts, max_length=64, padding="max_length", truncation=True, return_tensors="pt")
    assert torch.equal(mine.input_ids, batch.input_ids) and torch.equal(mine.attention_mask, batch.attention_mask)
    with torch.no_grad():
        want = ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]
        got = ours(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]
    assert rel_error(got, want) < TOLERANCE


def test_t5_relative_buckets_reach_past_max_distance() -> None:
    """Sequences longer than the exact range use the log buckets: 300 tokens against transformers."""
    ref, ours = t5_pair(3, vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu")
    ids = torch.randint(2, 50, (2, 300), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 250:] = 0
    with torch.no_grad():
        assert rel_error(ours(ids, mask)[0], ref(input_ids=ids, attention_mask=mask)[0]) < TOLERANCE


def test_tokenizer_truncates_keeping_the_end_of_sequence(checkpoint: Path) -> None:
    tok = Tokenizer(checkpoint / TEXT_ENCODER_DIR / "tokenizer.json")
    ids = tok(["rain " * 100], max_length=8, padding="max_length", truncation=True).input_ids[0]
    assert len(ids) == 8 and ids[-1] == tok.eos_id
    short = tok(["rain"], max_length=8, padding="max_length", truncation=True)
    assert short.input_ids[0][-1] == tok.pad_id and short.attention_mask[0].count(1) == len(tok.tokenize("rain"))


def test_oobleck_decoder_equals_diffusers(checkpoint: Path) -> None:
    from diffusers.models.autoencoders.autoencoder_oobleck import AutoencoderOobleck

    config = read_config(checkpoint / "config.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = AutoencoderOobleck(**(config.vae_config or {})).eval()
    state = load_file(str(checkpoint / "vae.safetensors"))
    ref.load_state_dict(state)
    ours = load_decoder(OobleckConfig.from_dict(config.vae_config, "config.json"), state, "vae.safetensors").eval()
    z = torch.randn(1, 64, 23, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode(z).sample
    assert got.shape == want.shape == (1, 2, 23 * 2048)
    assert rel_error(got, want) < TOLERANCE


def test_a_vae_config_key_the_decoder_does_not_take_is_one_clear_error() -> None:
    from instrument.generator.errors import CheckpointError

    with pytest.raises(CheckpointError, match="vae_config has keys the Oobleck VAE does not take: colour"):
        OobleckConfig.from_dict({"colour": 1}, "config.json")


def test_text_encoder_weights_missing_everywhere_name_the_keys(checkpoint: Path, tmp_path: Path) -> None:
    from instrument.generator.errors import CheckpointError

    folder = tmp_path / "te"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((checkpoint / TEXT_ENCODER_DIR / name).read_bytes())
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_text_encoder(folder, {}, checkpoint / "tangoflux.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "feed_forward_proj": "gated-silu"}))
    with pytest.raises(CheckpointError, match="feed_forward_proj='gated-silu'"):
        load_text_encoder(folder, {}, checkpoint / "tangoflux.safetensors")


def test_loading_a_pipeline_imports_neither_diffusers_nor_transformers(checkpoint: Path) -> None:
    """The worker's start: importing them took 5-11 s of a warm CUDA start (README, First sound);
    torch._dynamo and sympy (3-4 s more there) come only with a compile, not with the load or a
    clip (a random init on meta tensors imported them: `empty_modules`)."""
    code = ("import sys; from instrument.generator.loading import load_pipeline; "
            f"p = load_pipeline({str(checkpoint)!r}); p.generate('rain', steps=1, duration=1.0); "
            "print(sorted(m for m in ('diffusers', 'transformers', 'sklearn', 'peft', 'torch._dynamo', 'sympy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_empty_modules_builds_on_meta_and_puts_every_init_back() -> None:
    from instrument.generator.model import StableAudioPositionalEmbedding, empty_modules

    before = torch.nn.Linear.reset_parameters
    with empty_modules():
        meta = torch.nn.Linear(4, 3)
        fourier = StableAudioPositionalEmbedding(8)
    assert meta.weight.device.type == "meta" and fourier.weights.device.type == "meta"
    assert torch.nn.Linear.reset_parameters is before
    torch.manual_seed(0)
    real = torch.nn.Linear(4, 3)  # initialised again: not all zeros, within kaiming's bound
    assert real.weight.abs().max() > 0 and real.weight.abs().max() <= 0.5
    assert StableAudioPositionalEmbedding(8).weights.std() > 0
