"""torch.compile's work kept across starts (CUDA): a second start of the same model and settings
reaches full speed in seconds instead of compiling again (about 45 s on an H100).

Two layers, both under one per-user folder (`cache_root()`: the platform cache dir, endless/torch):
- Inductor's own on-disk caches (FX graphs, AOT autograd, Triton kernels) in `inductor/`, turned on
  and pointed there before anything compiles;
- PyTorch's "mega cache" (`torch.compiler.save_cache_artifacts`, torch >= 2.6): every artifact of one
  warm-up in one file, `mega/KEY.bin`, KEY a hash of the model id, dtype, batch sizes, compile mode,
  GPU and torch version, loaded before compiling and saved after a compile that worked.

`endless doctor` reads the folder (no torch import here at module level).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

if TYPE_CHECKING:
    from instrument.generator.pipeline import TangoFluxPipeline

log = logging.getLogger(__name__)

MEGA = "mega"
INDUCTOR = "inductor"
COMPILE_MODE = "reduce-overhead"  # CUDA graphs on top of Inductor (bench_generate.py)


def cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("endless")) / "torch"


def cache_key(model: str, dtype: str, batch_sizes: Sequence[int], torch_version: str, mode: str | None = COMPILE_MODE,
              device: str = "") -> str:
    """A file name for one compile: what changes the compiled graphs changes the key."""
    fields = {"model": model, "dtype": dtype.replace("torch.", ""), "batch_sizes": sorted(set(batch_sizes)),
              "torch": torch_version, "mode": mode, "device": device}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def enable(root: Path | None = None) -> Path:
    """Point Inductor's caches (FX graph, AOT autograd, Triton) at `root`/inductor and turn them on.
    Call before the first compile; returns `root`."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    root = root if root is not None else cache_root()
    (root / INDUCTOR).mkdir(parents=True, exist_ok=True)
    (root / MEGA).mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / INDUCTOR)  # read when Inductor first needs it
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return root


def load(root: Path, key: str) -> int:
    """Artifacts loaded from `root`/mega/KEY.bin into Inductor's caches (0: none saved, or unusable)."""
    import torch

    path = root / MEGA / f"{key}.bin"
    if not path.is_file():
        return 0
    quiet = logging.getLogger("torch.compiler._cache")  # it logs a traceback for a damaged file: ours is one line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception:
        info = None
    finally:
        quiet.setLevel(level)
    if info is None:  # a damaged file, or one from a torch that reads it differently: compile afresh
        log.warning("compile cache: %s is unusable: compiling afresh (and replacing it)", path)
        return 0
    return sum(len(v) for v in info.artifacts.values())


def save(root: Path, key: str, about: dict[str, object]) -> int:
    """Write every artifact this process compiled to `root`/mega/KEY.bin (atomically) and a JSON note
    of what it is for; returns the artifacts saved. A disk error is one log line, never raised."""
    import torch

    result = torch.compiler.save_cache_artifacts()
    if result is None:
        return 0
    data, info = result
    path = root / MEGA / f"{key}.bin"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({**about, "saved": time.time(), "bytes": len(data)}))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning("compile cache: cannot write %s (%s): the next start compiles again", path, e.strerror or e)
        return 0
    return sum(len(v) for v in info.artifacts.values())


def compile_and_warm(pipe: TangoFluxPipeline, sizes: Sequence[int], root: Path | None = None) -> tuple[float, int]:
    """torch.compile the pipeline's transformer and run each batch size once (compile and CUDA graph
    capture now, not mid-set), reusing and then keeping the compile caches. Returns (seconds it
    took, artifacts reused from the cache). If compiling fails, the transformer is left as it was
    (eager) and the error raised."""
    import torch

    from instrument.generator.pipeline import ClipRequest

    root = enable(root)
    device = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else pipe.device.type
    about: dict[str, object] = {"model": pipe.name, "dtype": str(pipe.dtype).replace("torch.", ""),
                                "batch_sizes": sorted(set(sizes)), "torch": torch.__version__, "mode": COMPILE_MODE,
                                "device": device}
    key = cache_key(pipe.name, str(pipe.dtype), sizes, torch.__version__, COMPILE_MODE, device)
    t0 = time.perf_counter()
    loaded = load(root, key)
    eager = pipe.model.transformer
    pipe.compile(COMPILE_MODE)
    try:
        for n in sizes:
            pipe([ClipRequest("warm up", seed=0, duration=1.0)] * n, steps=2)
    except Exception:
        pipe.model.transformer = eager
        raise
    took = time.perf_counter() - t0
    if loaded:
        log.info("compile cache: %d artifacts reused from %s, warm in %.1f s", loaded, root, took)
        return took, loaded
    saved = save(root, key, about)
    log.info("compile cache: compiled in %.1f s, %d artifacts kept in %s for the next start", took, saved, root)
    return took, 0


@dataclass(frozen=True)
class CacheSummary:
    root: Path
    exists: bool
    bytes: int
    files: int
    entries: tuple[dict[str, object], ...]  # the saved compiles' notes, newest first


def summarize(root: Path | None = None) -> CacheSummary:
    """What the cache folder holds (for `endless doctor`); reads files only."""
    root = root if root is not None else cache_root()
    if not root.is_dir():
        return CacheSummary(root, False, 0, 0, ())
    size = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
                files += 1
            except OSError:
                continue
    notes: list[dict[str, object]] = []
    for note in (root / MEGA).glob("*.json"):
        try:
            data = json.loads(note.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and note.with_suffix(".bin").is_file():
            notes.append(data)
    notes.sort(key=_saved, reverse=True)
    return CacheSummary(root, True, size, files, tuple(notes))


def _saved(note: dict[str, object]) -> float:
    t = note.get("saved")
    return float(t) if isinstance(t, (int, float)) else 0.0
