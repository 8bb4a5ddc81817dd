"""Core ML: converting the tiny transformer (on Linux), the package's spec, determinism, the wrapper's
numerics in PyTorch, the runtime glue and parity gate (with a PyTorch stand-in for Core ML), and the
converter patches. Tests that need Core ML itself skip off macOS, saying so.

A full-size conversion is not run here (minutes, ~GBs): see docs/coreml.md for its measurements.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import sys
import textwrap
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from instrument.coreml import (
    BATCH,
    INPUTS,
    LATENT_CHANNELS,
    MANIFEST_AUTHOR,
    OUTPUT,
    TEXT_TOKENS,
    TIME_PROJ_DIM,
    coreml_status,
    default_package_path,
    package_name,
    read_manifest,
    shapes,
    target_supported,
)
from instrument.coreml.convert import convert_main, convert_transformer
from instrument.coreml.package import (
    ALLOWED_OPS,
    DATA_FILES,
    MAX_RANK,
    import_coremltools,
    inspect_package,
    package_problems,
    up_to_date,
)
from instrument.coreml.patches import (
    PATCH_DIR,
    Hunk,
    PatchError,
    SourcePatch,
    apply_hunks,
    check_patch,
    converter_patches,
    load_patches,
    parse_patch,
    prepare,
)
from instrument.coreml.runtime import (
    MAX_REL_ERROR,
    MIN_FINITE_RATIO,
    MIN_PSNR_DB,
    CoreMLTransformer,
    gate_calls,
    make_coreml_transformer,
    parity_gate,
    parity_metrics,
)
from instrument.coreml.traced import (
    TransformerForCoreML,
    load_transformer,
    pipeline_call,
    rope_tables,
    timestep_projection,
    transformer_fingerprint,
)
from instrument.generator.conditioning import MAX_TEXT_TOKENS
from instrument.generator.loading import load_pipeline
from instrument.generator.pipeline import ClipRequest, flow_schedule
from instrument.generator.tiny import TINY_CONFIG, build_tiny_checkpoint
from tests.generator_fixtures import tiny_checkpoint

log = logging.getLogger(__name__)
L = TINY_CONFIG.audio_seq_len
D = TINY_CONFIG.joint_attention_dim
ON_MAC = sys.platform == "darwin"
needs_mac = pytest.mark.skipif(not ON_MAC, reason="Core ML runs models only on macOS (predict() needs it)")


class TorchPredictor:
    """Stands in for Core ML's MLModel: runs the wrapper that the package was traced from, in PyTorch."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.module = module.to(dtype).eval()
        self.dtype = dtype
        self.batches: list[int] = []

    def predict(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert sorted(data) == sorted(INPUTS)
        assert all(v.dtype == np.float32 and v.shape[0] == BATCH for v in data.values())
        self.batches.append(BATCH)
        with torch.no_grad():
            out = self.module(*[torch.from_numpy(data[k]).to(self.dtype) for k in INPUTS])
        return {OUTPUT: out.float().numpy()}


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coremltools() -> Any:
    """coremltools, or a skip: it has no wheels for some platforms (Linux on ARM); pyproject.toml leaves
    it out there, and only the tests that convert or patch need it."""
    return pytest.importorskip("coremltools", reason="coremltools is not installed (no wheel for this platform?)")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def packages(ckpt: Path, tmp_path_factory: pytest.TempPathFactory, coremltools: Any) -> dict[str, Path]:
    """The tiny transformer converted once per target."""
    out = tmp_path_factory.mktemp("coreml")
    return {t: convert_transformer(ckpt, out / f"tiny-{t}.mlpackage", target=t, source_name="tiny")
            for t in ("macOS14", "macOS15")}


@pytest.fixture(scope="module")
def pipe(ckpt: Path) -> Any:
    return load_pipeline(ckpt)


@pytest.fixture
def wrapper(pipe: Any) -> TransformerForCoreML:
    return TransformerForCoreML(copy.deepcopy(pipe.model.transformer), L).eval()


@pytest.fixture
def swapped(pipe: Any) -> Iterator[Any]:
    """`pipe` with its transformer restored after the test."""
    original = pipe.model.transformer
    yield pipe
    pipe.model.transformer = original


def _pipeline_inputs(pipe: Any, prompts: tuple[str, ...] = ("rain", "wind over the sea at night")) -> dict[str, Any]:
    """One transformer call as the pipeline makes it (captured from a real 1-step run)."""
    return pipeline_call(pipe, [ClipRequest(p, seed=i) for i, p in enumerate(prompts)])


def _wrapper_feeds(kw: dict[str, Any]) -> list[torch.Tensor]:
    mask = kw["joint_attention_kwargs"]["attention_mask"]
    return [kw["hidden_states"], kw["encoder_hidden_states"], kw["pooled_projections"],
            timestep_projection(kw["timestep"]), mask.reshape(mask.shape[0], -1).float()]


# -- constants --------------------------------------------------------------------------------------
def test_shapes_agree_with_the_pipeline() -> None:
    assert TEXT_TOKENS == MAX_TEXT_TOKENS
    assert TINY_CONFIG.in_channels == LATENT_CHANNELS
    assert shapes(645, 1024)["key_mask"] == (2, 65 + 645)
    assert package_name("tiny") == "tiny" and package_name("declare-lab/TangoFlux") == "tangoflux"
    assert default_package_path("tiny", "macOS14").name == "tiny-macOS14.mlpackage"


# -- the converted package ----------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["macOS14", "macOS15"])
def test_package_spec(packages: dict[str, Path], target: str) -> None:
    report = inspect_package(packages[target])
    want = shapes(L, D)
    assert report.inputs == {name: (want[name], "FLOAT32") for name in INPUTS}
    assert list(report.inputs) == list(INPUTS)
    assert report.outputs == {OUTPUT: ((BATCH, L, LATENT_CHANNELS), "FLOAT32")}
    assert report.max_rank <= MAX_RANK
    assert set(report.ops) <= ALLOWED_OPS, sorted(set(report.ops) - ALLOWED_OPS)
    # fp16: every float weight and table, and all compute but the final cast of the output to fp32
    assert set(report.const_dtypes) == {"FLOAT16"}
    assert report.fp32_ops == (f"cast:{OUTPUT}",)
    assert set(report.compute_dtypes) == {"FLOAT16", "FLOAT32"} and report.compute_dtypes["FLOAT32"] == 1
    assert package_problems(report, L, D) == []
    if target == "macOS15":
        assert report.opset == "CoreML8" and report.ops["scaled_dot_product_attention"] == 2
    else:
        assert report.opset == "CoreML7" and "softmax" in report.ops and "scaled_dot_product_attention" not in report.ops
    log.info("%s: %s", target, report.ops)


@pytest.mark.parametrize("target", ["macOS14", "macOS15"])
def test_package_ops_are_core_ml_ops_of_its_target(packages: dict[str, Path], target: str) -> None:
    ct = import_coremltools()
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    deployment = getattr(ct.target, target)
    for op in inspect_package(packages[target]).ops:
        versions = SSAOpRegistry.core_ops.get(op, {})
        assert any(v <= deployment for v in versions), f"{op} is not a Core ML op for {target}"


def test_package_metadata_and_manifest(packages: dict[str, Path], ckpt: Path, pipe: Any) -> None:
    package = packages["macOS15"]
    report = inspect_package(package)
    meta = report.metadata
    assert meta["endless.source_model"] == "tiny"
    assert meta["endless.target"] == "macOS15"
    assert json.loads(meta["endless.shapes"])["hidden_states"] == [2, L, 64]
    assert set(json.loads(meta["endless.versions"])) >= {"coremltools", "torch", "diffusers", "numpy"}
    assert "com.github.apple.coremltools.conversion_date" not in meta  # a date breaks byte identity
    manifest = read_manifest(package)
    assert manifest is not None
    for f in DATA_FILES:
        assert manifest["files"][f] == hashlib.sha256((package / f).read_bytes()).hexdigest()
    assert manifest["source"]["sha256"]["tangoflux.safetensors"] == hashlib.sha256(
        (ckpt / "tangoflux.safetensors").read_bytes()).hexdigest()
    assert manifest["transformer_fingerprint"] == transformer_fingerprint(load_transformer(ckpt))
    assert manifest["transformer_fingerprint"] == transformer_fingerprint(pipe.model.transformer)  # what runtime checks
    assert manifest["patches"] == [p.name for p in load_patches()]
    items = json.loads((package / "Manifest.json").read_text())["itemInfoEntries"].values()
    assert {(i["author"], i["name"]) for i in items} == {
        ("com.apple.CoreML", "model.mlmodel"), ("com.apple.CoreML", "weights"), (MANIFEST_AUTHOR, "manifest.json")}


def _tree_hashes(package: Path) -> dict[str, str]:
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(package.rglob("*")) if p.is_file()}


