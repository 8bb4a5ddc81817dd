"""Actions: what a performer triggers rather than sets (presets, MIDI learn, recording).

Each action is declared once, in `ACTIONS`, with its arguments as OSC takes them; OSC reaches it
at `<prefix>/<path>`, a MIDI binding (`action = "preset/recall"`, with `preset` and `glide`, or
`args = [...]`) reaches the same code with the same arguments. Actions may read or write files
(presets, mappings, recordings), so the control bus runs them on the control thread, never on an
input's own thread.

>>> [a.path for a in ACTIONS][:3]
['preset/store', 'preset/recall', 'preset/arm']
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from instrument.control.arming import ArmingScheduler
from instrument.control.presets import PresetStore, slugify
from instrument.errors import EndlessError, ParamError
from instrument.params import check_glide

if TYPE_CHECKING:
    from instrument.engine import Engine


@dataclass(frozen=True)
class Action:
    path: str  # below the prefix: "preset/recall"
    args: str  # the arguments, as the reference shows them
    doc: str


ACTIONS: tuple[Action, ...] = (
    Action("preset/store", "name", "Store every slot's prompt, generation and mix settings as preset `name`."),
    Action("preset/recall", "name or number [glide]",
           "Recall a preset (a name, or a number in the preset list), gliding mix settings over `glide` seconds "
           "(default: the preset's own, else each parameter's smoothing). From MIDI: on `program = \"any\"` without a preset, "
           "program change N recalls preset number N + 1."),
    Action("preset/arm", "name or number", "Pre-generate the preset's clips so its recall plays new material at once."),
    Action("preset/next", "[glide]", "Recall the next preset in the list (after the last one recalled)."),
    Action("preset/previous", "[glide]", "Recall the previous preset in the list."),
    Action("learn", "[address or action] [preset]",
           "MIDI learn: bind the next control that moves to this parameter address (or action); no argument "
           "cancels. Answered with `/done learn <binding>` once bound."),
    Action("record", "[1 or 0] [name]",
           "Start (1) or stop (0) recording the output (no argument: toggle); `name` is a file name (`take1.wav`, "
           "`.flac`), no folders. Answered, and sent to subscribers, with `/record <1 or 0> <path>`."),
    Action("record/start", "[name]", "Same as `/record 1 [name]`."),
    Action("record/stop", "", "Same as `/record 0`."),
)
BY_PATH = {a.path: a for a in ACTIONS}
PRESET_ACTIONS = tuple(a.path for a in ACTIONS if a.path.startswith("preset/"))
RECORD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}\.(wav|flac)")


@dataclass(frozen=True)
class Done:
    """What an action answers: `/done <path> <text>`, or for recording `/record <on> <path>` (also to
    every subscriber)."""

    path: str
    text: str
    recording: bool | None = None  # set for record actions: on or off now


class Recording(Protocol):
    """Starts and stops recording the live output (`instrument.render.RecordSwitch`)."""

    @property
    def active(self) -> bool: ...

    def __call__(self, start: bool, name: str | None) -> str: ...


class Actions:
    """The actions of one running instrument. `learn(target, preset)` is MIDI's learn (None when
    there is no MIDI input); `recording` the record switch (None offline)."""

    def __init__(self, engine: Engine, presets: PresetStore, learn: Callable[[str | None, str | int | None], None] | None
                 = None, recording: Recording | None = None) -> None:
        self.engine = engine
        self.presets = presets
        self.learn_hook = learn
        self.recording = recording
        self.current: str | None = None  # the slug recalled or stored last (for next/previous)
        # told every action's answer, whoever triggered it (OSC tells its subscribers a recording
        # started from MIDI, or a control MIDI learn bound); called holding the engine lock
        self.listeners: list[Callable[[Done], None]] = []

    def announce(self, done: Done) -> None:
        for fn in self.listeners:
            fn(done)

    def run(self, path: str, args: tuple[object, ...]) -> Done | None:
        """Run action `path` with OSC-style `args` (ParamError, naming the action, for bad ones)."""
        return self.plan(path, args)()

    def plan(self, path: str, args: tuple[object, ...]) -> Callable[[], Done | None]:
        """Check `path` and `args` (the arguments, that the preset exists, that recording can start or
        stop) and return what runs it, changing nothing yet: a bundle checks all its messages first.
        Running it announces its answer to `listeners`."""
        act = self._plan(path, args)

        def run() -> Done | None:
            done = act()
            if done is not None:
                self.announce(done)
            return done

        return run

    def _plan(self, path: str, args: tuple[object, ...]) -> Callable[[], Done | None]:
        where = f"{self.engine.registry.prefix}/{path}"
        if path == "preset/store":
            name = _text(_one(args, where, 1), where)
            slugify(name)  # raises for a name that cannot be a file
            return lambda: self._store(path, name)
        if path in ("preset/recall", "preset/arm"):
            preset = _preset(_one(args, where, 2 if path == "preset/recall" else 1), where)
            self.presets.load(preset, self.engine.registry)  # raises for a preset not there, or not readable
            if path == "preset/arm":
                if not isinstance(self.engine.generator, ArmingScheduler):
                    raise ParamError(f"{where}: arming needs the generator (this instrument plays clips from a folder)")
                return lambda: self._arm(path, preset)
            glide = _glide(args, 1, where)
            return lambda: self._recall(path, preset, glide)
        if path in ("preset/next", "preset/previous"):
            _most(args, 1, where)
            names = self.presets.names()
            if not names:
                raise ParamError(f"{where}: no presets stored yet: send {self.engine.registry.prefix}/preset/store NAME")
            step = 1 if path == "preset/next" else -1
            i = names.index(self.current) if self.current in names else (-1 if step > 0 else 0)
            glide = _glide(args, 0, where)
            return lambda: self._recall(path, names[(i + step) % len(names)], glide)
        if path == "learn":
            _most(args, 2, where)
            hook = self.learn_hook
            if hook is None:
                raise ParamError(f"{where}: MIDI learn needs MIDI input: start with --midi-in PATTERN (or --midi-virtual)")
            target = None if not args else _text(args[0], where)
            bound = _preset(args[1], where) if len(args) > 1 else None
            return lambda: hook(target, bound)
        if path in ("record", "record/start", "record/stop"):
            return self._plan_record(path, args, where)
        raise ParamError(f"{where}: not an action: allowed {', '.join(BY_PATH)}")

    def _store(self, path: str, name: str) -> Done:
        stored = self.presets.store(self.engine, name)
        self.current = stored.stem
        return Done(path, name)

    def _arm(self, path: str, preset: str | int) -> Done:
        clips = self.presets.arm(self.engine, preset)
        return Done(path, f"{self.presets.load(preset, self.engine.registry).name} ({clips} clips)")

    def _recall(self, path: str, name: str | int, glide: float | None) -> Done:
        q = self.engine.quantized_frame()  # on the next beat or bar when quantizing, else at once
        result = self.presets.recall(self.engine, name, glide, -1 if q is None else q)
        self.current = result.preset.slug
        skipped = f" (skipped: {', '.join(result.skipped)})" if result.skipped else ""
        return Done(path, result.preset.name + skipped)

    def _plan_record(self, path: str, args: tuple[object, ...], where: str) -> Callable[[], Done]:
        recording = self.recording
        if recording is None:
            raise ParamError(f"{where}: recording is not available here (only `endless play` records)")
        if path != "record" and args and args[0] in (1, True):
            args = args[1:]  # a button's press (TouchOSC sends 1, then 0 on release): no argument
        if path == "record/start":
            _most(args, 1, where)
            start, rest = True, args
        elif path == "record/stop":
            _most(args, 0, where)
            start, rest = False, ()
        else:
            _most(args, 2, where)
            start = not recording.active if not args else _switch(args[0], where)
            rest = args[1:]
        name = None
        if rest:
            if not (start and isinstance(rest[0], str) and RECORD_NAME.fullmatch(rest[0])):
                raise ParamError(f"{where}: {rest[0]!r} is not a recording name: give a file name like take1.wav or "
                                 "take1.flac, without folders")
            name = rest[0]
        if start == recording.active:
            raise ParamError(f"{where}: " + ("already recording: send /record 0 first" if start
                                             else "not recording: send /record 1 [name] first"))
        def run() -> Done:
            try:
                return Done(path, str(recording(start, name)), recording=start)
            except EndlessError:
                if not start and not recording.active:  # the take ended anyway (its disk filled): say so
                    self.announce(Done(path, "", recording=False))
                raise

        return run


def _one(args: tuple[object, ...], where: str, most: int) -> object:
    if not args:
        raise ParamError(f"{where}: expected an argument, got none")
    _most(args, most, where)
    return args[0]


def _most(args: tuple[object, ...], n: int, where: str) -> None:
    if len(args) > n:
        raise ParamError(f"{where}: takes at most {n} argument{'s' if n != 1 else ''}, got {len(args)}")


def _text(v: object, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ParamError(f"{where}: {v!r}: expected a name in text")
    return v


def _preset(v: object, where: str) -> str | int:
    """A preset by name, or by number in the list (Pd sends numbers as floats)."""
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v == int(v) and v >= 1:
        return int(v)
    raise ParamError(f"{where}: {v!r}: give a preset name, or its number in the list (1, 2, ...)")


def _glide(args: tuple[object, ...], i: int, where: str) -> float | None:
    if len(args) <= i:
        return None
    return check_glide(args[i], f"{where}: glide")


def _switch(v: object, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise ParamError(f"{where}: {v!r}: allowed 1 (start) or 0 (stop)")

