"""Build an engine and its clip source from an `EngineConfig` (shared by play and render)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from instrument.config import EngineConfig, SourceConfig, check
from instrument.engine import Engine
from instrument.errors import ConfigError, EndlessError
from instrument.params import PARAMS, Registry, Value, as_float
from instrument.rt import MixerConfig
from instrument.script import load_script
from instrument.sources import ClipSource, FolderSource

if TYPE_CHECKING:
    from instrument.fallback import ArchiveLink
    from instrument.generator.protocol import WorkerSpec

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "gentle rain falling on leaves in a quiet forest",
    "distant thunder rolling over hills",
    "wind blowing through tall pine trees",
    "birds chirping at dawn near a stream",
)
_MIXER_SETTINGS = ("xfade", "curve")  # registry parameters the mixer starts with (the rest are set as changes)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "endless"


def build_engine(cfg: EngineConfig, sample_rate: int, blocksize: int = 0, deterministic: bool = False,
                 live: bool = False) -> Engine:
    """The engine with its source, starting values (registry settings, prompts) and script.
    `deterministic` (an offline render): one clip per generator call, so batching never changes the
    numbers. `live`: quantized changes land far enough ahead of the audio to reach it."""
    check(8000 <= sample_rate <= 384000, f"--samplerate {sample_rate}: allowed 8000..384000 Hz")
    reg = Registry(slots=cfg.slots)
    settings = {name: _setting(reg, name, value) for name, value in cfg.settings.items()}
    script = load_script(cfg.script, reg) if cfg.script is not None else []
    mix = {p.key: settings[p.name] for p in PARAMS if p.key in _MIXER_SETTINGS and p.name in settings}
    mixer = MixerConfig(slots=cfg.slots, sample_rate=sample_rate, max_block=max(cfg.max_block, blocksize),
                        lookahead=cfg.lookahead_ms / 1000,
                        xfade=as_float(mix["xfade"]) if "xfade" in mix else None,
                        curve=str(mix["curve"]) if "curve" in mix else None)
    source = _source(cfg.source, mixer, sample_rate, deterministic)
    guard = int(0.03 * sample_rate) + 2 * (blocksize or 256) if live else 0
    engine = Engine(mixer, source, guard_frames=guard)
    try:
        if engine.generator is not None:  # how early a dry slot falls back follows the crossfade
            engine.generator.xfade = lambda: as_float(engine.values[("xfade", None)])
        for p in PARAMS:  # the other settings: changes from the start (every slot's only with a generator)
            if p.cli and p.key not in _MIXER_SETTINGS and (p.scope == "global" or engine.generator is not None):
                value = settings.get(p.name, p.default)
                for s in range(cfg.slots) if p.scope == "slot" else (None,):
                    engine.handle(p.address(reg.prefix, s), [value])
        if engine.generator is not None:
            _prompts(engine, cfg, {ev.address for ev in script if ev.t == 0 and ev.address.endswith("/prompt")})
        engine.load_script(script)
    except BaseException:
        if source is not None:
            source.close()
        raise
    return engine


def _setting(reg: Registry, name: str, value: object) -> Value:
    matches = [p for p in PARAMS if p.cli and p.name == name]
    if not matches:
        raise ConfigError(f"setting {name!r}: not a setting: allowed {', '.join(p.name for p in PARAMS if p.cli)}")
    try:
        return reg.check(matches[0], value, f"--{name}")
    except EndlessError as e:
        raise ConfigError(str(e)) from None


def _prompts(engine: Engine, cfg: EngineConfig, scripted: set[str]) -> None:
    """Every slot's first prompt: the one given, else (none given at all) a built-in one, unless the
    script sets it at t=0."""
    prompts = cfg.source.prompts
    for s in range(cfg.slots):
        addr = engine.registry["slot/prompt"].address(engine.registry.prefix, s)
        if addr in scripted:
            continue
        text = prompts[s] if s < len(prompts) else ("" if prompts else DEFAULT_PROMPTS[s % len(DEFAULT_PROMPTS)])
        engine.handle(addr, [text])


def _source(cfg: SourceConfig, mixer: MixerConfig, sample_rate: int, deterministic: bool) -> ClipSource:
    if not cfg.generates:
        folder = cfg.clips if cfg.clips is not None else _demo_dir(mixer.slots)
        return FolderSource(folder, mixer.slots, sample_rate, assign=cfg.assign, seed=cfg.seed)
    from instrument.control.arming import ArmingScheduler
    from instrument.generator.late import LateClient
    from instrument.generator.worker import GeneratorClient

    link = _archive(cfg, sample_rate, mixer.slots, live=not deterministic)
    try:
        if not deterministic and link is not None and link.clips_at_start:
            # sound from the archive first: the model stack is imported while it plays
            client: GeneratorClient = LateClient(lambda: _spec(cfg, sample_rate, deterministic))
        else:
            client = GeneratorClient(_spec(cfg, sample_rate, deterministic))
        client.start()
        sched = ArmingScheduler(client, mixer.slots, base_seed=cfg.seed)  # a Scheduler that can pre-generate presets
    except BaseException:
        if link is not None:
            link.close()
        raise
    sched.archive = link
    if deterministic:
        sched.fallback_lead = None  # a render waits for the generator: it falls back only once that is down
    return sched


def _spec(cfg: SourceConfig, sample_rate: int, deterministic: bool) -> WorkerSpec:
    """The generator worker's settings: the model and the backend chosen (imports torch: seconds)."""
    from instrument.generator.backends import TINY_WARNING, choose_backend, choose_model
    from instrument.generator.protocol import WorkerSpec

    choice = choose_model(cfg.model)
    device, dtype, vae_dtype = choose_backend(cfg.backend)
    if choice.stand_in:
        log.warning("\n%s", TINY_WARNING.rstrip())  # the banner on lines of its own
    log.info("generator: model %s on %s (%s)", choice.model, device, dtype)
    return WorkerSpec(model=choice.model, device=device, dtype=dtype, vae_dtype=vae_dtype, sample_rate=sample_rate,
                      max_batch=1 if deterministic else cfg.max_batch, allow_download=choice.allow_download,
                      nice=cfg.generator_nice, threads=0 if deterministic else live_threads(device),
                      coreml=cfg.backend == "coreml", compute_units=cfg.compute_units,
                      coreml_package=str(cfg.coreml_package) if cfg.coreml_package is not None else None,
                      load_delay=_load_delay())