def test_conversion_is_deterministic(packages: dict[str, Path], ckpt: Path, tmp_path: Path) -> None:
    again = convert_transformer(ckpt, tmp_path / "again.mlpackage", target="macOS15", source_name="tiny")
    first, second = _tree_hashes(packages["macOS15"]), _tree_hashes(again)
    weights = "Data/com.apple.CoreML/weights/weight.bin"
    assert first[weights] == second[weights]
    assert first == second  # every byte: spec, weights, manifests


def test_up_to_date_package_is_skipped(packages: dict[str, Path], ckpt: Path, caplog: pytest.LogCaptureFixture) -> None:
    package = packages["macOS14"]
    before = {f: (package / f).stat().st_mtime_ns for f in DATA_FILES}
    with caplog.at_level(logging.INFO, logger="instrument.coreml.convert"):
        assert convert_transformer(ckpt, package, target="macOS14", source_name="tiny") == package
    assert "up to date" in caplog.text
    assert {f: (package / f).stat().st_mtime_ns for f in DATA_FILES} == before
    manifest = read_manifest(package)
    assert manifest is not None
    wanted = {k: manifest[k] for k in ("format", "converter_version", "source", "target", "shapes")}
    assert up_to_date(package, wanted)
    assert not up_to_date(package, {**wanted, "converter_version": wanted["converter_version"] + 1})
    assert not up_to_date(package, {**wanted, "target": "macOS15"})
    assert not up_to_date(package, {**wanted, "shapes": shapes(644, D)})
    other = copy.deepcopy(wanted)
    other["source"]["sha256"]["tangoflux.safetensors"] = "0" * 64
    assert not up_to_date(package, other)
    assert not up_to_date(package.with_name("missing.mlpackage"), wanted)


