"""MIDI learn: which control moved, binding it to the target asked for, and saving the binding.

`MidiLearn` holds the learn in progress for one `Surface`. Everything here runs in the control
bus's jobs (holding the engine lock): `start` from the `learn` action, `feed` from the job of each
MIDI message that arrives while learning, `poll` from the job `MidiControl.tick` submits when the
window has passed. Those jobs never run on rtmidi's thread (`MidiControl` submits everything as
`immediate=False` while learning), since learning ends by writing the mapping file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from instrument.control.actions import BY_PATH
from instrument.control.mapfile import (
    LEARN_WINDOW,
    Binding,
    Mapping,
    format_control,
    mapping_to_toml,
    resolve_target,
)
from instrument.control.surface import Surface
from instrument.control.tomlfile import write_atomic
from instrument.errors import EndlessError, ParamError


def default_learn_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("endless")) / "mappings" / "learned.toml"


class Learner:
    """MIDI learn for one target: decides which control moved from the messages that follow.

    A note or a program change decides at once; CC messages are collected for `window` seconds
    (controllers send 14-bit and NRPN values as several CCs) and then: CC 99 + 98 + 6 is an NRPN
    (14 bits if CC 38 came too), CC N with CC N + 32 (N < 32) a 14-bit CC, else a 7-bit CC.
    """

    def __init__(self, target: str, preset: str | int | None = None, window: float = LEARN_WINDOW) -> None:
        self.target = target
        self.preset = preset
        self.window = window
        self.first: float | None = None
        self.ccs: list[tuple[int, int, int]] = []  # (channel, controller, value)

    def feed(self, data: Sequence[int], t: float) -> Binding | None:
        kind, ch = data[0] & 0xF0, data[0] & 0x0F
        if not self.ccs and kind == 0x90 and len(data) > 2 and data[2] > 0:
            return Binding("note", data[1], self.target, ch, preset=self.preset)
        if not self.ccs and kind == 0xC0:
            return Binding("program", data[1], self.target, ch, preset=self.preset)
        if kind == 0xB0 and len(data) > 2:
            if self.first is None:
                self.first = t
            self.ccs.append((ch, data[1], data[2]))
        return self.poll(t)

    def due(self, t: float) -> bool:
        """Has the window of CC messages closed by time `t`?"""
        return self.first is not None and t - self.first >= self.window

    def poll(self, t: float) -> Binding | None:
        if not self.due(t):
            return None
        ch = self.ccs[0][0]
        last = {cc: v for c, cc, v in self.ccs if c == ch}
        if {99, 98, 6} <= last.keys():
            return Binding("nrpn", last[99] << 7 | last[98], self.target, ch, bits=14 if 38 in last else 7,
                           preset=self.preset)
        first = self.ccs[0][1]
        if first < 32 and first + 32 in last:
            return Binding("cc14", first, self.target, ch, preset=self.preset)
        return Binding("cc", first, self.target, ch, preset=self.preset)


class MidiLearn:
    """The learn in progress (if any) for `surface`; learned controls are saved into the mapping's
    file, or `path` (default: `default_learn_path()`) when it has none. `on_event` hears what to
    tell the performer, `on_learned` each control bound (OSC answers `/done learn <binding>`)."""

    def __init__(self, surface: Surface, path: Path | None, on_event: Callable[[str], None],
                 on_learned: Callable[[Binding], None] | None = None) -> None:
        self.surface = surface
        self.path = path
        self.on_event = on_event
        self.on_learned = on_learned
        self._learner: Learner | None = None

    @property
    def learning(self) -> str | None:
        """The target being learned, None when not learning (read from any thread)."""
        lr = self._learner
        return None if lr is None else lr.target

    def start(self, target: str | None, preset: str | int | None = None) -> None:
        """Bind the next control that moves to `target` (an address or an action); None cancels."""
        if target is None or target == "":
            self._learner = None
            return
        if target not in BY_PATH:
            ref = resolve_target(target, self.surface.registry)
            if ref.param.kind in ("text", "weights"):
                raise ParamError(f"learn {target}: {ref.param.key} is not played from a control (write a "
                                 "[[control]] with value = ... in the mapping file instead)")
        elif target in ("preset/recall", "preset/arm") and preset is None:
            raise ParamError(f"learn {target}: name the preset too (learn {target} NAME)")
        self._learner = Learner(target, preset)
        self.on_event(f"MIDI learn: move a control for {target}")

    def feed(self, data: Sequence[int], t: float) -> None:
        """A message that arrived at `t` (time.monotonic()) while learning."""
        if self._learner is not None:
            self._learned(self._learner.feed(data, t))

    def due(self, t: float) -> bool:
        lr = self._learner
        return lr is not None and lr.due(t)

    def poll(self, t: float) -> None:
        """Decide, once the window of CC messages has closed."""
        if self._learner is not None:
            self._learned(self._learner.poll(t))

    def _learned(self, b: Binding | None) -> None:
        if b is None:
            return
        self._learner = None
        m = self.surface.mapping
        try:
            replaced = self.surface.add(b)
        except EndlessError as e:
            raise ParamError(f"MIDI learn {b.describe()}: {e}") from None
        path = save_learned(m, b, replaced, self.path or default_learn_path())
        self.on_event(f"MIDI learn: {b.describe()} saved to {path}")
        if self.on_learned is not None:
            self.on_learned(b)


def save_learned(m: Mapping, b: Binding, replaced: bool, fallback: Path) -> Path:
    """Save a learned control: appended to the file (keeping its comments) when it is new, the file
    rewritten when it replaced a binding; atomically either way."""
    path = m.path or fallback
    m.path = path
    if not replaced and path.exists():
        text = path.read_text(encoding="utf-8")
        write_atomic(path, text + ("" if text.endswith("\n") else "\n") + "\n" + format_control(b))
    else:
        write_atomic(path, mapping_to_toml(m))
    return path
