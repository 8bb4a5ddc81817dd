"""Our TangoFlux pipeline against upstream `tangoflux` 0.1.0, on a tiny random-weight checkpoint (fp32, CPU).

Ours pads the text to 64 tokens and masks the padding in the joint attention; upstream does not pad a
single prompt at all. Both get the same initial noise (the same seed), and must agree to 1e-5
relative error on the final latents and on the decoded audio.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from instrument.clips import Clip
from instrument.generator.conditioning import MAX_TEXT_TOKENS
from instrument.generator.errors import Cancelled, CheckpointError, ModelNotFoundError
from instrument.generator.loading import load_pipeline, resolve_checkpoint
from instrument.generator.model import TangoFluxModel
from instrument.generator.pipeline import (
    ClipRequest,
    TangoFluxPipeline,
    flow_schedule,
    initial_noise,
)
from instrument.generator.tiny import build_tiny_checkpoint
from tests.generator_fixtures import (
    PROMPTS,
    import_upstream,
    rel_error,
    tiny_checkpoint,
    upstream_inference,
    upstream_model,
)

TOLERANCE = 1e-5  # relative error, fp32 on the CPU; measured ~2e-7 to 7e-7
STEPS = 4
GUIDANCE = 4.5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> TangoFluxPipeline:
    return load_pipeline(checkpoint)


@pytest.fixture(scope="module")
def upstream(checkpoint: Path) -> Any:
    import_upstream()
    return upstream_model(checkpoint)


def upstream_latents(
    upstream: Any, prompt: str, seed: int, duration: float, steps: int = STEPS
) -> torch.Tensor:
    torch.manual_seed(seed)  # upstream draws its noise from the global generator
    return upstream.inference_flow(
        prompt, num_inference_steps=steps, guidance_scale=GUIDANCE, duration=duration, disable_progress=True
    )


# --- pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 25, 50])
def test_schedule_equals_upstreams_scheduler(steps: int) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps))  # upstream's call
    timesteps, sigmas = flow_schedule(steps)
    assert torch.equal(timesteps, scheduler.timesteps)
    assert torch.equal(sigmas, scheduler.sigmas)


def test_noise_equals_upstreams_global_seed() -> None:
    torch.manual_seed(1234)
    expected = torch.randn(1, 645, 64)  # upstream: torch.randn(num_samples_per_prompt, 645, 64)
    assert torch.equal(initial_noise([1234], 645), expected)


def test_state_dict_keys_are_upstreams(checkpoint: Path, pipe: TangoFluxPipeline, upstream: Any) -> None:
    assert set(pipe.model.state_dict()) == set(upstream.state_dict())
    assert isinstance(pipe.model, TangoFluxModel)


def test_text_truncates_to_64_tokens_like_upstreams_encode_text(
    pipe: TangoFluxPipeline, upstream: Any
) -> None:
    prompt = " ".join(["rain"] * 100)
    cond = pipe.condition(prompt)
    assert cond.truncated and cond.num_tokens == MAX_TEXT_TOKENS
    hidden, mask = upstream.encode_text([prompt])  # upstream's 64-token path (its CFG path allows 512)
    assert mask.shape == (1, MAX_TEXT_TOKENS) and bool(mask.all())
    assert rel_error(cond.hidden, hidden[0]) <= TOLERANCE


# --- latents ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROMPTS))
def test_latents_match_upstream(name: str, pipe: TangoFluxPipeline, upstream: Any) -> None:
    prompt = PROMPTS[name]
    assert pipe.condition(prompt).num_tokens < MAX_TEXT_TOKENS  # padded on our side, not upstream's
    expected = upstream_latents(upstream, prompt, seed=7, duration=10)
    got = pipe.denoise([ClipRequest(prompt, seed=7, duration=10.0, guidance=GUIDANCE)], STEPS)
    assert got.shape == expected.shape == (1, 645, 64)
    assert rel_error(got, expected) <= TOLERANCE


def test_batched_requests_match_single_upstream_calls(pipe: TangoFluxPipeline, upstream: Any) -> None:
    prompts = [PROMPTS["40 words"], PROMPTS["1 word"], PROMPTS["10 words"]]
    durations = [10.0, 3.5, 30.0]
    pairs = list(enumerate(zip(prompts, durations, strict=True)))
    requests = [ClipRequest(p, seed=100 + i, duration=d, guidance=GUIDANCE) for i, (p, d) in pairs]
    got = pipe.denoise(requests, STEPS)  # one loop, batch 6 (cond + uncond per request)
    for i, (p, d) in pairs:
        assert rel_error(got[i : i + 1], upstream_latents(upstream, p, seed=100 + i, duration=d)) <= TOLERANCE


def test_padding_without_the_mask_would_not_match(pipe: TangoFluxPipeline, upstream: Any) -> None:
    """The control: attending to the 64-token padding moves the result far from upstream's."""
    prompt = PROMPTS["10 words"]
    transformer = pipe.model.transformer
    forward = transformer.forward

    def unmasked(*args: Any, **kwargs: Any) -> Any:
        kwargs["joint_attention_kwargs"] = None
        return forward(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformer, "forward", unmasked)
        got = pipe.denoise([ClipRequest(prompt, seed=7)], STEPS)
    assert rel_error(got, upstream_latents(upstream, prompt, seed=7, duration=10)) > 1e-3


