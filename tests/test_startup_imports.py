"""Start-up without the model stack: choosing the model and the backend (what the instrument does
before it spawns the generator's worker) imports neither torch nor diffusers nor transformers,
which take seconds and which the worker imports again anyway."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CODE = """
import sys
from instrument.build import _spec
from instrument.config import SourceConfig
from instrument.generator.backends import choose_backend, cuda_devices_without_torch
spec = _spec(SourceConfig(model="tiny", backend="{backend}"), 44100, False)
print(spec.device, choose_backend("cpu"), cuda_devices_without_torch())
print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""


def test_choosing_the_model_and_backend_imports_no_model_stack() -> None:
    for backend in ("auto", "cpu"):
        out = subprocess.run([sys.executable, "-c", CODE.format(backend=backend)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[-1] == "[]", (backend, out.stdout)  # nothing of the model stack was imported
        assert lines[0].startswith("cpu ('cpu', 'float32', 'float32')"), lines  # this machine has no GPU


def test_the_probe_agrees_with_torch() -> None:
    import torch

    from instrument.generator.backends import cuda_devices_without_torch

    gpus = cuda_devices_without_torch()
    assert gpus is None or gpus == torch.cuda.device_count()
