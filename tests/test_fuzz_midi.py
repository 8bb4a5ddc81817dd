"""Fuzzing MIDI: 100k+ random and mutated messages (bytes) through MidiControl's job path (`inject`,
the bus, the Surface and its decoder) over a mapping with CC, 14-bit CC, NRPN (7 and 14 bits),
notes (momentary, toggle, trigger, value), relative encoders of every mode and a program change;
and hypothesis byte streams straight into the decoder. After: every engine value within its
registry range and finite, the audio finite, no bug on the bus, no traceback, the bus empty.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instrument.control.decode import Decoder
from tests.fuzz_rig import LogLines, MidiRig, midi_message

SEED = 20240613
BULK = 100_000


@pytest.fixture
def rig() -> Iterator[MidiRig]:
    r = MidiRig()
    yield r
    r.close()


def test_short_messages_of_every_status_decode_to_nothing(rig: MidiRig) -> None:
    """A lone status byte or one data byte short: mido raises IndexError for some (pitch bend with
    one data byte), which the decoder must take as malformed, as it does ValueError."""
    dec = rig.surface.decoder
    for status in range(0x80, 0x100):
        for n in range(3):
            assert isinstance(dec.feed((status, *([64] * n))), list)
    assert dec.feed((0xE0, 5)) == [] and dec.feed((0xE0,)) == []


@pytest.mark.timeout(240)
def test_100k_fuzzed_midi_messages_break_no_invariant(rig: MidiRig) -> None:
    rng = random.Random(SEED)
    t0 = time.monotonic()
    with LogLines() as lines:
        for _ in range(BULK):
            rig.feed(midi_message(rng))
        problems = rig.problems()
    took = time.monotonic() - t0
    assert rig.inputs >= BULK
    assert not problems, problems
    assert not lines.tracebacks, lines.tracebacks
    assert lines.count <= 20 + 20 * took, f"{lines.count} log lines"
    assert rig.midi.stats.received == BULK and rig.midi.stats.dropped == 0
    assert rig.midi.stats.applied > 5000, rig.midi.stats  # the mapping was exercised
    assert took < 120, f"{BULK} messages took {took:.1f} s"


MESSAGE = st.one_of(
    st.tuples(st.integers(0x80, 0xEF), st.integers(0, 127), st.integers(0, 127)),
    st.tuples(st.sampled_from([0xB0, 0xB1, 0xBF]), st.sampled_from([1, 2, 6, 33, 34, 38, 96, 97, 98, 99, 100, 101]),
              st.integers(0, 127)),
    st.lists(st.integers(0, 255), max_size=5).map(tuple),
)


@pytest.mark.timeout(120)
def test_hypothesis_byte_streams_through_the_decoder_and_surface(rig: MidiRig) -> None:
    @settings(max_examples=400, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(MESSAGE, max_size=40))
    def fuzz(stream: list[tuple[int, ...]]) -> None:
        fresh = Decoder(rig.surface.decoder.bindings)
        for m in stream:
            for hit in fresh.feed(m):
                assert 0 <= hit.index < len(rig.surface.bound)
                assert hit.kind != "abs" or 0.0 <= hit.x <= 1.0
            rig.feed(m)
        rig.tick()
        assert not rig.problems()

    with LogLines() as lines:
        fuzz()
    assert not lines.tracebacks, lines.tracebacks
