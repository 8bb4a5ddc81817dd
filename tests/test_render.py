"""Offline render written as it goes: the same samples as rendering into memory, in flat memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from instrument.build import build_engine
from instrument.config import EngineConfig, SourceConfig
from instrument.render import render, render_chunks, render_file


def test_a_render_written_as_it_goes_equals_one_in_memory(noise_folder: Path, tmp_path: Path) -> None:
    cfg = EngineConfig(slots=3, source=SourceConfig(clips=noise_folder, seed=3), settings={"xfade": 0.4})
    whole = render(build_engine(cfg, 44100), 5.3, 500)
    out = tmp_path / "r.wav"
    render_file(out, build_engine(cfg, 44100), 5.3, 500)
    written, rate = sf.read(out, dtype="float32")
    assert rate == 44100 and written.shape == whole.shape == (int(round(5.3 * 44100)), 2)
    np.testing.assert_array_equal(written, whole)  # float WAV: bit for bit, whatever the chunk edges
    sizes = [len(c) for c in render_chunks(build_engine(cfg, 44100), 5.3, 500, chunk_seconds=0.5)]
    assert max(sizes) == 22050 and sum(sizes) == len(whole)  # never more than a chunk held at once
