"""The `endless` command line: play, render, devices, doctor, demo-clips.

Library code never sees argparse: this module builds the config dataclasses, turns every
EndlessError into one line on stderr and an exit code (`--verbose` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from instrument import __version__, logs
from instrument.archive_cli import add_parser as add_archive_parser
from instrument.archive_cli import cmd_archive
from instrument.config import EngineConfig, OutputConfig, PlayConfig, SourceConfig
from instrument.errors import ConfigError, EndlessError
from instrument.params import PARAMS
from instrument.rt import LOOKAHEAD_S

if TYPE_CHECKING:
    from instrument.engine import Engine

log = logging.getLogger("endless")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _registry_flags(ap: argparse.ArgumentParser) -> None:
    """Flags for the registry parameters marked cli=True, with their range and default."""
    for p in PARAMS:
        if not p.cli:
            continue
        if p.kind == "enum":
            ap.add_argument(f"--{p.name}", choices=p.choices, default=p.default,
                            help=f"{p.doc} (default {p.default})")
        else:
            every = " Sets every slot." if p.scope == "slot" else ""
            ap.add_argument(f"--{p.name}", type=float, default=p.default, metavar=p.unit.upper() or "X",
                            help=f"{p.doc}{every} ({p.min:g}..{p.max:g} {p.unit}, default {p.default})")


def _mix_args(ap: argparse.ArgumentParser) -> None:
    src = ap.add_argument_group("sound source (default: the generator, --model auto)")
    src.add_argument("--model", default="auto",
                     help="auto (TangoFlux if its weights are here, else the tiny stand-in), tangoflux, tiny, or a "
                          "checkpoint folder")
    src.add_argument("--model-dir", type=Path, metavar="DIR", help="a TangoFlux checkpoint folder (same as --model DIR)")
    src.add_argument("--backend", default="auto",
                     help="auto, cuda, mps, coreml or cpu (default auto: the fastest here)")
    src.add_argument("--compute-units", default="ALL", choices=("ALL", "CPU_AND_GPU", "CPU_AND_NE", "CPU_ONLY"),
                     help="--backend coreml: where Core ML may run the transformer (default ALL)")
    src.add_argument("--coreml-package", type=Path, metavar="PATH",
                     help="--backend coreml: the .mlpackage (default: the one `endless convert-coreml` wrote)")
    src.add_argument("--prompt", action="append", metavar="TEXT",
                     help="a slot's prompt or blend ('rain:0.7 | thunder:0.3'); repeat for slots 1, 2, ...")
    src.add_argument("--max-batch", type=int, default=4, metavar="N", help="slots generated in one call (default 4)")
    src.add_argument("--generator-nice", type=int, default=10, metavar="N",
                     help="lower the generator's CPU priority by N, 0..19, so it never delays the audio or a "
                          "control (default 10; on Linux any N > 0 also puts it in the idle scheduling class)")
    src.add_argument("--clips", type=Path, metavar="DIR",
                     help="play a folder of audio files instead of generating (subfolders: one per slot)")
    src.add_argument("--demo", action="store_true", help="play the built-in synthesized demo textures instead")
    arc = ap.add_argument_group("archive (every generated clip kept; --fallback archive plays from it)")
    arc.add_argument("--archive", type=Path, metavar="DIR",
                     help="where generated clips are kept (default: $ENDLESS_ARCHIVE, else the user data folder)")
    arc.add_argument("--no-archive", action="store_true", help="keep no clips (and fall back to looping)")
    arc.add_argument("--archive-max-clips", type=int, metavar="N",
                     help="keep at most N clips (the least recently played go first; default: no limit)")
    arc.add_argument("--archive-max-gb", type=float, metavar="X",
                     help="keep at most X GB of clips (the least recently played go first; default: no limit)")
    ap.add_argument("--assign", choices=("auto", "round-robin", "subfolder"), default="auto",
                    help="how files are spread over slots (default auto: by subfolder if there are any)")
    ap.add_argument("--slots", type=int, default=4, metavar="N", help="number of slots, 1..16 (default 4)")
    ap.add_argument("--lookahead", type=float, default=LOOKAHEAD_S * 1000, metavar="MS",
                    help=f"the -1 dBFS limiter's look-ahead, 0.05..5 ms (default {LOOKAHEAD_S * 1000:g}): the "
                         "output's delay behind every control; longer catches overs more gently")
    _registry_flags(ap)
    ap.add_argument("--script", type=Path, metavar="FILE",
                    help='timed control events, JSON lines {"t": s, "address": "/endless/...", "args": [...]}')
    ap.add_argument("--seed", type=int, default=0, help="seed for clip order (default 0: reproducible)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="endless", description="A live instrument that turns text prompts "
                                 "into an endless, evolving soundscape.")
    ap.add_argument("--version", action="version", version=f"endless {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("play", help="play live to an audio device")
    _mix_args(p)
    p.add_argument("--device", help="output device: index or part of its name (see `endless devices`)")
    p.add_argument("--samplerate", type=int, help="device rate in Hz (default: the device's own)")
    p.add_argument("--blocksize", type=int, default=0, help="frames per callback (default 0: the host's choice)")
    p.add_argument("--latency", default="low", help="'low', 'high' or seconds (default low)")
    p.add_argument("--record", type=Path, metavar="FILE", help="also record the output to FILE (.wav or .flac)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--stats", type=Path, metavar="FILE",
                   help="at the end, write the set's audio statistics as JSON to FILE (underflows and when, "
                        "starvations, callback durations, the process and audio thread ids)")
    p.add_argument("--log-control", type=Path, metavar="FILE",
                   help="record every accepted control change as a script (replay: endless render --script FILE)")
    p.add_argument("--log-file", type=Path, metavar="PATH",
                   help=f"also log to PATH (rotated at {logs.FILE_BYTES >> 20} MB, {logs.FILE_BACKUPS} old files kept; "
                        "a line repeated fast is counted, not repeated)")
    o = p.add_argument_group("OSC (docs/osc.md)")
    o.add_argument("--osc-port", type=int, default=9000, metavar="PORT", help="OSC over UDP (default 9000; 0: any)")
    o.add_argument("--osc-tcp-port", type=int, metavar="PORT", help="also OSC over TCP with SLIP framing (TouchOSC)")
    o.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for a LAN)")
    o.add_argument("--allow", action="append", default=[], metavar="ADDR[/BITS]",
                   help="with --listen: clients allowed besides loopback (repeatable; default: anyone)")
    o.add_argument("--record-dir", type=Path, default=Path("."), metavar="DIR",
                   help="where /endless/record writes its takes (default: the current folder)")
    g = p.add_argument_group("MIDI and presets (docs/mappings.md)")
    g.add_argument("--midi-in", action="append", default=[], metavar="PATTERN",
                   help="MIDI inputs whose name contains PATTERN or matches it as a regex; repeatable; ports "
                        "that appear later open then")
    g.add_argument("--midi-out", action="append", default=[], metavar="PATTERN",
                   help="MIDI outputs for feedback (LEDs, motor faders)")
    g.add_argument("--midi-virtual", action="store_true", help="also open virtual ports endless:in and endless-feedback:out")
    g.add_argument("--mapping", type=Path, metavar="FILE",
                   help="controller mapping (TOML, examples in mappings/); MIDI learn saves into it")
    g.add_argument("--presets", type=Path, metavar="DIR", help="user preset folder (default: the user data folder)")

    r = sub.add_parser("render", help="render offline to a file, faster than real time")
    _mix_args(r)
    r.add_argument("--seconds", type=float, required=True, help="length of the render")
    r.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file (.wav or .flac)")
    r.add_argument("--samplerate", type=int, default=44100, help="output rate in Hz (default 44100)")
    r.add_argument("--blocksize", type=int, default=512, help="frames per block (default 512)")
    r.add_argument("--stats", type=Path, metavar="FILE",
                   help="at the end, write the generator's timings as JSON to FILE (CLOCK_MONOTONIC ns: "
                        "first_clip_ns, compiled_ns; clips, starvations)")
    r.add_argument("--live-timing", action="store_true",
                   help="run the audio clock at real time instead of waiting for clips (shows starvation)")

    sub.add_parser("devices", help="list audio output devices")
    sub.add_parser("doctor", help="what is installed and usable here")
    sub.add_parser("docs", help="print the parameter and OSC reference (docs/osc.md)")
    f = sub.add_parser("fetch-model", help="download TangoFlux (or copy a checkpoint folder) for offline use")
    f.add_argument("--from", dest="source", type=Path, metavar="DIR", help="copy this checkpoint folder instead")
    c = sub.add_parser("convert-coreml", help="convert the transformer to a Core ML package (for --backend coreml)")
    c.add_argument("--model", default="tangoflux", help="tangoflux (default), tiny, or a checkpoint folder")
    c.add_argument("--out", type=Path, metavar="PATH",
                   help="the .mlpackage to write (default: the cache folder, where --backend coreml looks)")
    c.add_argument("--target", choices=("macOS14", "macOS15"),
                   help="the oldest macOS that will run it (default: the newest this Mac runs; macOS15 elsewhere)")
    c.add_argument("--force", action="store_true", help="convert even when an up-to-date package exists")
    d = sub.add_parser("demo-clips", help="write the built-in demo textures to a folder")
    d.add_argument("dir", type=Path, nargs="?", help="target folder (default: the cache)")
    add_archive_parser(sub)
    return ap


def _source_config(args: argparse.Namespace) -> SourceConfig:
    return SourceConfig(model=str(args.model_dir) if args.model_dir is not None else args.model, backend=args.backend,
                        compute_units=args.compute_units, coreml_package=args.coreml_package,
                        prompts=tuple(args.prompt or ()), max_batch=args.max_batch,
                        generator_nice=args.generator_nice, clips=args.clips, demo=args.demo, assign=args.assign,
                        seed=args.seed, archive=args.archive, no_archive=args.no_archive,
                        archive_max_clips=args.archive_max_clips, archive_max_gb=args.archive_max_gb)


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(slots=args.slots, lookahead_ms=args.lookahead, script=args.script,
                        settings={p.name: getattr(args, p.name) for p in PARAMS if p.cli},
                        source=_source_config(args))


def _latency(text: str) -> str | float:
    if text in ("low", "high"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--latency {text!r}: use low, high or a number of seconds") from None


def play_config(args: argparse.Namespace) -> PlayConfig:
    """`endless play`'s flags as the typed config the Instrument runs."""
    from instrument.control.midi import MidiConfig
    from instrument.control.osc import OscConfig

    midi = (MidiConfig(inputs=tuple(args.midi_in), outputs=tuple(args.midi_out), virtual=args.midi_virtual)
            if args.midi_in or args.midi_out or args.midi_virtual or args.mapping else None)
    return PlayConfig(engine=_engine_config(args),
                      output=OutputConfig(device=args.device, samplerate=args.samplerate, blocksize=args.blocksize,
                                          latency=_latency(args.latency)),
                      seconds=args.seconds, record=args.record, record_dir=args.record_dir, stats=args.stats,
                      log_control=args.log_control,
                      osc=OscConfig(host=args.listen, port=args.osc_port, tcp_port=args.osc_tcp_port,
                                    allow=tuple(args.allow)),
                      midi=midi, mapping=args.mapping, presets=args.presets)


