"""What `endless play` and `endless render` are asked to do, as typed settings.

`instrument/cli.py` turns flags into these; library code and tests build them directly. Each checks
its own values when made (a ConfigError naming the flag, what is allowed and the fix), so a bad
setting never gets as far as opening a device or starting the generator. Parameter defaults are
not repeated here: `settings` holds values for registry parameters (`instrument/params.py`), and
whatever it does not name keeps the registry's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from instrument.control.midi import MidiConfig
from instrument.control.osc import OscConfig
from instrument.errors import ConfigError
from instrument.rt import LOOKAHEAD_S

BACKENDS = ("auto", "cuda", "mps", "coreml", "cpu")  # --backend (instrument/generator/backends.py chooses)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_backend(backend: str) -> None:
    check(backend in BACKENDS, f"--backend {backend}: allowed {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class SourceConfig:
    """Where clips come from: the generator (a model on a backend), a folder of files, or the demo."""

    model: str = "auto"  # auto, tangoflux, tiny, or a checkpoint folder
    backend: str = "auto"  # auto, cuda, mps, coreml, cpu
    compute_units: str = "ALL"  # --backend coreml
    coreml_package: Path | None = None
    prompts: tuple[str, ...] = ()  # slot 1, 2, ...; none given: the built-in prompts
    max_batch: int = 4
    generator_nice: int = 10
    clips: Path | None = None  # a folder of audio files instead of the generator
    demo: bool = False  # the built-in demo textures instead of the generator
    assign: Literal["auto", "round-robin", "subfolder"] = "auto"  # how files spread over slots
    seed: int = 0
    archive: Path | None = None  # where generated clips are kept; None: $ENDLESS_ARCHIVE, else the user data folder
    no_archive: bool = False  # keep nothing (and fall back to looping)
    archive_max_clips: int | None = None  # the archive's limits (least recently played go first); None: none
    archive_max_gb: float | None = None

    def __post_init__(self) -> None:
        # checked here, not only where the backend is chosen: with an archive to play from, `play` chooses
        # it after the audio has started (generator/late.py), where a typo would be a log line, not an exit
        check_backend(self.backend)
        check(1 <= self.max_batch <= 16, f"--max-batch {self.max_batch}: allowed 1..16")
        check(self.archive_max_clips is None or 1 <= self.archive_max_clips <= 10_000_000,
              f"--archive-max-clips {self.archive_max_clips}: allowed 1..10000000 (leave it out for no limit)")
        check(self.archive_max_gb is None or 0.001 <= self.archive_max_gb <= 100_000,
              f"--archive-max-gb {self.archive_max_gb}: allowed 0.001..100000 GB (leave it out for no limit)")
        check(not (self.no_archive and self.archive is not None), "--archive and --no-archive: give one of them")
        check(self.archive is None or self.generates,
              f"--archive {self.archive}: the archive keeps generated clips: drop it with --clips/--demo")
        check(self.archive is None or not self.archive.is_file(),
              f"--archive {self.archive}: that is a file: give a folder (it is made if missing)")
        check(0 <= self.generator_nice <= 19,
              f"--generator-nice {self.generator_nice}: allowed 0..19 (0: same priority as the audio)")
        check(not (self.prompts and (self.clips is not None or self.demo)),
              "--prompt needs the generator: drop --clips/--demo")

    @property
    def generates(self) -> bool:
        return self.clips is None and not self.demo


@dataclass(frozen=True)
class EngineConfig:
    """The instrument's shape and starting state (everything but the output and the controls)."""

    slots: int = 4
    lookahead_ms: float = LOOKAHEAD_S * 1000  # the limiter's look-ahead
    max_block: int = 4096  # the largest block the mixer renders at once
    settings: dict[str, float | str] = field(default_factory=dict)  # registry parameter name -> value
    script: Path | None = None  # timed control events (JSON lines)
    source: SourceConfig = SourceConfig()

    def __post_init__(self) -> None:
        check(1 <= self.slots <= 16, f"--slots {self.slots}: allowed 1..16")
        check(0.05 <= self.lookahead_ms <= 5, f"--lookahead {self.lookahead_ms:g}: allowed 0.05..5 ms")
        check(len(self.source.prompts) <= self.slots,
              f"--prompt given {len(self.source.prompts)} times for {self.slots} slots: give at most one per slot, "
              "or raise --slots")


@dataclass(frozen=True)
class OutputConfig:
    device: str | None = None  # index or part of a name; None: the default output
    samplerate: int | None = None  # None: the device's own
    blocksize: int = 0  # frames per callback; 0: the host's choice
    latency: str | float = "low"  # "low", "high" or seconds

    def __post_init__(self) -> None:
        check(0 <= self.blocksize <= 16384, f"--blocksize {self.blocksize}: allowed 0..16384")
        check(self.samplerate is None or 8000 <= self.samplerate <= 384000,
              f"--samplerate {self.samplerate}: allowed 8000..384000 Hz")
        check(self.latency in ("low", "high") or (isinstance(self.latency, float) and 0 < self.latency <= 2),
              f"--latency {self.latency!r}: use low, high or a number of seconds (up to 2)")


@dataclass(frozen=True)
class PlayConfig:
    """Everything `endless play` runs: see `instrument.live.Instrument`."""

    engine: EngineConfig = EngineConfig()
    output: OutputConfig = OutputConfig()
    seconds: float | None = None  # stop after this much output; None: until Ctrl-C
    record: Path | None = None  # record the whole set to this file
    record_dir: Path = Path(".")  # where /record takes go
    stats: Path | None = None  # the set's audio statistics as JSON, at the end
    log_control: Path | None = None  # every accepted change, as a control script
    osc: OscConfig = OscConfig()
    midi: MidiConfig | None = None  # None: no MIDI
    mapping: Path | None = None  # the controller mapping (MIDI learn saves into it)
    presets: Path | None = None  # the user preset folder; None: the user data folder

    def __post_init__(self) -> None:
        check(self.seconds is None or self.seconds > 0, f"--seconds {self.seconds}: must be > 0")
        check(self.stats is None or self.stats.parent.is_dir(),
              f"--stats {self.stats}: folder {self.stats.parent if self.stats else ''} does not exist: create it first")