def test_tampered_package_is_not_up_to_date(packages: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy_ = tmp_path / "copy.mlpackage"
    shutil.copytree(packages["macOS15"], copy_)
    manifest = read_manifest(copy_)
    assert manifest is not None
    wanted = {k: manifest[k] for k in ("format", "converter_version", "source", "target", "shapes")}
    assert up_to_date(copy_, wanted)
    blob = copy_ / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    assert not up_to_date(copy_, wanted)


def test_package_carries_the_fp32_rope_tables(packages: dict[str, Path], pipe: Any) -> None:
    """The RoPE constants in the weight file are the fp32 tables, rounded once to fp16."""
    ct = import_coremltools()
    from coremltools.libmilstoragepython import _BlobStorageReader

    package = packages["macOS15"]
    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    reader = _BlobStorageReader(str(package / "Data/com.apple.CoreML/weights/weight.bin"))
    tables = []
    for op in fn.block_specializations[fn.opset].operations:
        dims = [d.constant.size for d in op.outputs[0].type.tensorType.dimensions]
        if op.type == "const" and dims == [1, 65 + L, 1, 128]:
            raw = reader.read_fp16_data(op.attributes["val"].blobFileValue.offset)
            tables.append(np.asarray(raw).view(np.float16).astype(np.float32).reshape(65 + L, 128))
    cos, sin = (t.numpy() for t in rope_tables(pipe.model.transformer, 65, L))
    assert len(tables) == 2
    diffs = sorted(min(np.abs(t - cos).max(), np.abs(t - sin).max()) for t in tables)
    log.info("RoPE in the package vs fp32: max abs %s (fp16 rounding: <= 2**-11)", diffs)
    assert diffs[-1] <= 2.0**-11


# -- the wrapper in PyTorch -----------------------------------------------------------------------------
def test_baked_rope_equals_pos_embed(pipe: Any) -> None:
    """The baked tables equal FluxPosEmbed over the pipeline's ids; computed in fp16 they would not."""
    transformer = pipe.model.transformer
    cos, sin = rope_tables(transformer, 65, L)
    txt_ids = torch.zeros(65, 3)
    img_ids = torch.arange(L)[:, None].repeat(1, 3)
    ref_cos, ref_sin = transformer.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
    diff = max((cos - ref_cos).abs().max().item(), (sin - ref_sin).abs().max().item())
    log.info("baked RoPE vs FluxPosEmbed: max abs diff %.3g", diff)
    assert diff == 0.0
    # what a graph computing them in fp16 would do: positions times frequencies, then cos, in fp16
    ids = torch.cat((txt_ids, img_ids.float())).half()  # (T + L, 3)
    parts = []
    for axis, dim in enumerate(transformer.pos_embed.axes_dim):
        freqs = (1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)).half()  # (dim / 2,)
        angles = ids[:, axis : axis + 1] * freqs  # (T + L, dim / 2) fp16
        parts.append(torch.cos(angles.float()).half().repeat_interleave(2, dim=1))
    fp16_diff = (torch.cat(parts, dim=1).float() - ref_cos).abs().max().item()
    log.info("RoPE computed in fp16: max abs diff %.3f", fp16_diff)
    assert fp16_diff > 0.15