def cmd_render(args: argparse.Namespace) -> int:
    from instrument.build import build_engine
    from instrument.render import check_output_path, render_file

    _check(args.seconds > 0, f"--seconds {args.seconds}: must be > 0")
    _check(1 <= args.blocksize <= 16384, f"--blocksize {args.blocksize}: allowed 1..16384")
    check_output_path(args.out)
    _check(args.stats is None or args.stats.parent.is_dir(),
           f"--stats {args.stats}: folder {args.stats.parent if args.stats else ''} does not exist: create it first")
    engine = build_engine(_engine_config(args), args.samplerate, args.blocksize, deterministic=not args.live_timing)
    t0 = time.perf_counter()
    bar = _Progress("render", engine) if sys.stderr.isatty() else None
    try:  # written as it renders: memory stays flat however long the render
        render_file(args.out, engine, args.seconds, args.blocksize, bar.update if bar else None, args.live_timing)
    finally:
        if engine.source is not None:
            engine.source.close()
    if bar:
        bar.done()
    wall = time.perf_counter() - t0
    st = engine.stats()
    print(f"wrote {args.out}: {args.seconds:g} s, {args.samplerate} Hz stereo, {args.seconds / wall:.1f}x real "
          f"time, {sum(st.starvations)} starvations, limiter {st.limiter_db:.1f} dB{_gen_summary(engine)}")
    if args.stats is not None:
        gs = engine.generator.stats if engine.generator is not None else None
        stats = {"first_clip_ns": gs.first_clip_ns if gs else 0, "compiled_ns": gs.compiled_ns if gs else 0,
                 "clips": gs.clips if gs else 0, "starvations": sum(st.starvations), "wall_s": wall, "pid": os.getpid()}
        try:
            args.stats.write_text(json.dumps(stats) + "\n")
        except OSError as e:
            raise ConfigError(f"--stats {args.stats}: cannot write it ({e.strerror or e}): choose a writable path") from e
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from instrument.audio import AudioStalledError, PlaySummary
    from instrument.live import Instrument

    with Instrument(play_config(args), _status_line if sys.stderr.isatty() else None) as inst:
        def done(summary: PlaySummary) -> None:
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            print(summary.line() + _gen_summary(inst.engine), flush=True)

        try:
            summary = inst.run()
        except AudioStalledError as e:  # the set ended there: its summary, then the error's line (exit 6)
            if e.summary is not None:
                done(e.summary)
            raise
        done(summary)
    return 0


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _gen_summary(engine: Engine) -> str:
    gen = engine.generator
    if gen is None:
        return ""
    s = gen.stats
    return (f"; generator: {s.clips} clips, {s.stale} stale, {s.nonfinite} non-finite, "
            f"{gen.client.restarts} restarts, last RTF {s.rtf:.3f}, {s.fallbacks} fallback clips")


