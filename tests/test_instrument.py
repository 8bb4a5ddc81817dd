"""The Instrument object: built complete, in order, and torn down on one path, whatever failed.

These build it without opening the audio stream (`run()` does that; the JACK tests in test_live.py
run the whole `endless play`): the sample rate is given, so no device is asked."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from instrument.config import EngineConfig, OutputConfig, PlayConfig, SourceConfig
from instrument.control.osc import OscConfig
from instrument.errors import ConfigError
from instrument.live import Instrument


def config(folder: Path, tmp_path: Path, port: int = 0) -> PlayConfig:
    return PlayConfig(engine=EngineConfig(slots=2, source=SourceConfig(clips=folder), settings={"xfade": 0.5}),
                      output=OutputConfig(samplerate=44100), log_control=tmp_path / "log.jsonl",
                      record_dir=tmp_path, osc=OscConfig(port=port), presets=tmp_path / "presets")


def threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.is_alive()}


def test_built_whole_and_closed_whole(noise_folder: Path, tmp_path: Path) -> None:
    before = threads()
    inst = Instrument(config(noise_folder, tmp_path))
    assert inst.engine.cfg.xfade == 0.5 and inst.midi is None and inst.osc.port > 0
    assert inst.actions.recording is inst.recording  # the record action reaches the same switch OSC uses
    port = inst.osc.port
    assert threads() - before  # the OSC receiver and sender, the control log's writer
    inst.close()
    inst.close()  # idempotent
    assert threads() - before == set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the port is free again
    assert (tmp_path / "log.jsonl").read_text().count("\n") > 0  # the starting state was written out


def test_a_failure_midway_tears_down_what_was_built(noise_folder: Path, tmp_path: Path) -> None:
    before = threads()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(ConfigError, match="--osc-port"):
            Instrument(config(noise_folder, tmp_path, port=taken.getsockname()[1]))
    assert threads() - before == set()  # the control log's writer (built before OSC) is gone too


def test_bad_settings_fail_before_anything_is_built(noise_folder: Path, tmp_path: Path) -> None:
    before = threads()
    with pytest.raises(ConfigError, match=r"--xfade"):
        Instrument(PlayConfig(engine=EngineConfig(source=SourceConfig(clips=noise_folder), settings={"xfade": -3}),
                              output=OutputConfig(samplerate=44100), log_control=tmp_path / "log.jsonl"))
    assert not (tmp_path / "log.jsonl").exists() and threads() - before == set()
    with pytest.raises(ConfigError, match="--slots 17: allowed 1..16"):
        EngineConfig(slots=17)
    with pytest.raises(ConfigError, match="not a setting"):
        Instrument(PlayConfig(engine=EngineConfig(source=SourceConfig(clips=noise_folder), settings={"nope": 1}),
                              output=OutputConfig(samplerate=44100)))
