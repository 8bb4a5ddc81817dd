"""Issue 12, finding 5: flooding one parameter must not fill the audio thread's command ring.

10k gain changes a second used to reach the ring one command each; while the audio thread was late
(an underflow, a stall), the ring filled and changes were refused ("the audio thread's command queue
is full"). Changes to one parameter that come faster than the audio takes them are coalesced before
the ring: a few a block go through, the newest of the rest waits for the next block (or the control
loop's next tick), so the ring holds a bounded number per parameter and the last value sent wins.

The engine here is driven offline (Mixer.process, as the audio thread would call it, 256-frame
blocks) with the control loop's tick (`Engine.pump`) every ~10 ms of audio, and stalls of the audio
thread of 150 ms every second, as a flood on a loaded machine sees them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from instrument.engine import Engine
from instrument.errors import ParamError
from instrument.params import db_to_amp
from instrument.rt import MixerConfig

SR = 44100
BLOCK = 256
RATE = 10_000  # changes a second
ADDRESSES = ("/endless/slot/1/gain", "/endless/master/gain", "/endless/slot/2/pan")


def _flood(e: Engine, seconds: float, stall_every: float = 1.0, stall: float = 0.15) -> dict[str, float]:
    """Send RATE changes a second (round robin over ADDRESSES, random values), audio time; every
    `stall_every` s the audio thread takes no block for `stall` s while the changes keep coming."""
    rng = np.random.default_rng(1)
    out = np.zeros((BLOCK, 2), np.float32)
    last: dict[str, float] = {}
    sent = 0
    blocks = int(seconds * SR / BLOCK)
    stall_blocks, every = int(stall * SR / BLOCK), int(stall_every * SR / BLOCK)
    tick = max(1, int(0.01 * SR / BLOCK))
    for b in range(blocks):
        due = int((b + 1) * BLOCK / SR * RATE) - sent
        for _ in range(due):
            addr = ADDRESSES[sent % len(ADDRESSES)]
            v = float(rng.uniform(-40.0, 0.0)) if "gain" in addr else float(rng.uniform(-1.0, 1.0))
            e.handle(addr, [v])  # a ParamError (the ring full) fails the test
            last[addr] = v
            sent += 1
        if b % tick == 0:
            e.pump()
        if b % every < stall_blocks and b >= every:
            continue  # the audio thread is late: no block
        e.mixer.process(out)
    return last


def _settle(e: Engine, seconds: float = 0.5) -> None:
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(int(seconds * SR / BLOCK)):
        e.pump()
        e.mixer.process(out)


@pytest.mark.timeout(120)
def test_a_flood_of_changes_never_fills_the_ring_and_the_last_value_wins() -> None:
    e = Engine(MixerConfig(slots=4, sample_rate=SR, xfade=0.05, stagger=False))
    last = _flood(e, seconds=3.0)
    assert e.stats().commands_rejected == 0
    _settle(e)
    assert e.values[("slot/gain", 0)] == last[ADDRESSES[0]]
    assert e.values[("master/gain", None)] == last[ADDRESSES[1]]
    assert e.values[("slot/pan", 1)] == last[ADDRESSES[2]]
    # what the audio thread plays: slot 1's fader amplitude is the last gain sent
    assert math.isclose(e.mixer.slots[0].amp, db_to_amp(last[ADDRESSES[0]]), rel_tol=1e-6)
    out = np.zeros((BLOCK, 2), np.float32)
    before = e.mixer.commands_rejected
    e.handle(ADDRESSES[0], [-6.0])  # and a change after the flood reaches the audio at the next block
    e.mixer.process(out)
    _settle(e, 0.2)
    assert math.isclose(e.mixer.slots[0].amp, db_to_amp(-6.0), rel_tol=1e-6) and e.mixer.commands_rejected == before


def test_a_burst_to_one_parameter_puts_a_bounded_number_in_the_ring() -> None:
    """1000 changes to one fader while no block runs: the ring gets a few, the newest waits, and
    the control loop's tick sends it once the audio thread has taken a block."""
    e = Engine(MixerConfig(slots=2, sample_rate=SR, xfade=0.05, stagger=False))
    for k in range(1000):
        e.handle("/endless/slot/1/gain", [-float(k % 40)])
    cmds = e.mixer.take_commands()
    assert 1 <= len(cmds) <= 8, len(cmds)
    e.pump()  # no block yet: the newest still waits
    assert e.mixer.take_commands() == []
    e.mixer.process(np.zeros((BLOCK, 2), np.float32))
    e.pump()
    assert [c[2] for c in e.mixer.take_commands()] == [db_to_amp(-float(999 % 40))]
    e.pump()
    assert e.mixer.take_commands() == []  # sent once


def test_triggers_are_not_coalesced() -> None:
    """Each `next` is an event, not a value: two in one block are two commands."""
    e = Engine(MixerConfig(slots=2, sample_rate=SR, xfade=0.05, stagger=False))
    for _ in range(6):
        e.handle("/endless/slot/1/next", [])
    assert len(e.mixer.take_commands()) == 6


def test_a_full_ring_still_refuses_and_says_so() -> None:
    """Coalescing bounds one parameter; a ring filled by many is still refused, never dropped."""
    e = Engine(MixerConfig(slots=4, sample_rate=SR, xfade=0.05, stagger=False, command_capacity=4))
    for addr in ("/endless/slot/1/gain", "/endless/slot/2/gain", "/endless/slot/3/gain", "/endless/slot/4/gain"):
        e.handle(addr, [-1.0])
    with pytest.raises(ParamError, match="command queue is full"):
        e.handle("/endless/master/gain", [-9.0])
    assert e.values[("master/gain", None)] == 0.0