def test_timestep_projection_equals_time_proj(pipe: Any) -> None:
    """The fp32 sinusoids fed to the package equal the transformer's own; in fp16 they would not."""
    time_proj = pipe.model.transformer.time_text_embed.time_proj
    timesteps = torch.cat([flow_schedule(s)[0] / 1000 for s in (1, 10, 25, 50)])  # what the pipeline passes
    ours = timestep_projection(timesteps)
    ref = time_proj(timesteps.float() * 1000)
    diff = (ours - ref).abs().max().item()
    log.info("timestep projection vs time_proj: max abs diff %.3g over %d timesteps", diff, len(timesteps))
    assert diff == 0.0
    # what a graph computing them in fp16 would do (diffusers' get_timestep_embedding, every step in fp16)
    half = TIME_PROJ_DIM // 2
    freqs = torch.exp((-math.log(10000) * torch.arange(half).float() / half).half().float()).half()
    angles = (timesteps.half() * 1000)[:, None] * freqs[None]  # (N, 128) fp16
    fp16 = torch.cat([torch.cos(angles.float()).half(), torch.sin(angles.float()).half()], dim=1).float()
    fp16_diff = (fp16 - ref).abs().max().item()
    log.info("timestep projection computed in fp16: max abs diff %.3f", fp16_diff)
    assert fp16_diff > 0.3


def test_wrapper_equals_transformer(pipe: Any, wrapper: TransformerForCoreML) -> None:
    """What is traced gives the transformer's output on the pipeline's own inputs (padding included)."""
    kw = _pipeline_inputs(pipe)
    assert not kw["joint_attention_kwargs"]["attention_mask"].all()  # the padding is exercised
    with torch.no_grad():
        ref = pipe.model.transformer(**kw)[0]
        ours = wrapper(*_wrapper_feeds(kw))
    diff = (ours - ref).abs().max().item()
    log.info("wrapper vs FluxTransformer2DModel: max abs diff %.3g (|ref| max %.3g)", diff, ref.abs().max().item())
    assert diff <= 1e-5


def test_wrapper_traces(pipe: Any, wrapper: TransformerForCoreML) -> None:
    kw = _pipeline_inputs(pipe)
    feeds = tuple(_wrapper_feeds(kw))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; coremltools still takes it
        traced = torch.jit.trace(wrapper, feeds, check_trace=False)
        assert (traced(*feeds) - wrapper(*feeds)).abs().max().item() == 0.0