def _status_line(engine: Engine) -> None:
    st = engine.stats()
    pairs = enumerate(zip(st.levels, st.buffered_seconds, strict=True))
    slots = " ".join(f"{i + 1}:{_meter(lv)}{b:4.0f}s" for i, (lv, b) in pairs)
    sys.stderr.write(f"\r{st.frames / engine.cfg.sample_rate:7.1f}s  {slots}  xruns {engine.mixer.underflows}  "
                     f"starved {sum(st.starvations)}  lim {st.limiter_db:4.1f}dB {_gen_status(engine)} ")
    sys.stderr.flush()


def _gen_status(engine: Engine) -> str:
    gen = engine.generator
    if gen is None:
        return ""
    c = gen.client
    prog = f" {c.progress.step}/{c.progress.steps}" if c.progress is not None else ""
    archive = f" archive {gen.stats.fallbacks}" if gen.stats.fallbacks else ""
    return f" gen {c.state}{prog} rtf {gen.stats.rtf:.2f}{archive}"


def _meter(level: float) -> str:
    db = 20 * math.log10(level) if level > 0 else -99.0
    n = max(0, min(5, int((db + 50) / 10)))
    return "#" * n + "." * (5 - n)


class _Progress:
    def __init__(self, label: str, engine: Engine | None = None) -> None:
        self.label = label
        self.engine = engine
        self.last = 0.0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = done / total
        extra = _gen_status(self.engine) if self.engine is not None else ""
        sys.stderr.write(f"\r{self.label} [{'#' * int(frac * 30):<30}] {frac * 100:5.1f}%{extra}   ")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def cmd_devices(args: argparse.Namespace) -> int:
    from instrument.audio import output_devices

    devices = output_devices()
    if not devices:
        print("no audio output devices (start JACK or connect one; `endless render` needs none)")
        return 1
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:3d}  {d['name']}  [{d['hostapi']}]  {d['channels']} ch  {d['samplerate']:.0f} Hz")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from instrument.doctor import run_checks

    bad = 0
    for check in run_checks():
        print(check.line())
        bad += check.status == "fail"
    return 1 if bad else 0


