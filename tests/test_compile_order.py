"""The worker's CUDA start order, on the CPU: ready, the first batch eagerly, then the compile.

`_Child.serve` runs here in a thread with real pipes and the tiny pipeline; only the compile (a
CUDA-only step) is a stand-in that records when it ran. What this pins: the first clip does not
wait for a compile (on an H100 a warm compile took 9 s, a cold one a minute), the compile does come
(full speed), a failed compile leaves generation going, and nothing waits for a request that never
comes.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from instrument.generator.child import FIRST_REQUEST_WAIT, _Child
from instrument.generator.loading import load_pipeline
from instrument.generator.protocol import (
    ClipReady,
    Compiled,
    Failed,
    FromWorker,
    Request,
    Shutdown,
    WorkerSpec,
)
from tests.generator_fixtures import tiny_checkpoint

SR = 44100


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_pipeline(tiny_checkpoint(tmp_path_factory))


class Rig:
    """A _Child serving `pipe` in a thread; `messages` collects what it sends, in order."""

    def __init__(self, pipe: Any, compile_fn: Any) -> None:
        inbox_r, self.inbox = mp.Pipe(duplex=False)
        self.outbox_r, outbox = mp.Pipe(duplex=False)
        self.child = _Child(WorkerSpec(model="tiny", sample_rate=SR, max_batch=2), inbox_r, outbox,
                            mp.RawValue("Q", 0))
        self.child.state = "ready"
        self.messages: list[FromWorker] = []
        self.thread = threading.Thread(target=self.child.serve, args=(pipe, compile_fn), daemon=True)

    def take_until(self, kind: type, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox_r.poll(0.05):
                self.messages.append(self.outbox_r.recv())
                if isinstance(self.messages[-1], kind):
                    return
        raise AssertionError(f"no {kind.__name__} in {timeout} s: {[type(m).__name__ for m in self.messages]}")

    def close(self) -> None:
        self.inbox.send(Shutdown())
        self.thread.join(30)
        assert not self.thread.is_alive()


def request(i: int) -> Request:
    return Request(i, 0, "rain on a roof", seed=i, steps=2, guidance=4.5, seconds=1.0)


def kinds(messages: list[FromWorker]) -> list[str]:
    return [type(m).__name__ for m in messages if isinstance(m, (ClipReady, Compiled, Failed))]


def test_the_first_batch_comes_before_the_compile_and_the_compile_comes(pipe: Any) -> None:
    calls: list[tuple[int, ...]] = []

    def compile_fn(p: Any, sizes: tuple[int, ...]) -> tuple[float, int]:
        calls.append(sizes)
        return 0.5, 3

    rig = Rig(pipe, compile_fn)
    rig.inbox.send(request(1))  # waiting when the worker became ready, as the instrument's first requests
    rig.thread.start()
    rig.take_until(Compiled)
    rig.inbox.send(request(2))
    rig.take_until(ClipReady)
    rig.close()
    assert kinds(rig.messages) == ["ClipReady", "Compiled", "ClipReady"]
    assert calls == [(1, 2)]  # once, for batch sizes 1 and max_batch
    compiled = next(m for m in rig.messages if isinstance(m, Compiled))
    assert (compiled.seconds, compiled.reused) == (0.5, 3)


def test_with_no_request_it_compiles_after_the_wait(pipe: Any) -> None:
    rig = Rig(pipe, lambda p, sizes: (0.1, 0))
    t0 = time.monotonic()
    rig.thread.start()
    rig.take_until(Compiled)
    waited = time.monotonic() - t0
    rig.close()
    assert FIRST_REQUEST_WAIT <= waited < FIRST_REQUEST_WAIT + 5
    assert kinds(rig.messages) == ["Compiled"]


def test_a_failed_compile_is_said_once_and_generation_goes_on(pipe: Any) -> None:
    def compile_fn(p: Any, sizes: tuple[int, ...]) -> tuple[float, int]:
        raise RuntimeError("no Triton\nfor this GPU")

    rig = Rig(pipe, compile_fn)
    rig.inbox.send(request(1))
    rig.thread.start()
    rig.take_until(Failed)
    rig.inbox.send(request(2))
    rig.take_until(ClipReady)
    rig.inbox.send(request(3))
    rig.take_until(ClipReady)
    rig.close()
    assert kinds(rig.messages) == ["ClipReady", "Failed", "ClipReady", "ClipReady"]
    failed = next(m for m in rig.messages if isinstance(m, Failed))
    assert failed.message == ("generator: compiling failed (RuntimeError: no Triton for this GPU): "
                              "generating without it, slower")
    assert not failed.fatal and failed.ids == ()


def test_without_a_compile_nothing_waits(pipe: Any) -> None:
    rig = Rig(pipe, None)
    rig.thread.start()
    rig.inbox.send(request(1))
    rig.take_until(ClipReady)
    rig.close()
    assert kinds(rig.messages) == ["ClipReady"]


def test_compile_and_warm_restores_the_eager_transformer_when_it_fails(pipe: Any, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from instrument.generator import compile_cache

    eager = pipe.model.transformer

    class Broken(torch.nn.Module):
        def forward(self, **kw: Any) -> Any:
            raise RuntimeError("inductor failed")

    def broken(self: Any, mode: str | None = None) -> None:
        self.model.transformer = Broken()

    monkeypatch.setattr(type(pipe), "compile", broken)
    with pytest.raises(RuntimeError, match="inductor failed"):
        compile_cache.compile_and_warm(pipe, (1,), root=tmp_path)
    assert pipe.model.transformer is eager
