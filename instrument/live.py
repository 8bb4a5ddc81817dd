"""The running performance: one `Instrument` builds, owns and tears down everything `endless play`
runs.

Built in this order, each piece complete when made (nothing is patched afterwards):
  1. the output device is found and its rate read (no stream yet);
  2. the engine: the mixer (the C core), the clip source (generator worker process, or files), the
     starting values and the script (`instrument.build`);
  3. the set's recorder (`--record`, tapping from frame 0) and the control log (`--log-control`);
  4. the control bus, which every input submits to;
  5. MIDI (ports, mapping, feedback sender), the actions (presets, learn, record), OSC (sockets,
     routes, feedback);
and `run()` opens the audio stream and runs the control loop until `seconds` or Ctrl-C.
`close()` is the one teardown path: the reverse order, each step whatever happened before it.

How a change travels, e.g. an OSC gain: the OSC receiver thread parses and checks the datagram and
submits one Job to the bus; the bus runs it on that thread at once when the engine is free (else the
control loop runs it within a tick); the job's `Engine.set` writes a command into the mixer's
ring; the C callback applies it at its next block (`docs/design.md`, "How a change travels").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from instrument.audio import AudioStalledError, PlaySummary, device_rate, find_device, play
from instrument.build import build_engine
from instrument.config import PlayConfig
from instrument.control.actions import Actions
from instrument.control.bus import ControlBus
from instrument.control.mapfile import Mapping, load_mapping
from instrument.control.midi import MidiControl, default_learn_path
from instrument.control.osc import OscServer
from instrument.control.presets import PresetStore
from instrument.control.surface import Surface
from instrument.controllog import ControlLog
from instrument.engine import Engine
from instrument.errors import ParamError
from instrument.render import Recorder, RecordSwitch, check_output_path

log = logging.getLogger(__name__)

Status = Callable[[Engine], None]


class Instrument:
    """`with Instrument(cfg) as inst: summary = inst.run()`; see the module's docstring."""

    def __init__(self, cfg: PlayConfig, status: Status | None = None) -> None:
        self.cfg = cfg
        self.status = status
        self._teardown = contextlib.ExitStack()
        try:
            self._build(cfg)
        except BaseException:
            self._teardown.close()
            raise

    def _build(self, cfg: PlayConfig) -> None:
        stack = self._teardown
        if cfg.record is not None:
            check_output_path(cfg.record)
        self.device = find_device(cfg.output.device)
        self.rate = cfg.output.samplerate or device_rate(self.device)
        self.engine = build_engine(cfg.engine, self.rate, cfg.output.blocksize, live=True)
        if self.engine.source is not None:
            stack.callback(self.engine.source.close)
        frames = -1 if cfg.seconds is None else int(round(cfg.seconds * self.rate))
        self.recorder = Recorder(cfg.record, self.engine.mixer, frames) if cfg.record is not None else None
        if self.recorder is not None:
            stack.callback(self.recorder.close)
        self.control_log = ControlLog(cfg.log_control, self.engine) if cfg.log_control is not None else None
        if self.control_log is not None:
            stack.callback(self.control_log.close)
        self.bus = ControlBus(self.engine)
        self.recording = RecordSwitch(cfg.record_dir, self.engine.mixer)
        stack.callback(self.recording.close)
        self.midi: MidiControl | None = None  # the learn action asks it, once it is there
        self.actions = Actions(self.engine, PresetStore(cfg.presets), learn=self._learn, recording=self.recording)
        self.midi = self._midi(cfg)
        if self.midi is not None:
            stack.callback(self.midi.close)
            self.midi.start()
        self.osc = OscServer(self.bus, cfg.osc, self.actions)
        stack.callback(self.osc.stop)
        self.osc.start()

    def _midi(self, cfg: PlayConfig) -> MidiControl | None:
        if cfg.midi is None:
            return None
        path = cfg.mapping or default_learn_path()
        mapping = load_mapping(path, self.engine.registry) if cfg.mapping is not None or path.exists() else Mapping()
        return MidiControl(cfg.midi, Surface(mapping, self.engine.registry), self.bus, self.actions)

    def _learn(self, target: str | None, preset: str | int | None) -> None:
        """The learn action: MIDI learn when there is MIDI input."""
        if self.midi is None:
            raise ParamError("MIDI learn needs MIDI input: start with --midi-in PATTERN (or --midi-virtual)")
        self.midi.learn(target, preset)

    def _tick(self, engine: Engine) -> None:
        """One control-loop tick's input work (holding the engine lock): what waits on the bus, then
        the status for OSC subscribers and MIDI's learn window."""
        self.bus.drain()
        self.osc.tick()
        if self.midi is not None:
            self.midi.tick()

    def run(self) -> PlaySummary:
        """Play until `seconds` of output (or Ctrl-C); write `--stats`; return the summary. A device
        that stopped calling back raises AudioStalledError, its summary written to `--stats` too."""
        out = self.cfg.output
        status = self.status
        stalled = None
        try:
            summary = play(self.engine, self.device, out.blocksize, out.latency, self.cfg.seconds, self.recorder,
                           (lambda e, _o: status(e)) if status is not None else None, ticks=[self._tick],
                           wake=self.bus.wake)
        except AudioStalledError as e:
            if e.summary is None:
                raise
            stalled, summary = e, e.summary
        summary = dataclasses.replace(summary, recording_errors=summary.recording_errors + self.recording.errors)
        if self.cfg.stats is not None:
            _write_stats(self.cfg.stats, summary)
        if stalled is not None:
            stalled.summary = summary
            raise stalled
        return summary

    def close(self) -> None:
        self._teardown.close()

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_stats(path: Path, summary: PlaySummary) -> None:
    try:
        stats = {k: None if isinstance(v, float) and v != v else v for k, v in dataclasses.asdict(summary).items()}
        path.write_text(json.dumps(dict(stats, pid=os.getpid())) + "\n")
    except OSError as e:
        log.error("--stats %s: cannot write it (%s)", path, e)
