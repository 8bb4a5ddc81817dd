"""Run the converted transformer with Core ML in place of the PyTorch one (macOS), behind a parity gate.

    pipe = load_pipeline(model, device="mps")                 # T5 and the VAE on MPS fp32
    coreml = make_coreml_transformer(None, "ALL", pipe)       # None: fall back, with the reason logged
    if coreml is not None:
        pipe.model.transformer = coreml                       # the pipeline calls it as before

`CoreMLTransformer` takes the pipeline's call (`hidden_states=..., timestep=..., joint_attention_kwargs=
{"attention_mask": (2n, 1, 1, 710) bool}, return_dict=False`), computes the timestep sinusoids in
fp32, turns the boolean mask into the package's 1/0 key mask, runs the rows two at a time (the
package's batch) and returns `(velocity,)` on the caller's device. It works with anything that has
`predict(dict[str, np.ndarray]) -> dict[str, np.ndarray]`: Core ML's MLModel on a Mac, or in tests
a PyTorch stand-in for the package's graph.

The parity gate (before a package is first used with a given compute-unit setting): replay the
transformer calls of a short real denoising run (two clips, four rows, three steps) through Core ML
and compare with the PyTorch fp32 transformer. The finite ratio is checked first and must be 1.0
(an fp16 graph can correlate well with NaNs in it), then relative error and PSNR.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from instrument.coreml import (
    BATCH,
    COMPUTE_UNITS,
    DEFAULT_COMPUTE_UNITS,
    DEFAULT_TARGET,
    OUTPUT,
    TEXT_ROWS,
    CoreMLError,
    default_target,
    find_package,
    package_name,
    parity_path,
    parity_records,
    read_manifest,
    target_supported,
    unavailable_reason,
)
from instrument.coreml.package import DATA_FILES, import_coremltools
from instrument.coreml.traced import (
    record_calls,
    time_projection,
    timestep_projection,
    transformer_fingerprint,
)
from instrument.generator.pipeline import ClipRequest

log = logging.getLogger(__name__)

# The gate's thresholds, against the PyTorch fp32 transformer on the same inputs.
MIN_FINITE_RATIO = 1.0  # every value finite; checked first
MAX_REL_ERROR = 3e-2  # ||coreml - torch|| / ||torch|| over all gate calls
MIN_PSNR_DB = 35.0  # 20 log10(max|torch| / rms error): apple/ml-stable-diffusion's ABSOLUTE_MIN_PSNR
GATE_STEPS = 3  # denoising steps replayed: t = 1, 2/3, 1/3
GATE_PROMPTS = (("rain on a tin roof", 1, 10.0), ("distant thunder rolling over hills at night, wind", 2, 25.0))


class Predictor(Protocol):
    def predict(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# -- the module the pipeline calls ---------------------------------------------------------------
class CoreMLTransformer(nn.Module):
    """A drop-in for `FluxTransformer2DModel` in `TangoFluxPipeline.denoise`, backed by a package.

    An nn.Module (without parameters) so that it can be assigned to `pipe.model.transformer`.
    """

    def __init__(self, model: Predictor, *, audio_seq_len: int, text_rows: int = TEXT_ROWS,
                 time_proj: nn.Module | None = None, label: str = "coreml") -> None:
        super().__init__()
        self.model = model
        self.audio_seq_len = audio_seq_len
        self.text_rows = text_rows
        self.time_proj = time_proj if time_proj is not None else time_projection()
        self.label = label
        self._checked_ids: tuple[int, int] | None = None
        self.calls = 0  # predict() calls, for benchmarks
        self.seconds = 0.0  # spent in predict()

    def _check_ids(self, txt_ids: torch.Tensor | None, img_ids: torch.Tensor | None) -> None:
        """The package bakes RoPE for txt_ids = 0 and img_ids = arange: refuse any other positions."""
        if txt_ids is None or img_ids is None:
            return
        key = (id(txt_ids), id(img_ids))
        if key == self._checked_ids:
            return
        want_txt = torch.zeros(self.text_rows, 3)
        want_img = torch.arange(self.audio_seq_len)[:, None].repeat(1, 3).float()
        if (txt_ids.shape != want_txt.shape or img_ids.shape != want_img.shape
                or not torch.equal(txt_ids.detach().float().cpu(), want_txt)
                or not torch.equal(img_ids.detach().float().cpu(), want_img)):
            raise ValueError(f"{self.label}: txt_ids {tuple(txt_ids.shape)} / img_ids {tuple(img_ids.shape)} "
                             f"differ from the positions baked into the package (zeros, arange)")
        self._checked_ids = key

    def forward(
        self,
        hidden_states: torch.Tensor,  # (2n, L, 64)
        encoder_hidden_states: torch.Tensor,  # (2n, T, D)
        pooled_projections: torch.Tensor,  # (2n, D)
        timestep: torch.Tensor,  # (2n,) t / 1000
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **unused: Any,
    ) -> Any:
        if guidance is not None:
            raise ValueError(f"{self.label}: the package has no guidance embedding (TangoFlux uses CFG)")
        self._check_ids(txt_ids, img_ids)
        rows = hidden_states.shape[0]
        mask = (joint_attention_kwargs or {}).get("attention_mask")
        if mask is None:
            keep = torch.ones(rows, self.text_rows + self.audio_seq_len)
        else:
            mask = mask.detach().reshape(rows, -1).cpu()  # (2n, T + L)
            keep = mask.float() if mask.dtype == torch.bool else (mask > -1e3).float()  # additive: 0 keeps
        feeds = {
            "hidden_states": hidden_states.detach().float().cpu(),
            "encoder_hidden_states": encoder_hidden_states.detach().float().cpu(),
            "pooled_projections": pooled_projections.detach().float().cpu(),
            "timestep_proj": timestep_projection(timestep.reshape(-1).expand(rows), self.time_proj),
            "key_mask": keep,
        }
        arrays = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in feeds.items()}
        pad = -rows % BATCH
        if pad:  # the package's batch is fixed: repeat the last row, drop its output
            arrays = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in arrays.items()}
        outs = []
        for i in range(0, rows + pad, BATCH):
            t0 = time.perf_counter()
            result = self.model.predict({k: v[i : i + BATCH] for k, v in arrays.items()})
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            outs.append(np.asarray(result[OUTPUT], dtype=np.float32))
        velocity = torch.from_numpy(np.concatenate(outs)[:rows]).to(hidden_states.device)  # (2n, L, 64)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=velocity)
        return (velocity,)


# -- parity -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParityResult:
    finite_ratio: float  # fraction of finite values in the candidate's output
    rel_error: float  # ||candidate - reference|| / ||reference||; inf when not all finite
    psnr_db: float  # 20 log10(max|reference| / rms error); -inf when not all finite
    max_abs: float  # the largest absolute difference; inf when not all finite
    values: int  # how many values were compared
    passed: bool
    reason: str  # what failed first, or "" when passed

    def line(self) -> str:
        verdict = "passed" if self.passed else f"FAILED: {self.reason}"
        return (f"finite ratio {self.finite_ratio:.6f}, relative error {self.rel_error:.3e}, "
                f"PSNR {self.psnr_db:.1f} dB, max abs {self.max_abs:.3e} over {self.values} values: {verdict}")


def parity_metrics(candidate: np.ndarray, reference: np.ndarray, *, min_finite_ratio: float = MIN_FINITE_RATIO,
                   max_rel_error: float = MAX_REL_ERROR, min_psnr_db: float = MIN_PSNR_DB) -> ParityResult:
    """Compare `candidate` with `reference` (same shape): the finite ratio first, then error and PSNR."""
    cand = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.shape != ref.shape:
        raise ValueError(f"shapes differ: candidate {cand.shape}, reference {ref.shape}")
    finite = float(np.isfinite(cand).mean()) if cand.size else 0.0
    if finite < min_finite_ratio:
        return ParityResult(finite, float("inf"), float("-inf"), float("inf"), cand.size, False,
                            f"finite ratio {finite:.6f} < {min_finite_ratio}")
    diff = cand - ref
    rel = float(np.linalg.norm(diff)) / max(float(np.linalg.norm(ref)), 1e-30)
    rms = float(np.sqrt(np.mean(diff * diff)))
    psnr = float(20 * np.log10((np.abs(ref).max() + 1e-5) / (rms + 1e-10)))
    max_abs = float(np.abs(diff).max())
    reason = ""
    if rel > max_rel_error:
        reason = f"relative error {rel:.3e} > {max_rel_error:g}"
    elif psnr < min_psnr_db:
        reason = f"PSNR {psnr:.1f} dB < {min_psnr_db:g} dB"
    return ParityResult(finite, rel, psnr, max_abs, cand.size, not reason, reason)


def gate_calls(pipe: Any, steps: int = GATE_STEPS) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """The transformer calls of a short real denoising run, with the reference transformer's outputs.

    Two clips with prompts of different lengths and durations (so the key-padding mask varies): four
    rows per call. `pipe` is a TangoFluxPipeline whose transformer is the PyTorch reference.
    """
    return record_calls(pipe, [ClipRequest(p, seed=s, duration=d) for p, s, d in GATE_PROMPTS], steps)


def parity_gate(candidate: Callable[..., Any], pipe: Any, steps: int = GATE_STEPS,
                calls: list[tuple[dict[str, Any], torch.Tensor]] | None = None) -> ParityResult:
    """Run the gate: `candidate` (called like the transformer) against `pipe`'s PyTorch transformer.

    `calls`: from `gate_calls(pipe)`, to compare several candidates with one reference run.
    """
    calls = calls if calls is not None else gate_calls(pipe, steps)
    got = [candidate(**kwargs)[0].detach().float().cpu() for kwargs, _ in calls]
    return parity_metrics(torch.cat(got).numpy(), torch.cat([ref for _, ref in calls]).numpy())


# -- loading ----------------------------------------------------------------------------------------
def load_package(package: Path, compute_units: str = DEFAULT_COMPUTE_UNITS) -> Any:
    """The package as a Core ML model (macOS). Compiles it once into `<name>.mlmodelc` next to it
    (Core ML would otherwise recompile it at every start); falls back to loading the package."""
    if compute_units not in COMPUTE_UNITS:
        raise CoreMLError(f"compute units {compute_units!r}: allowed {', '.join(COMPUTE_UNITS)}")
    ct = import_coremltools()
    units = ct.ComputeUnit[compute_units]
    manifest = read_manifest(package) or {}
    digest = json.dumps(manifest.get("files", {}), sort_keys=True)
    compiled = package.with_name(package.name.removesuffix(".mlpackage") + ".mlmodelc")
    stamp = compiled.with_name(compiled.name + ".source.json")
    try:
        if not (compiled.is_dir() and stamp.is_file() and stamp.read_text() == digest):
            t0 = time.perf_counter()
            tmp = Path(ct.utils.compile_model(str(package)))
            if compiled.exists():
                shutil.rmtree(compiled)
            shutil.move(str(tmp), str(compiled))  # from the temporary folder, perhaps another volume
            stamp.write_text(digest)
            log.info("coreml: compiled %s in %.1f s", compiled.name, time.perf_counter() - t0)
        return ct.models.CompiledMLModel(str(compiled), compute_units=units)
    except Exception as e:  # a read-only folder, an older coremltools: load the package directly
        log.debug("coreml: no compiled cache (%s: %s); loading the package", type(e).__name__, e)
        return ct.models.MLModel(str(package), compute_units=units)


def _gate_key(manifest: dict[str, Any], compute_units: str, fingerprint: str) -> dict[str, Any]:
    import coremltools

    return {
        "files": manifest.get("files"),
        "compute_units": compute_units,
        "macos": platform.mac_ver()[0],
        "coremltools": coremltools.__version__,
        "reference": fingerprint,
    }


def _record_pass(package: Path, key: dict[str, Any], result: ParityResult) -> None:
    records = [r for r in parity_records(package) if {k: r.get(k) for k in key} != key]
    records.append({**key, "result": asdict(result), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        parity_path(package).write_text(json.dumps({"passed": records}, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        log.warning("coreml: cannot record the parity result next to %s (%s): the gate runs again next time",
                    package, e)


def make_coreml_transformer(
    package: Path | None,
    compute_units: str,
    reference_pipe: Any,
    *,
    gate: bool = True,  # False: skip the parity gate (benchmarks that measure parity themselves)
    on_fallback: Callable[[str], None] | None = None,  # also told the reason (e.g. to send it to the parent)
) -> CoreMLTransformer | None:
    """A CoreMLTransformer for `reference_pipe`'s model, or None (and a logged warning saying why, and
    that the transformer stays on the pipeline's device) when Core ML cannot be used.

    `package`: None for `find_package(reference_pipe.name)` (where `endless convert-coreml` writes). The first use of a package with
    given compute units on this Mac runs the parity gate against the pipeline's own transformer.
    """
    where = f"the transformer stays on {reference_pipe.device} ({str(reference_pipe.dtype).replace('torch.', '')})"

    def fall_back(reason: str) -> None:
        log.warning("coreml: %s; %s", reason, where)
        if on_fallback is not None:
            on_fallback(f"coreml: {reason}; {where}")

    why_not = unavailable_reason()
    if why_not is not None:
        fall_back(why_not)
        return None
    path = Path(package) if package is not None else find_package(reference_pipe.name)
    manifest = read_manifest(path)
    if manifest is None:
        model = "" if package_name(reference_pipe.name) == "tangoflux" else f" --model {reference_pipe.name}"
        out = f" --out {path}" if package is not None else ""
        target = "" if target_supported(DEFAULT_TARGET) else f" --target {default_target()}"
        fall_back(f"no converted package at {path}: run `endless convert-coreml{model}{out}{target}` once")
        return None
    target = str(manifest.get("target"))
    if not target_supported(target):
        fall_back(f"{path} was converted for {target}, newer than macOS {platform.mac_ver()[0]}: "
                  "convert again with --target macOS14")
        return None
    config = reference_pipe.config
    if manifest.get("shapes", {}).get("hidden_states") != [BATCH, config.audio_seq_len, 64]:
        fall_back(f"{path} has shapes {manifest.get('shapes')}, not this model's")
        return None
    fingerprint = transformer_fingerprint(reference_pipe.model.transformer)
    if manifest.get("transformer_fingerprint") != fingerprint:
        fall_back(f"{path} was converted from other weights ({manifest.get('source', {}).get('model')}) than "
                  f"{reference_pipe.name}: convert again with `endless convert-coreml --force`")
        return None
    try:
        missing = [f for f in DATA_FILES if not (path / f).is_file()]
        if missing:
            raise CoreMLError(f"files missing: {', '.join(missing)}")
        t0 = time.perf_counter()
        model = load_package(path, compute_units)
        log.info("coreml: loaded %s (compute units %s) in %.1f s", path.name, compute_units, time.perf_counter() - t0)
    except Exception as e:
        fall_back(f"Core ML failed to load {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None
    module = CoreMLTransformer(model, audio_seq_len=config.audio_seq_len,
                               time_proj=reference_pipe.model.transformer.time_text_embed.time_proj,
                               label=f"coreml {path.name}")
    if not gate:
        return module
    key = _gate_key(manifest, compute_units, fingerprint)
    if any({k: r.get(k) for k in key} == key for r in parity_records(path)):
        log.info("coreml: %s passed the parity gate here before (compute units %s)", path.name, compute_units)
        return module
    try:
        result = parity_gate(module, reference_pipe)
    except Exception as e:
        fall_back(f"Core ML failed while running {path.name} ({type(e).__name__}: {e})")
        return None
    if not result.passed:
        fall_back(f"{path.name} failed the parity gate against the PyTorch fp32 transformer ({result.line()}); "
                  "try other compute units (CPU_AND_GPU), or convert again")
        return None
    log.info("coreml: parity gate: %s", result.line())
    _record_pass(path, key, result)
    return module