# -- the runtime, with PyTorch standing in for Core ML -------------------------------------------------
@pytest.mark.parametrize("prompts", [("rain",), ("rain", "thunder and wind", "birds at dawn")])
def test_coreml_transformer_in_the_pipeline(swapped: Any, wrapper: TransformerForCoreML, prompts: tuple[str, ...]) -> None:
    """Swapped in as `pipe.model.transformer`, it gives the PyTorch pipeline's latents; 2n rows run
    two at a time."""
    pipe = swapped
    requests = [ClipRequest(p, seed=i + 1, duration=5.0 + 7 * i) for i, p in enumerate(prompts)]
    ref = pipe.denoise(requests, steps=3)
    predictor = TorchPredictor(wrapper)
    module = CoreMLTransformer(predictor, audio_seq_len=L)
    pipe.model.transformer = module
    ours = pipe.denoise(requests, steps=3)
    diff = (ours - ref).abs().max().item()
    log.info("%d clips: latents max abs diff %.3g", len(prompts), diff)
    assert diff <= 1e-4
    assert module.calls == 3 * len(prompts) == len(predictor.batches)


def test_coreml_transformer_rejects_other_positions(wrapper: TransformerForCoreML, pipe: Any) -> None:
    kw = _pipeline_inputs(pipe)
    module = CoreMLTransformer(TorchPredictor(wrapper), audio_seq_len=L)
    assert module(**kw)[0].shape == kw["hidden_states"].shape
    with pytest.raises(ValueError, match="positions baked"):
        module(**{**kw, "img_ids": kw["img_ids"] + 1})
    with pytest.raises(ValueError, match="guidance"):
        module(**{**kw, "guidance": torch.ones(4)})


def test_parity_metrics_definitions() -> None:
    ref = np.linspace(-2.0, 2.0, 1000)
    same = parity_metrics(ref.copy(), ref)
    assert same.passed and same.finite_ratio == 1.0 and same.rel_error == 0.0
    noisy = ref + 0.01 * np.sign(ref)  # rms error 0.01, peak 2: PSNR = 20 log10(200) = 46 dB
    m = parity_metrics(noisy, ref)
    assert math.isclose(m.psnr_db, 20 * math.log10(2.00001 / 0.01), rel_tol=1e-6)
    assert math.isclose(m.rel_error, 0.01 / np.sqrt(np.mean(ref**2)), rel_tol=1e-6)
    assert m.passed == (m.rel_error <= MAX_REL_ERROR and m.psnr_db >= MIN_PSNR_DB)
    nan = ref.copy()
    nan[3] = np.nan
    bad = parity_metrics(nan, ref)
    assert not bad.passed and bad.finite_ratio < MIN_FINITE_RATIO and bad.reason.startswith("finite ratio")


