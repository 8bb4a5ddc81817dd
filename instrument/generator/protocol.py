"""Messages between the instrument and its generator worker process: frozen dataclasses.

They cross a multiprocessing pipe (pickled; audio as a numpy array, no temp files). Requests go
in; progress, clips, errors and status come out.

>>> r = Request(id=7, slot=1, prompt="rain", seed=3, steps=25, guidance=4.5, seconds=10.0)
>>> r.priority, r.generation
(False, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

WorkerState = Literal["starting", "loading", "ready", "busy", "restarting", "failed", "stopped"]


# -- to the worker --------------------------------------------------------------------------------
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
class Progress:
    ids: tuple[int, ...]
    step: int
    steps: int


@dataclass(frozen=True, eq=False)
class ClipReady:
    id: int
    slot: int
    generation: int
    audio: np.ndarray  # (frames, 2) float32 at `sample_rate`, loudness-normalised
    sample_rate: int
    prompt: str
    seed: int
    model: str
    gen_seconds: float  # wall time of the call that made it (shared by a batch)
    batch: int  # how many clips that call made
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
FromWorker = Ready | Progress | ClipReady | Dropped | Failed | Heartbeat
