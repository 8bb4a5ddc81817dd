"""Checking changes before they apply: what `Engine.set` would refuse once the registry accepted a
value (no generator, a bad blend, weights that do not fit), for one change or for a batch (an OSC
bundle, a preset recall), so that a bad batch is refused whole and nothing half-applies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from instrument.errors import ParamError
from instrument.params import Ref, Value


class Generator(Protocol):
    """What checking needs of the engine's generator (`instrument.scheduler.Scheduler`)."""

    def check(self, slot: int, key: str, value: Value) -> None: ...


def check_change(generator: Generator | None, prefix: str, ref: Ref, value: Value) -> None:
    """Raise ParamError for what `Engine.set(ref, value)` would refuse, changing nothing."""
    if ref.param.target != "generator":
        return
    if generator is None:
        raise ParamError(f"{ref.address(prefix)}: there is no generator: this instrument plays "
                         "a clip folder (start it with --model instead of --clips)")
    assert ref.slot is not None
    generator.check(ref.slot, ref.param.key, value)


def check_batch(generator: Generator | None, prefix: str, changes: Sequence[tuple[Ref, Value]]) -> dict[int, str]:
    """What `Engine.set` would refuse among `changes` applied in this order (index -> message). Weights
    must fit the prompt the batch has set for their slot by then, not the one playing now."""
    from instrument.scheduler import blend_parts, check_weights

    prompts: dict[int, str] = {}  # slot -> the prompt an earlier change in the batch sets
    refused: dict[int, str] = {}
    for i, (ref, value) in enumerate(changes):
        try:
            if ref.param.key == "slot/weights" and ref.slot in prompts and isinstance(value, tuple):
                check_weights(ref.slot, value, blend_parts(prompts[ref.slot]))
            else:
                check_change(generator, prefix, ref, value)
            if ref.param.key == "slot/prompt" and ref.slot is not None:
                prompts[ref.slot] = str(value)
        except ParamError as e:
            refused[i] = str(e)
    return refused
