"""Arming: pre-generate a slot's first clip for a prompt it does not play yet, so that a later
prompt change (a preset recall) crossfades to new material at once instead of after a generation.

`ArmingScheduler` is the scheduler plus `arm(slot, prompt, ...)`: an armed request goes to the
worker beside the slot's own (it never takes the slot's in-flight place), its clip is kept aside,
and the next `set_prompt(slot, prompt)` (or `set_weights`) whose resulting prompt and settings
match hands it to the slot as the new prompt's first clip ("cut"), while the usual request for the
clip after it goes out as always. A blend armed with weights is kept under the blend those weights
make, which is what a recall that sets the prompt and then its weights ends up playing. At most
`max_armed` prompts per slot are kept (oldest dropped first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, replace

from instrument.clips import Clip
from instrument.errors import ParamError
from instrument.generator.protocol import ClipReady, Request
from instrument.generator.worker import GeneratorClient
from instrument.scheduler import Scheduler, blend_parts, check_weights, weighted_prompt

log = logging.getLogger(__name__)

ARM_SEED_OFFSET = 1 << 20  # armed clips draw seeds apart from the slot's own sequence


def played_prompt(slot: int, prompt: str, weights: tuple[float, ...] = ()) -> str:
    """What a slot plays once `prompt` and then `weights` are set (no weights: the prompt's own)."""
    if not weights:
        return prompt
    parts = blend_parts(prompt)
    check_weights(slot, weights, parts)
    return weighted_prompt(parts, weights)


@dataclass(frozen=True)
class ArmKey:
    """What an armed clip was made for; it is used only by a prompt change with the same key."""

    prompt: str
    steps: int
    guidance: float
    seconds: float
    seed: int  # -1: any seed (the slot draws one per clip), else that seed


class ArmingScheduler(Scheduler):
    def __init__(self, client: GeneratorClient, slots: int, base_seed: int = 0, target_depth: int = 2,
                 max_armed: int = 2) -> None:
        super().__init__(client, slots, base_seed, target_depth)
        self.max_armed = max_armed
        self.armed: list[OrderedDict[ArmKey, Clip | None]] = [OrderedDict() for _ in range(slots)]  # None: coming
        self._arm_ids: dict[int, tuple[int, ArmKey]] = {}  # request id -> (slot, key)
        self._arm_count = [0] * slots
        self.arms_used = 0

    def arm(self, slot: int, prompt: str, steps: int | None = None, guidance: float | None = None,
            seconds: float | None = None, seed: int | None = None, weights: tuple[float, ...] = ()) -> bool:
        """Pre-generate one clip of `prompt` (at `weights`, one per blend part) for `slot` (settings
        default to the slot's own). Returns False when that clip is already armed or on its way."""
        if not 0 <= slot < len(self.plans):
            raise ParamError(f"arm: slot {slot + 1} out of range 1..{len(self.plans)}")
        if not prompt.strip():
            return False
        self.check(slot, "slot/prompt", prompt)
        prompt = played_prompt(slot, prompt, weights)
        p = self.plans[slot]
        key = ArmKey(prompt, p.steps if steps is None else int(steps), p.guidance if guidance is None else float(guidance),
                     p.seconds if seconds is None else float(seconds), max(-1, p.seed if seed is None else int(seed)))
        self._forget_lost()
        armed = self.armed[slot]
        if key in armed:
            armed.move_to_end(key)
            return False
        while len(armed) >= self.max_armed:
            old, clip = armed.popitem(last=False)
            if clip is None:
                ids = tuple(i for i, (s, k) in self._arm_ids.items() if s == slot and k == old)
                for i in ids:
                    del self._arm_ids[i]
                self.client.cancel(ids)
        n = self._arm_count[slot]
        self._arm_count[slot] += 1
        use_seed = key.seed if key.seed >= 0 else self.derived_seed(slot, ARM_SEED_OFFSET + n)
        req = Request(self._next_id, slot, prompt, use_seed, key.steps, key.guidance, key.seconds, generation=-1)
        self._next_id += 1
        self._arm_ids[req.id] = (slot, key)
        armed[key] = None
        self.client.submit(req)
        return True

    def armed_ready(self, slot: int, prompt: str) -> bool:
        """A clip of `prompt` is armed and ready for the slot (with any settings)."""
        return any(k.prompt == prompt and c is not None for k, c in self.armed[slot].items())

    def _key_now(self, slot: int) -> ArmKey:
        p = self.plans[slot]
        return ArmKey(p.prompt, p.steps, p.guidance, p.seconds, max(-1, p.seed))

    def set_prompt(self, slot: int, text: str) -> None:
        before = self.plans[slot].prompt
        super().set_prompt(slot, text)
        self._use_armed(slot, before)

    def set_weights(self, slot: int, weights: tuple[float, ...]) -> None:
        before = self.plans[slot].prompt
        super().set_weights(slot, weights)
        self._use_armed(slot, before)

    def _use_armed(self, slot: int, before: str) -> None:
        """The slot now plays another prompt than `before`: a clip armed for it becomes its first clip."""
        p = self.plans[slot]
        if p.prompt == before or not p.prompt:
            return
        key = self._key_now(slot)
        clip = self.armed[slot].get(key)
        if clip is not None:
            del self.armed[slot][key]
            p.inbox.append(clip)
            p.cut = False  # the flush went out in regenerate(); this clip follows it at once
            self.arms_used += 1

    def _arrived(self, msg: ClipReady) -> None:
        entry = self._arm_ids.pop(msg.id, None)
        if entry is None:
            super()._arrived(msg)
            return
        slot, key = entry
        if key not in self.armed[slot]:
            return  # dropped for a newer arm meanwhile
        self.stats.clips += 1
        self.armed[slot][key] = replace(msg.clip, cut=True)

    def _clear(self, slot: int, req_id: int) -> None:
        entry = self._arm_ids.pop(req_id, None)
        if entry is not None:  # an armed request dropped (cancelled, non-finite): arm it again later
            s, key = entry
            if self.armed[s].get(key, 0) is None:
                del self.armed[s][key]
            return
        super()._clear(slot, req_id)

    def _forget_lost(self) -> None:
        """Armed requests the worker will not answer (a failed call): free their places."""
        for i in [i for i in self._arm_ids if i not in self.client.outstanding]:
            s, key = self._arm_ids.pop(i)
            if self.armed[s].get(key, 0) is None:
                del self.armed[s][key]
