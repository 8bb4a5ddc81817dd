"""The scheduler: decides what the generator makes next, and hands finished clips to the slots.

It is a clip source (`next_clip`) fed by the worker. Each slot has a prompt and settings, at most
one request in flight and a target queue depth, so no backlog grows over a set of any length. The
next request goes to the slot whose audio runs out first; several slots go out together so the
worker can batch them. A prompt change bumps the slot's generation: its queued clips are flushed,
its in-flight request is cancelled, the new request jumps the worker's queue, and the first clip
of the new prompt crossfades in as soon as it arrives ("cut").

When the generator has nothing for a slot, the slot's `fallback` decides what it plays: `archive`
(with an `ArchiveLink`, `instrument/fallback.py`): a kept clip of a similar prompt, at once on a
prompt change and whenever the slot is about to run dry (nothing queued and less than the crossfade
plus `fallback_lead` seconds left), also while the model loads; `silence`: a fade to silence;
`loop`: the mixer crossfades the slot's clip into its own start. The first fresh clip after a
fallback cuts in at once. Live, that is all it takes; an offline render (`fallback_lead` None)
waits for the generator as before and falls back only once the generator is stopped or failed.
Every clip the generator makes is handed to the archive's writer as it arrives.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from instrument.blend import format_blend, parse_blend
from instrument.clips import Clip
from instrument.errors import ParamError
from instrument.fallback import FALLBACKS, ArchiveLink, silence
from instrument.generator.protocol import ClipReady, Compiled, Dropped, Failed, Request
from instrument.generator.worker import GeneratorClient
from instrument.sources import Player

log = logging.getLogger(__name__)


@dataclass
class SlotPlan:
    prompt: str = ""
    parts: tuple[str, ...] = ()  # the blend's prompts, in order, for live weights
    steps: int = 25
    guidance: float = 4.5
    seed: int = -1  # -1: a new seed per clip, derived from the base seed; >= 0: this seed every time
    seconds: float = 20.0
    generation: int = 0
    inflight: int | None = None
    count: int = 0  # requests made for this slot: drives the derived seeds
    cut: bool = False  # the next clip of this generation crossfades in as soon as it arrives
    inbox: deque[Clip] = field(default_factory=deque)
    fallback: str = "archive"  # what it plays when the generator has nothing for it (FALLBACKS)
    new_prompt: bool = False  # its prompt changed and no clip answered it yet: an archive clip cuts in
    covering: bool = False  # a fallback clip went out since its last fresh clip: the next fresh one cuts in


@dataclass
class GenStats:
    clips: int = 0
    stale: int = 0  # clips of an old prompt, dropped on arrival
    nonfinite: int = 0
    cancelled: int = 0
    failures: int = 0
    fallbacks: int = 0  # clips played from the archive (or silence) while the generator had none
    last_gen_seconds: float = 0.0
    rtf: float = 0.0  # generation time / audio time of the last call (< 1: faster than real time)
    first_clip_ns: int = 0  # when the first generated clip arrived (CLOCK_MONOTONIC; 0: none yet)
    compiled_ns: int = 0  # CUDA: when the worker finished compiling (full speed; CLOCK_MONOTONIC; 0: not yet)


def blend_parts(prompt: str) -> tuple[str, ...]:
    """The parts of a prompt or blend, in order, that `slot/weights` weighs (none for no prompt):
    the one count that the scheduler, the engine's batch check and preset files use."""
    return tuple(name for name, _ in parse_blend(prompt)) if prompt.strip() else ()


def check_weights(slot: int, weights: tuple[float, ...], parts: tuple[str, ...]) -> None:
    """Raise ParamError unless there is one weight per blend part."""
    if len(weights) != len(parts):
        raise ParamError(f"slot {slot + 1} weights: {len(weights)} given for a prompt of {len(parts)} "
                         f"part(s) ({' | '.join(parts) or 'no prompt'}): give one weight per part")


