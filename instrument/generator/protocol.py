"""Messages between the instrument and its generator worker process: frozen dataclasses.

They cross a multiprocessing pipe (pickled; a clip's audio as a numpy array, no temp files).
`WorkerSpec` goes to the child once, at spawn; then requests go in, and progress, clips, errors
and status come out.

>>> r = Request(id=7, slot=1, prompt="rain", seed=3, steps=25, guidance=4.5, seconds=10.0)
>>> r.priority, r.generation
(False, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from instrument.clips import Clip
from instrument.errors import ConfigError

WorkerState = Literal["starting", "loading", "ready", "busy", "restarting", "failed", "stopped"]


# -- to the worker --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSpec:
    """Everything the child needs to build its pipeline (picklable)."""

    model: str = "tiny"  # "tiny", a checkpoint folder, or a hub id in the cache
    device: str = "cpu"
    dtype: str = "float32"  # the transformer's
    vae_dtype: str = "float32"
    sample_rate: int = 44100  # clips are resampled to this (the device rate)
    lufs: float = -20.0
    true_peak_db: float = -1.0
    max_batch: int = 4
    allow_download: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    nice: int = 0  # raise the worker's nice value by this much (>0: lower CPU priority than the audio and controls)
    coreml: bool = False  # macOS: the transformer through Core ML; falls back to `device` with the reason logged
    coreml_package: str | None = None  # None: the package `endless convert-coreml` wrote for `model`
    compute_units: str = "ALL"  # Core ML compute units: ALL, CPU_AND_GPU, CPU_AND_NE, CPU_ONLY
    compile: bool = True  # on cuda: torch.compile with CUDA graphs (README: bench_generate.py on an H200)
    test_delay: float = 0.0  # extra seconds per step, for tests of starvation and hangs
    load_delay: float = 0.0  # seconds to wait before loading the model ($ENDLESS_LOAD_DELAY: benchmarks of first sound)
    heartbeat_timeout: float = 3.0  # s without a heartbeat before the parent kills and restarts the worker

    def __post_init__(self) -> None:
        if not 0.1 <= self.heartbeat_timeout <= 3600:
            raise ConfigError(f"heartbeat timeout {self.heartbeat_timeout:g} s: allowed 0.1..3600 s "
                              "(the worker beats at least 4 times within it)")


@dataclass(frozen=True)
class Request:
    """Generate one clip for a slot. Requests with equal steps may be batched into one call."""

    id: int
    slot: int
    prompt: str  # text, or a blend "rain:0.7 | thunder:0.3"
    seed: int
    steps: int
    guidance: float
    seconds: float  # clip length (and duration token)
    generation: int = 0  # the slot's prompt generation: clips of an older one are stale
    priority: bool = False  # jump the worker's queue (a prompt just changed)


@dataclass(frozen=True)
class Cancel:
    """Drop these requests: between steps if running, at once if still queued."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Shutdown:
    pass


# -- from the worker ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    model: str
    device: str
    dtype: str
    sample_rate: int  # the rate clips come back at (the device rate)
    load_seconds: float


@dataclass(frozen=True)
class Compiled:
    """CUDA: the transformer is compiled and its graphs captured (after the first clips, made
    without it): full speed from here. `reused`: artifacts that came from the on-disk cache."""

    seconds: float
    reused: int


@dataclass(frozen=True)
class Progress:
    ids: tuple[int, ...]
    step: int
    steps: int


@dataclass(frozen=True, eq=False)
class ClipReady:
    id: int
    slot: int
    generation: int
    clip: Clip  # at the device rate, loudness-normalised; its info says how it was made
    batch: int  # how many clips the call that made it made
    loudness: float  # LUFS after normalisation


@dataclass(frozen=True)
class Dropped:
    """A request that produced no clip: cancelled, or its audio failed the finite check."""

    id: int
    slot: int
    reason: str


@dataclass(frozen=True)
class Failed:
    """An error. `fatal`: the worker cannot go on (e.g. no weights) and must not be restarted."""

    message: str
    ids: tuple[int, ...] = ()
    fatal: bool = False


@dataclass(frozen=True)
class Heartbeat:
    state: WorkerState
    time: float


ToWorker = Request | Cancel | Shutdown
FromWorker = Ready | Compiled | Progress | ClipReady | Dropped | Failed | Heartbeat