# --- audio --------------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [10, 7.5])
def test_generate_and_decode_match_upstream_inference(
    duration: float, checkpoint: Path, pipe: TangoFluxPipeline
) -> None:
    inference = upstream_inference(checkpoint)
    prompt = PROMPTS["10 words"]
    torch.manual_seed(3)
    expected = inference.generate(
        prompt, steps=STEPS, duration=duration, guidance_scale=GUIDANCE
    )  # (2, samples)
    made = pipe.generate(prompt, seed=3, steps=STEPS, guidance=GUIDANCE, duration=float(duration))
    clip = made.clip  # the one clip type: (frames, 2), where upstream gives (channels, samples)
    assert isinstance(clip, Clip) and clip.sample_rate == 44100
    assert clip.audio.dtype == np.float32 and clip.audio.T.shape == tuple(expected.shape)
    assert clip.audio.shape == (int(duration * 44100), 2)
    assert rel_error(torch.from_numpy(clip.audio.T), expected) <= TOLERANCE
    assert (clip.info.prompt, clip.info.seed, clip.info.steps, clip.info.guidance) == (prompt, 3, STEPS, GUIDANCE)

    # The VAE path alone, on identical latents.
    with torch.no_grad():
        reference = inference.vae.decode(made.latents[None].transpose(2, 1)).sample[0][
            :, : int(duration * 44100)
        ]
    decoded = pipe.decode(made.latents[None], [duration])[0]  # (frames, 2)
    assert rel_error(torch.from_numpy(decoded.T), reference) <= TOLERANCE


# --- reproducibility, progress, cancelling, validation ------------------------------------------


def test_same_seed_same_latents_other_seed_other_latents(pipe: TangoFluxPipeline) -> None:
    a = pipe.denoise([ClipRequest("rain", seed=5)], 3)
    b = pipe.denoise([ClipRequest("rain", seed=5)], 3)
    c = pipe.denoise([ClipRequest("rain", seed=6)], 3)
    assert torch.equal(a, b)
    assert rel_error(c, a) > 0.1


def test_a_request_does_not_depend_on_its_batch(pipe: TangoFluxPipeline) -> None:
    alone = pipe.denoise([ClipRequest("rain", seed=5)], 3)
    batched = pipe.denoise([ClipRequest("thunder", seed=1), ClipRequest("rain", seed=5)], 3)
    assert rel_error(batched[1:], alone) <= TOLERANCE


def test_progress_callback_and_cancel(pipe: TangoFluxPipeline) -> None:
    seen: list[tuple[int, int]] = []
    pipe.denoise([ClipRequest("rain")], 3, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    checks = iter([False, False, True])
    with pytest.raises(Cancelled, match="after 2 of 5 steps") as info:
        pipe.denoise([ClipRequest("rain")], 5, should_cancel=lambda: next(checks))
    assert (info.value.step, info.value.total) == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "steps", "message"),
    [
        ({}, 0, "steps=0"),
        ({"seed": -1}, 2, "seed=-1"),
        ({"duration": 0.0}, 2, "duration=0.0"),
        ({"duration": 31.0}, 2, "duration=31.0"),
        ({"duration": float("nan")}, 2, "duration=nan"),
        ({"guidance": -1.0}, 2, "guidance=-1.0"),
        ({"guidance": float("inf")}, 2, "guidance=inf"),
        ({"prompt": "rain:x"}, 2, "bad weight 'x'"),
    ],
)
def test_bad_arguments_raise_one_line(
    kwargs: dict[str, Any], steps: int, message: str, pipe: TangoFluxPipeline
) -> None:
    request = ClipRequest(**{"prompt": "rain", **kwargs})
    with pytest.raises(ValueError, match=message) as info:
        pipe.denoise([request], steps)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no requests"):
        pipe.denoise([], 2)


# --- the tiny checkpoint and loading ------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_checkpoint_is_deterministic(checkpoint: Path, tmp_path: Path) -> None:
    again = _files(build_tiny_checkpoint(tmp_path / "again", seed=0))
    assert again == _files(checkpoint)
    assert set(again) >= {
        "config.json",
        "tangoflux.safetensors",
        "vae.safetensors",
        "text_encoder/config.json",
    }
    other = _files(build_tiny_checkpoint(tmp_path / "other", seed=1))
    assert other["tangoflux.safetensors"] != again["tangoflux.safetensors"]


def test_missing_folder_names_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="--model-dir") as info:
        resolve_checkpoint(tmp_path / "nowhere")
    assert "--model tiny" in str(info.value)


def test_incomplete_folder_names_the_missing_file(checkpoint: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(checkpoint, partial)
    (partial / "vae.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing vae\.safetensors"):
        resolve_checkpoint(partial)


def test_hub_id_missing_from_cache_names_the_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_checkpoint("declare-lab/TangoFlux", cache_dir=tmp_path)
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "--model-dir" in message and "--model tiny" in message
    assert "\n" not in message


def test_hub_id_found_in_the_cache(checkpoint: Path, tmp_path: Path) -> None:
    """A Hugging Face cache laid out by hand: models--declare-lab--TangoFlux/snapshots/<rev>/..."""
    revision = "0" * 40
    repo = tmp_path / "models--declare-lab--TangoFlux"
    shutil.copytree(checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    paths = resolve_checkpoint("declare-lab/TangoFlux", cache_dir=tmp_path)
    assert paths.root == repo / "snapshots" / revision
    assert paths.text_encoder == paths.root / "text_encoder"


def test_tiny_is_built_once_and_loads(tmp_path: Path) -> None:
    first = resolve_checkpoint("tiny", tiny_dir=tmp_path / "tiny")
    second = resolve_checkpoint("tiny", tiny_dir=tmp_path / "tiny")
    assert first.root == second.root == tmp_path / "tiny"
    assert json.loads(first.config.read_text())["text_encoder_name"] == "text_encoder"