def _load_delay() -> float:
    """$ENDLESS_LOAD_DELAY: seconds the worker waits before loading its model, so benchmarks can measure
    first sound against a slow-loading model on any machine (0 when unset)."""
    text = os.environ.get("ENDLESS_LOAD_DELAY", "").strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        value = -1.0
    check(0.0 <= value <= 600.0, f"ENDLESS_LOAD_DELAY={text!r}: allowed 0..600 seconds (unset it for none)")
    return value


def _archive(cfg: SourceConfig, sample_rate: int, slots: int, live: bool) -> ArchiveLink | None:
    """The archive every generated clip goes to and fallback clips come from (None: --no-archive)."""
    if cfg.no_archive:
        return None
    from instrument.fallback import ArchiveLink, archive_dir

    max_bytes = None if cfg.archive_max_gb is None else max(1, int(cfg.archive_max_gb * 1e9))
    return ArchiveLink(archive_dir(cfg.archive), slots, sample_rate, cfg.seed, cfg.archive_max_clips, max_bytes,
                       quick=live)


def live_threads(device: str) -> int:
    """Torch threads for a CPU generator playing live: every core but one, which stays for the audio
    and the controls (0, torch's default, on an accelerator and for an offline render)."""
    return max(1, (os.cpu_count() or 2) - 1) if device == "cpu" else 0


def _demo_dir(slots: int) -> Path:
    from instrument.demo import write_demo_clips

    d = cache_dir() / "demo-clips"
    write_demo_clips(d, slots=min(slots, 4))
    log.info("playing the built-in demo textures from %s", d)
    return d