class _Broken(TorchPredictor):
    def __init__(self, module: torch.nn.Module, kind: str) -> None:
        super().__init__(module)
        self.kind = kind

    def predict(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().predict(data)[OUTPUT]
        if self.kind == "nan":
            out[0, 0, 0] = np.nan  # one value in ~80k: correlation would not notice
        else:
            out = out + 0.2 * np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
        return {OUTPUT: out}


def test_parity_gate(swapped: Any, wrapper: TransformerForCoreML) -> None:
    pipe = swapped
    calls = gate_calls(pipe)
    assert len(calls) == 3 and calls[0][0]["hidden_states"].shape[0] == 4
    masks = calls[0][0]["joint_attention_kwargs"]["attention_mask"].reshape(4, -1)
    assert len({int(m.sum()) for m in masks[:2]}) == 2  # two prompt lengths: two padding masks
    good = parity_gate(CoreMLTransformer(TorchPredictor(wrapper), audio_seq_len=L), pipe)  # its own reference run
    log.info("gate, fp32 stand-in: %s", good.line())
    assert good.passed and good.finite_ratio == 1.0 and good.rel_error < 1e-5
    one_step = calls[:1]  # the rest with one reference call: CPU fp16 is slow
    half = parity_gate(CoreMLTransformer(TorchPredictor(copy.deepcopy(wrapper), torch.float16), audio_seq_len=L),
                       pipe, calls=one_step)
    log.info("gate, fp16 PyTorch stand-in: %s", half.line())
    assert half.passed
    nan = parity_gate(CoreMLTransformer(_Broken(copy.deepcopy(wrapper), "nan"), audio_seq_len=L), pipe,
                      calls=one_step)
    assert not nan.passed and "finite ratio" in nan.reason
    noisy = parity_gate(CoreMLTransformer(_Broken(copy.deepcopy(wrapper), "noise"), audio_seq_len=L), pipe,
                        calls=one_step)
    assert not noisy.passed and "relative error" in noisy.reason
    assert pipe.model.transformer is not None and not isinstance(pipe.model.transformer, CoreMLTransformer)


@pytest.mark.skipif(ON_MAC, reason="checks the fallback off macOS")
def test_make_coreml_transformer_falls_back_off_mac(pipe: Any, packages: dict[str, Path],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="instrument.coreml.runtime"):
        assert make_coreml_transformer(packages["macOS15"], "ALL", pipe) is None
    assert "only on macOS" in caplog.text and "stays on cpu" in caplog.text


@pytest.mark.skipif(ON_MAC, reason="checks the message off macOS")
def test_coreml_status_off_mac(packages: dict[str, Path]) -> None:
    line = coreml_status("tiny", packages["macOS15"])
    assert "only on macOS" in line and "ready for a Mac" in line


def test_convert_main_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coremltools: Any) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = convert_main("tiny", None, "macOS15", force=False)
    assert path == default_package_path("tiny", "macOS15") and path.is_relative_to(tmp_path)
    assert read_manifest(path) is not None
    assert convert_main("tiny", None, "macOS15", force=False) == path  # up to date: skipped


# -- on a Mac ---------------------------------------------------------------------------------------------
@needs_mac
@pytest.mark.parametrize("units", ["CPU_ONLY", "ALL"])
def test_package_runs_on_core_ml(packages: dict[str, Path], swapped: Any, units: str) -> None:
    from instrument.coreml.runtime import load_package

    target = "macOS15" if target_supported("macOS15") else "macOS14"
    module = CoreMLTransformer(load_package(packages[target], units), audio_seq_len=L)
    result = parity_gate(module, swapped)
    log.info("Core ML %s %s: %s", target, units, result.line())
    assert result.passed, result.line()


@needs_mac
def test_make_coreml_transformer_on_mac(packages: dict[str, Path], swapped: Any) -> None:
    target = "macOS15" if target_supported("macOS15") else "macOS14"
    module = make_coreml_transformer(packages[target], "ALL", swapped)
    assert module is not None
    swapped.model.transformer = module
    assert swapped.denoise([ClipRequest("rain", seed=1)], steps=2).isfinite().all()


# -- converter patches ------------------------------------------------------------------------------------
def test_patches_apply_to_the_installed_versions(coremltools: Any) -> None:
    patches = load_patches()
    assert patches, f"no patches in {PATCH_DIR}"
    readme = (PATCH_DIR / "README.md").read_text()
    for patch in patches:
        assert patch.path.name in readme, f"patches/README.md says nothing about {patch.path.name}"
        installed = patch.installed_version()
        assert installed in patch.versions, (
            f"{patch.path.name} was written for {patch.package} {', '.join(patch.versions)}, {installed} is "
            "installed: check whether it is still needed (patches/README.md), then update its Versions line")
        assert check_patch(patch) is None, check_patch(patch)


