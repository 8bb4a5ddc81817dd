"""Parameter changes to the audio thread, coalesced per parameter before its command ring.

The audio thread applies every command waiting at the start of its next block, at the block's first
sample, so of several changes to one parameter in one block only the last is heard. A fader moving
at a MIDI or OSC controller's pace sends about one a block; a flood (10k changes a second, a fuzzer,
a runaway patch) sent dozens, and while the audio thread was late the ring filled and every other
change was refused. `Coalescer` sends at most `PER_BLOCK` immediate commands to one (opcode, slot)
per output block; the newest of the rest waits here, one per parameter, and goes when the audio
thread has taken a block: with the next change to that parameter, or on the control loop's next
tick (`Engine.pump`). So a parameter holds at most 2 x PER_BLOCK commands in the ring, and the value
that reaches the audio last is the last one sent. Triggers (`next`, `flush`) are events, not values,
and timed commands are in frame order on their own ring: neither comes here.
"""

from __future__ import annotations

from instrument.rt import Command, Mixer

__all__ = ["PER_BLOCK", "Coalescer"]

PER_BLOCK = 4  # a short burst (a bundle setting a value twice) goes straight through


class Coalescer:
    """Immediate value commands for one mixer; the caller holds the engine lock."""

    def __init__(self, mixer: Mixer, per_block: int = PER_BLOCK) -> None:
        self.mixer = mixer
        self.per_block = per_block
        self.held: dict[tuple[int, int], Command] = {}  # (op, slot) -> its newest command not yet sent
        self.coalesced = 0  # commands replaced by a newer one before reaching the ring
        self._sent: dict[tuple[int, int], tuple[int, int]] = {}  # (op, slot) -> (mixer frame, sent at it)

    def send(self, cmd: Command) -> bool:
        """Send `cmd` now, or keep it as its parameter's newest (True: it will reach the audio).
        False only when the ring is full (nothing changed: the caller reports it)."""
        key = (cmd.op, cmd.slot)
        if not self._room(key):
            self.coalesced += key in self.held
            self.held[key] = cmd
            return True
        if not self.mixer.send(cmd):
            return False  # an older one kept here stays: it is still the newest that reached us
        self.coalesced += self.held.pop(key, None) is not None  # older: this one replaces it
        self._count(key)
        return True

    def tick(self) -> None:
        """Send what waits, for the parameters the audio thread has taken a block since."""
        for key, cmd in list(self.held.items()):
            if self._room(key):
                if not self.mixer.send(cmd):
                    return  # the ring is full: the next tick
                del self.held[key]
                self._count(key)

    def _room(self, key: tuple[int, int]) -> bool:
        frame, n = self._sent.get(key, (-1, 0))
        return frame != self.mixer.frame or n < self.per_block

    def _count(self, key: tuple[int, int]) -> None:
        frame, n = self._sent.get(key, (-1, 0))
        now = self.mixer.frame
        self._sent[key] = (now, n + 1 if frame == now else 1)