def cmd_docs(args: argparse.Namespace) -> int:
    from instrument.docs import osc_reference

    sys.stdout.write(osc_reference())
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from instrument.generator.backends import fetch_model

    path = fetch_model(args.source)
    print(f"TangoFlux is ready in {path}: `endless play` will use it")
    return 0


def cmd_convert_coreml(args: argparse.Namespace) -> int:
    from instrument.coreml.convert import convert_main

    path = convert_main(args.model, args.out, args.target, args.force)
    print(f"Core ML package ready: {path} (`endless play --backend coreml` uses it on a Mac)")
    return 0


def cmd_demo_clips(args: argparse.Namespace) -> int:
    from instrument.build import cache_dir
    from instrument.demo import write_demo_clips

    d = args.dir or cache_dir() / "demo-clips"
    files = write_demo_clips(d)
    print(f"{len(files)} demo clips in {d}")
    return 0


COMMANDS = {"play": cmd_play, "render": cmd_render, "devices": cmd_devices, "doctor": cmd_doctor, "docs": cmd_docs,
            "demo-clips": cmd_demo_clips, "fetch-model": cmd_fetch_model,
            "convert-coreml": cmd_convert_coreml, "archive": cmd_archive}


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return EXIT_USAGE
    try:
        logs.setup(args.verbose, getattr(args, "log_file", None))
        return COMMANDS[args.command](args)
    except EndlessError as e:
        if args.verbose:
            raise
        print(f"endless: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
