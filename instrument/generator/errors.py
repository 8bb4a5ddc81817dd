"""The generator's named exceptions (to be merged into `instrument/errors.py`).

Every message is one line: the value, what is allowed, the fix.
"""

from __future__ import annotations

from instrument.errors import EndlessError


class ModelError(EndlessError):
    """TangoFlux weights cannot be found or do not fit the official checkpoint layout."""

    exit_code = 4


class ModelNotFoundError(ModelError):
    """No checkpoint at the given place: not a directory with the layout, not in the Hugging Face cache."""


class CheckpointError(ModelError):
    """A checkpoint was found but cannot be used: missing files, bad config, keys that do not match."""


class Cancelled(Exception):
    """A generation was cancelled between denoising steps (its prompt changed, the slot was cleared)."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"generation cancelled after {step} of {total} steps")
        self.step = step
        self.total = total
