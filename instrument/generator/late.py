"""A generator client that works out its worker's settings on a thread, for a first sound at once.

Choosing the model and the backend imports torch, diffusers and transformers into the instrument's
process (seconds; ten on a busy two-core machine). `endless play` with an archive to play from
starts its audio first and lets `LateClient` do that meanwhile: until the `WorkerSpec` is made the
client is "loading", like a worker loading its model; the worker is spawned at the first poll after.
A spec that cannot be made (no such model, no GPU for --backend cuda) fails the client in one line,
and the set plays on from the archive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from instrument.errors import EndlessError
from instrument.generator.protocol import FromWorker, WorkerSpec
from instrument.generator.worker import GeneratorClient

__all__ = ["LateClient"]


class LateClient(GeneratorClient):
    def __init__(self, make_spec: Callable[[], WorkerSpec]) -> None:
        super().__init__(WorkerSpec())  # a stand-in until `make_spec` has made the real one
        self._make_spec = make_spec
        self._made: WorkerSpec | None = None
        self._why = ""
        self._done = threading.Event()
        self._asked = False

    def start(self) -> None:
        if self._made is not None:  # a restart, or the first start once the spec is made
            super().start()
            return
        if not self._asked:
            self._asked = True
            self.state = "loading"
            threading.Thread(target=self._make, name="endless-generator-spec", daemon=True).start()

    def _make(self) -> None:
        try:
            spec = self._make_spec()
        except EndlessError as e:
            self._why = str(e)
        except Exception as e:  # an import that fails in this environment: said, never a traceback mid-set
            self._why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        else:
            self._made = spec
        finally:
            self._done.set()

    def poll(self, timeout: float = 0.0) -> list[FromWorker]:
        if self.pid is None and self.state == "loading":
            if not self._done.wait(timeout):
                return []
            if self._made is None:
                self.state, self.error = "failed", self._why
                self.on_event(f"the generator failed: {self._why}")
                return []
            self.spec = self._made
            super().start()
        return super().poll(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.state = "stopped"