class _ShapeInt(torch.nn.Module):
    """Shape arithmetic as in diffusers' RoPE: traces an aten::Int of a constant shape-(1,) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], -1, 2).unbind(-1)[0]


def _convert_shape_int() -> None:
    ct = import_coremltools()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(_ShapeInt(), torch.randn(2, 8))
    ct.convert(traced, inputs=[ct.TensorType(shape=(2, 8))], convert_to="mlprogram", skip_model_load=True)


def test_numpy24_patch_is_still_needed_and_works(coremltools: Any) -> None:
    import coremltools.converters.mil.frontend.torch.ops as ops

    original = ops._cast
    if tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(TypeError, match="0-dimensional"):
            _convert_shape_int()  # if this converts, coremltools fixed #2633: drop the patch (README)
    with converter_patches() as applied:
        assert "coremltools-2633-numpy24-cast" in applied
        assert ops._cast is not original
        _convert_shape_int()
    assert ops._cast is original  # restored


def _fake_module(tmp_path: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module(name)


def _patch(name: str, module: str, hunks: tuple[Hunk, ...], tmp_path: Path) -> SourcePatch:
    return SourcePatch(name, tmp_path / f"{name}.diff", "pytest", ("0",), module, hunks)


def test_patch_mechanics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _fake_module(tmp_path, "endless_fake_mod", """\
        import functools

        def helper(x):
            return x + 1

        def caller(x):
            return helper(x) * 10

        @functools.lru_cache
        def decorated(x):
            return x
        """, monkeypatch)
    fix = (tmp_path / "fix.diff")
    fix.write_text(textwrap.dedent("""\
        Patch: fake-fix
        Package: pytest
        Versions: 0
        Module: endless_fake_mod
        --- a/endless_fake_mod.py
        +++ b/endless_fake_mod.py
        @@ -3,2 +3,2 @@
         def helper(x):
        -    return x + 1
        +    return x + 2
        """))
    patch = parse_patch(fix)
    assert (patch.name, patch.module, patch.versions) == ("fake-fix", "endless_fake_mod", ("0",))
    assert set(prepare(patch).functions) == {"helper"}
    with converter_patches(tmp_path) as applied:
        assert applied == ["fake-fix"] and mod.caller(1) == 30  # the caller sees the swapped helper
    assert mod.caller(1) == 20
    # context that is not in the source: refused, naming the hunk
    stale = Hunk(3, ("def helper(x):", "    return x + 5"), ("def helper(x):", "    return x"))
    with pytest.raises(PatchError, match="does not apply"):
        prepare(_patch("stale", "endless_fake_mod", (stale,), tmp_path))
    # a decorated function cannot be swapped behind its decorator's back
    deco = Hunk(11, ("def decorated(x):", "    return x"), ("def decorated(x):", "    return -x"))
    with pytest.raises(PatchError, match="decorated"):
        prepare(_patch("deco", "endless_fake_mod", (deco,), tmp_path))
    # nor can module-level statements
    top = Hunk(1, ("import functools",), ("import functools", "X = 1"))
    with pytest.raises(PatchError, match="outside function bodies"):
        prepare(_patch("top", "endless_fake_mod", (top,), tmp_path))


def test_apply_hunks_tolerates_moved_lines_only() -> None:
    source = "a\nb\nc\nd\ne\n"
    moved = Hunk(1, ("c", "d"), ("c", "D"))  # says line 1, is at line 3
    assert apply_hunks(source, (moved,)) == "a\nb\nc\nD\ne\n"
    with pytest.raises(PatchError):
        apply_hunks(source, (Hunk(3, ("c", "x"), ("c",)),))


# -- the Mac benchmark, with stand-ins off macOS --------------------------------------------------------
def test_mac_benchmark_runs_with_stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packages: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Off a Mac: the script's whole path with CPU for MPS and the traced wrapper for Core ML, so that
    the one command a Mac user runs has been run; on a Mac this would measure for real."""
    import importlib.util

    import instrument.coreml.runtime as runtime
    import instrument.generator.loading as loading

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("bench_coreml_mac", Path(__file__).parents[1] / "benchmarks" /
                                                  "bench_coreml_mac.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if not ON_MAC:
        monkeypatch.setattr(bench, "unavailable_reason", lambda: None)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        monkeypatch.setattr(torch.mps, "synchronize", lambda: None)
        real_load = loading.load_pipeline
        monkeypatch.setattr(loading, "load_pipeline", lambda model, **kw: real_load(model, **{**kw, "device": "cpu"}))

        def fake_make(package: Path, units: str, pipe: Any, gate: bool = True) -> CoreMLTransformer:
            wrapper = TransformerForCoreML(copy.deepcopy(pipe.model.transformer), L)
            return CoreMLTransformer(TorchPredictor(wrapper), audio_seq_len=L)

        monkeypatch.setattr(runtime, "make_coreml_transformer", fake_make)
    package = packages["macOS15" if not ON_MAC or target_supported("macOS15") else "macOS14"]
    monkeypatch.setattr(sys, "argv", ["bench_coreml_mac.py", "--model", "tiny", "--quick", "--package", str(package)])
    assert bench.main() == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bench"] == "coreml_mac" and [r["path"] for r in result["rows"]] == ["mps fp32", "coreml"]
    coreml = result["rows"][1]
    assert coreml["finite"] == 1.0 and coreml["gate"] == "pass" and coreml["drift"] < 1e-2


@pytest.mark.skipif(ON_MAC, reason="off macOS any target counts; on a Mac only those it can run")
def test_find_package(packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from instrument.coreml import find_package

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert find_package("tiny") == default_package_path("tiny", "macOS15")  # none yet: where it would go
    shutil.copytree(packages["macOS14"], default_package_path("tiny", "macOS14"))
    assert find_package("tiny") == default_package_path("tiny", "macOS14")
    shutil.copytree(packages["macOS15"], default_package_path("tiny", "macOS15"))
    assert find_package("tiny") == default_package_path("tiny", "macOS15")  # the newest


def test_make_coreml_transformer_with_a_stand_in(packages: dict[str, Path], swapped: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The macOS path of the backend, with Core ML's loader replaced by the PyTorch stand-in: checks,
    the gate on first use and its record, reuse of the record, and fallbacks with their reasons."""
    import shutil

    import instrument.coreml.runtime as runtime
    from instrument.coreml import parity_path, parity_records

    pipe = swapped
    package = tmp_path / "tiny-macOS15.mlpackage"
    shutil.copytree(packages["macOS15"], package)
    monkeypatch.setattr(runtime, "unavailable_reason", lambda: None)
    monkeypatch.setattr(runtime, "target_supported", lambda target: True)
    fake_coremltools = types.SimpleNamespace(__version__="stand-in")
    monkeypatch.setitem(sys.modules, "coremltools", fake_coremltools)
    loads: list[str] = []
    kind = {"predictor": "good"}

    def fake_load(path: Path, units: str) -> TorchPredictor:
        loads.append(units)
        wrapper = TransformerForCoreML(copy.deepcopy(pipe.model.transformer), L)
        return TorchPredictor(wrapper) if kind["predictor"] == "good" else _Broken(wrapper, "nan")

    monkeypatch.setattr(runtime, "load_package", fake_load)
    reasons: list[str] = []
    module = make_coreml_transformer(package, "ALL", pipe, on_fallback=reasons.append)
    assert isinstance(module, CoreMLTransformer) and reasons == []
    assert module.calls == 3 * 2  # the gate: 3 steps of 4 rows, two rows per call
    records = parity_records(package)
    assert [r["compute_units"] for r in records] == ["ALL"] and records[0]["result"]["passed"]
    again = make_coreml_transformer(package, "ALL", pipe)
    assert again is not None and again.calls == 0  # passed before here: no second gate
    # a failing gate (NaN) falls back and records nothing
    kind["predictor"] = "nan"
    assert make_coreml_transformer(package, "CPU_AND_NE", pipe, on_fallback=reasons.append) is None
    assert "parity gate" in reasons[-1] and "finite ratio" in reasons[-1] and "stays on cpu" in reasons[-1]
    assert [r["compute_units"] for r in parity_records(package)] == ["ALL"]
    # a package from other weights is refused before loading
    other = load_pipeline(build_tiny_checkpoint(tmp_path / "seed1", seed=1))
    n = len(loads)
    assert make_coreml_transformer(package, "ALL", other, on_fallback=reasons.append) is None
    assert "other weights" in reasons[-1] and len(loads) == n
    # no package
    assert make_coreml_transformer(tmp_path / "none.mlpackage", "ALL", pipe, on_fallback=reasons.append) is None
    assert "no converted package" in reasons[-1]
    parity_path(package).unlink()