def weighted_prompt(parts: tuple[str, ...], weights: tuple[float, ...]) -> str:
    """The blend a slot plays once `weights` apply to its parts (parts at 0 left out); arming uses it too."""
    total = sum(weights)
    return format_blend([(n, w / total) for n, w in zip(parts, weights, strict=True) if w > 0])


class Scheduler:
    name = "generator"

    def __init__(self, client: GeneratorClient, slots: int, base_seed: int = 0, target_depth: int = 2) -> None:
        self.client = client
        self.plans = [SlotPlan() for _ in range(slots)]
        self.base_seed = base_seed
        self.target_depth = target_depth
        self.stats = GenStats()
        self.engine: Player | None = None
        self._next_id = 1
        self.fed_timeout = 600.0  # a render's longest wait for one clip (a first model load can be slow)
        self.on_event: Callable[[str], None] = lambda text: log.warning("%s", text)
        self.archive: ArchiveLink | None = None  # keeps every clip; gives the `archive` fallback's clips
        self.fallback_lead: float | None = 1.0  # s before the crossfade a dry slot falls back (None: render)
        self.xfade: Callable[[], float] = lambda: 4.0  # the crossfade time now (build.py: the engine's)

    def attach(self, engine: Player) -> None:
        self.engine = engine
        self.xfade = lambda: float(engine.cfg.xfade or 0.0)  # the starting one, until told the live one

    # -- settings --------------------------------------------------------------------------------
    def check(self, slot: int, key: str, value: object) -> None:
        """Raise ParamError for what set_prompt/set_weights would refuse (a bad blend, weights that
        do not fit the prompt), changing nothing: OSC checks a whole bundle with it first."""

        if key == "slot/prompt" and str(value).strip():
            try:
                parse_blend(str(value))
            except ValueError as e:
                raise ParamError(f"slot {slot + 1} prompt: {e}") from None
        if key == "slot/weights" and isinstance(value, tuple):
            check_weights(slot, value, self.plans[slot].parts)

    def set_prompt(self, slot: int, text: str) -> None:
        self.check(slot, "slot/prompt", text)
        p = self.plans[slot]
        if text == p.prompt:
            return
        p.prompt = text
        p.parts = blend_parts(text)
        self.regenerate(slot)
        p.new_prompt = bool(text)

    def set_weights(self, slot: int, weights: tuple[float, ...]) -> None:
        """New weights for the parts of the slot's blend (conditioning is mixed, not audio)."""
        self.check(slot, "slot/weights", weights)
        p = self.plans[slot]
        text = weighted_prompt(p.parts, weights)
        if text != p.prompt:
            p.prompt = text  # the parts stay: a weight at 0 can come back
            self.regenerate(slot)
            p.new_prompt = True

    def set(self, slot: int, key: str, value: float | str) -> None:
        p = self.plans[slot]
        if key == "fallback":
            if value not in FALLBACKS:
                raise ParamError(f"slot {slot + 1} fallback: {value!r} is not one of {', '.join(FALLBACKS)}")
            p.fallback = str(value)
            return
        value = float(value)
        if key == "steps":
            p.steps = int(value)
        elif key == "guidance":
            p.guidance = float(value)
        elif key == "seed":
            p.seed = int(value)
        elif key == "length":
            p.seconds = float(value)
        else:
            raise KeyError(key)

    def regenerate(self, slot: int) -> None:
        """Drop what is queued or in flight for the slot and make new clips now."""
        p = self.plans[slot]
        p.generation += 1
        if p.inflight is not None:
            self.client.cancel((p.inflight,))
            p.inflight = None
            self.stats.cancelled += 1
        p.inbox.clear()
        p.cut = True
        if self.engine is not None:
            self.engine.flush(slot)

    # -- clip source -----------------------------------------------------------------------------
    def next_clip(self, slot: int) -> Clip | None:
        inbox = self.plans[slot].inbox
        return inbox.popleft() if inbox else self._fallback(slot)

    def close(self) -> None:
        try:
            self.client.stop()
        finally:
            if self.archive is not None:
                self.archive.close()

    # -- fallback --------------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        """The generator makes nothing more (stopped, or failed for good)."""
        return self.client.state in ("failed", "stopped")

    def plays_while_loading(self) -> bool:
        """Whether the audio may start before the model has loaded: the archive has clips for the
        slots that fall back on it (else a set starts as it always did, once the model is ready)."""
        return (self.archive is not None and self.archive.clips_at_start > 0
                and any(p.prompt and p.fallback == "archive" for p in self.plans))

    def _falls_back(self) -> bool:
        return self.engine is not None and (self.fallback_lead is not None or self.down)

    def _running_out(self, slot: int) -> bool:
        """Nothing queued behind what plays, and (live) it ends within the crossfade and the lead."""
        e = self.engine
        assert e is not None
        if e.pending(slot) > 0:
            return False
        if self.fallback_lead is None or not e.mixer.slots[slot].started:
            return True
        return e.mixer.buffered_frames(slot) < (self.xfade() + self.fallback_lead) * e.cfg.sample_rate

    def _fallback(self, slot: int) -> Clip | None:
        """What the slot plays when its inbox is empty: an archive clip (or silence) when its prompt
        just changed or it is about to run dry, else nothing (the mixer loops its clip)."""
        p = self.plans[slot]
        if not p.prompt or p.fallback == "loop" or not self._falls_back():
            return None
        changed = p.cut and p.new_prompt and p.fallback == "archive"
        if not (changed or self._running_out(slot)):
            return None
        if p.fallback == "silence":
            assert self.engine is not None
            clip: Clip | None = silence(2 * self.xfade() + 1, self.engine.cfg.sample_rate)
        else:
            clip = self.archive.loader.take(slot, p.prompt) if self.archive is not None else None
        if clip is None:
            return None
        p.new_prompt = False
        p.covering = True
        self.stats.fallbacks += 1
        return replace(clip, cut=changed)

    def _want_fallbacks(self) -> None:
        """Ask the loader for each slot's next archive clip (it keeps one ready per slot)."""
        if self.archive is None or not self._falls_back():
            return
        for i, p in enumerate(self.plans):
            if p.prompt and p.fallback == "archive":
                self.archive.loader.want(i, p.prompt)

    def _feed_from_archive(self, deadline: float) -> None:
        """The generator is down in a deterministic render: give every starving slot its fallback
        clip, waiting for the loader (so the same clips play however fast the disk is); a slot set to
        `loop` plays its own clip on. A slot that never played and gets nothing (no archived clip for
        its prompt, or `loop`) ends the render with ModelError, as a down generator always did."""
        from instrument.generator.errors import ModelError

        assert self.engine is not None
        self._want_fallbacks()
        for i in range(len(self.plans)):
            if self.starving(i) and self.archive is not None and self.plans[i].fallback == "archive":
                self.archive.loader.wait(i, max(0.0, deadline - time.monotonic()))
        self.engine.pump()
        dry = [i + 1 for i in range(len(self.plans)) if self.starving(i) and self.engine.pending(i) == 0
               and not self.engine.mixer.slots[i].started]
        if dry:
            why = self.client.error or f"it is {self.client.state}"
            raise ModelError(f"the generator failed: {why}; slot(s) {', '.join(map(str, dry))} have nothing to "
                             "play (no archived clip for the prompt, or the slot's fallback is loop)")

    def depth(self, slot: int) -> int:
        """Clips ready or coming for the slot: queued in the mixer, waiting here, in flight."""
        p = self.plans[slot]
        queued = self.engine.pending(slot) if self.engine is not None else 0
        return queued + len(p.inbox) + (p.inflight is not None)

    def starving(self, slot: int) -> bool:
        """Nothing queued behind what plays now (the render waits on this to stay deterministic)."""
        p = self.plans[slot]
        queued = self.engine.pending(slot) if self.engine is not None else 0
        # p.cut: a new prompt's flush is on its way to the mixer and its first clip is not here yet
        return bool(p.prompt) and (p.cut or queued + len(p.inbox) == 0)

    # -- the pump --------------------------------------------------------------------------------
    def tick(self, timeout: float = 0.0) -> None:
        """Take what the worker sent, then submit what is needed next."""
        for msg in self.client.poll(timeout):
            if isinstance(msg, ClipReady):
                if self.archive is not None:
                    self.archive.keep(msg.clip)
                self._arrived(msg)
            elif isinstance(msg, Dropped):
                self._clear(msg.slot, msg.id)
                if msg.reason.startswith("non-finite"):
                    self.stats.nonfinite += 1
                    self.on_event(f"slot {msg.slot + 1}: clip dropped, {msg.reason}")
            elif isinstance(msg, Compiled):
                self.stats.compiled_ns = time.monotonic_ns()
            elif isinstance(msg, Failed):
                self.stats.failures += 1
                for p in self.plans:
                    if p.inflight in msg.ids:
                        p.inflight = None
        if self.client.state in ("ready", "busy"):
            self._submit()
        self._want_fallbacks()

    def _clear(self, slot: int, req_id: int) -> None:
        p = self.plans[slot]
        if p.inflight == req_id:
            p.inflight = None

    def _arrived(self, msg: ClipReady) -> None:
        p = self.plans[msg.slot]
        self._clear(msg.slot, msg.id)
        if msg.generation != p.generation:
            self.stats.stale += 1
            return
        self.stats.clips += 1
        self.stats.first_clip_ns = self.stats.first_clip_ns or time.monotonic_ns()
        wall = msg.clip.info.gen_seconds
        self.stats.last_gen_seconds = wall
        self.stats.rtf = wall / max(1e-9, msg.batch * msg.clip.seconds)
        cut = p.cut
        if p.covering:  # a fallback clip plays or waits: this fresh clip takes over at once
            p.covering = False
            if not cut and self.engine is not None:
                self.engine.flush(msg.slot)  # (a new prompt's flush went out already)
            cut = True
        p.inbox.append(replace(msg.clip, cut=cut))
        p.cut = p.new_prompt = False

    def derived_seed(self, slot: int, n: int) -> int:
        """The seed of a slot's n-th request when the slot has no seed of its own (the same every run)."""
        return int(np.random.SeedSequence((self.base_seed, slot, n)).generate_state(1, np.uint32)[0])

    def _buffered(self, slot: int) -> float:
        s = sum(c.seconds for c in self.plans[slot].inbox)
        if self.engine is not None:
            s += self.engine.mixer.buffered_frames(slot) / self.engine.cfg.sample_rate
        return s

    def _submit(self) -> None:
        want = [i for i, p in enumerate(self.plans)
                if p.prompt and p.inflight is None and self.depth(i) < self.target_depth]
        if not want:
            return
        # cut-ins first, then the slot that runs out first
        want.sort(key=lambda i: (not self.plans[i].cut, self._buffered(i), i))
        for i in want:
            p = self.plans[i]
            seed = p.seed if p.seed >= 0 else self.derived_seed(i, p.count)
            req = Request(self._next_id, i, p.prompt, seed, p.steps, p.guidance, p.seconds, p.generation,
                          priority=p.cut)
            self._next_id += 1
            p.count += 1
            p.inflight = req.id
            self.client.submit(req)

    def wait_ready(self, timeout: float = 900.0, report: Callable[[str], None] | None = None) -> None:
        """Block until the worker has loaded its model (the first start can download or compile)."""
        deadline = time.monotonic() + timeout
        while self.client.state not in ("ready", "busy"):
            if self.client.state == "failed":
                from instrument.generator.errors import ModelError

                raise ModelError(f"the generator failed: {self.client.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the generator did not load in {timeout:g} s")
            self.tick(0.1)
            if report is not None:
                report(self.client.state)

    def wait_fed(self, timeout: float | None = None) -> None:
        """Block until no slot with a prompt is starving (deterministic render); at most
        `timeout` seconds (default `fed_timeout`)."""
        timeout = self.fed_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while any(self.starving(i) for i in range(len(self.plans))):
            if self.down:
                self._feed_from_archive(deadline)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no clip from the generator in {timeout:g} s")
            self.tick(0.05)
            if self.engine is not None:
                self.engine.pump()
