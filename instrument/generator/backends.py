"""Choosing the model (`--model`) and where it runs (`--backend`), in the instrument's process.

Backends: cuda (bf16 transformer, fp16 VAE, fp32 T5), mps (fp32 throughout: fp16 on MPS gives
audible artifacts), cpu (fp32). `tiny` is the same code with a tiny random-weight checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from instrument.config import check_backend
from instrument.errors import ConfigError
from instrument.generator.download import fetch_weights
from instrument.generator.errors import ModelNotFoundError
from instrument.generator.loading import CHECKPOINT_FILES, OFFICIAL_REPO, TINY, resolve_checkpoint

log = logging.getLogger(__name__)

TINY_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  NO TANGOFLUX WEIGHTS FOUND: playing the TINY RANDOM-WEIGHT STAND-IN. IT SOUNDS LIKE NOISE.
!!  It exists so the instrument runs offline. To get the real model, run once with internet:
!!      endless fetch-model            (or: endless fetch-model --from DIR)
!!  or pass --model-dir DIR holding config.json, tangoflux.safetensors, vae.safetensors.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""


@dataclass(frozen=True)
class ModelChoice:
    model: str  # what the worker loads: "tiny", a folder, or a hub id
    allow_download: bool
    stand_in: bool  # True: auto fell back to the tiny model


def local_models_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "endless" / "models" / "tangoflux"


def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_model(model: str) -> ModelChoice:
    """`auto`: TangoFlux from our folder or the HF cache, or the hub when reachable; else tiny."""
    if model == TINY:
        return ModelChoice(TINY, False, False)
    if model in ("auto", "tangoflux"):
        local = local_models_dir()
        if all((local / f).is_file() for f in CHECKPOINT_FILES):
            return ModelChoice(str(local), False, False)
        try:
            resolve_checkpoint(OFFICIAL_REPO)
            return ModelChoice(OFFICIAL_REPO, False, False)
        except ModelNotFoundError:
            if not hub_reachable():
                if model == "tangoflux":
                    raise
                return ModelChoice(TINY, False, True)
        try:  # first run with a network: size and licence said, fetched here with a progress bar
            fetch_weights()
            return ModelChoice(OFFICIAL_REPO, False, False)
        except Exception as e:  # the hub or the network failed mid-way: what arrived is kept for next time
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            if model == "tangoflux":
                raise ModelNotFoundError(f"fetching {OFFICIAL_REPO} failed ({reason}): start again with network "
                                         "access (the download resumes), or --model tiny to play offline") from None
            log.warning("fetching %s failed (%s): playing the tiny stand-in; the next start with network access "
                        "resumes the download", OFFICIAL_REPO, reason)
        return ModelChoice(TINY, False, True)
    resolve_checkpoint(model)  # a folder: check the layout now, one clear error if it is wrong
    return ModelChoice(model, False, False)


def cuda_devices_without_torch() -> int | None:
    """The CUDA GPUs torch would see, asked of the driver library directly (importing torch takes
    seconds, and the generator's worker imports it again): 0 for a CPU-only torch build or no
    driver; None where only torch can tell (macOS, ROCm builds, an unreadable driver). CUDA is
    initialised only in this process, which runs no CUDA work (the worker is spawned, not forked)."""
    import ctypes
    import importlib.metadata
    import sys

    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if sys.platform == "darwin" or "+rocm" in version:
        return None
    if "+cpu" in version:
        return 0
    try:
        lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return 0  # no NVIDIA driver: torch would see no GPU either
    count = ctypes.c_int(0)
    try:
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
    except AttributeError:
        return None
    return count.value


def choose_backend(backend: str) -> tuple[str, str, str]:
    """(device, transformer dtype, VAE dtype) for `--backend`. Imports torch only where the answer
    needs it (MPS, Core ML, a driver the probe cannot read): the worker imports it anyway."""
    check_backend(backend)
    if backend == "cpu":
        return "cpu", "float32", "float32"
    if backend in ("auto", "cuda"):
        gpus = cuda_devices_without_torch()
        if gpus:
            return "cuda", "bfloat16", "float16"  # the dtypes chosen below, without importing torch here
        if gpus == 0 and backend == "auto" and sys.platform.startswith(("linux", "win")):
            return "cpu", "float32", "float32"  # no CUDA GPU, and MPS and Core ML are macOS only
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if backend == "auto":
        backend = "cuda" if cuda else "mps" if mps else "cpu"
    if backend == "cuda":
        if not cuda:
            raise ConfigError(f"--backend cuda: torch {torch.__version__} sees no CUDA GPU here: use --backend auto or cpu")
        # fp16 VAE: finite ratio 1.0 and 2e-3 relative error against fp32 at a third of the time
        # (benchmarks/bench_generate.py on an H200); bf16 was 1.7e-2.
        return "cuda", "bfloat16", "float16"
    if backend == "coreml":
        from instrument.coreml import unavailable_reason

        why = unavailable_reason()
        if why is not None:
            raise ConfigError(f"--backend coreml: {why}; use --backend auto")
        # the transformer runs through Core ML (the worker swaps it in, or falls back to this device);
        # T5 and the VAE in fp32 on MPS: fp16 on MPS gives audible artifacts
        return ("mps" if mps else "cpu"), "float32", "float32"
    if backend == "mps":
        if not mps:
            raise ConfigError("--backend mps: Apple's Metal (MPS) is not available here: use --backend auto or cpu")
        return "mps", "float32", "float32"
    return "cpu", "float32", "float32"


def fetch_model(source: Path | None = None) -> Path:
    """Copy a checkpoint folder into our model folder, or download TangoFlux and Flan-T5 into the HF cache."""
    if source is not None:
        resolve_checkpoint(source)  # validates the layout and the text encoder
        dest = local_models_dir()
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(source, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest
    if not hub_reachable():
        raise ModelNotFoundError("the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set): run "
                                 "`endless fetch-model` where there is internet, or `endless fetch-model --from DIR`")
    return fetch_weights()
