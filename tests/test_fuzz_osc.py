"""Fuzzing the OSC server: 100k+ packets into the routes (the transport's entry point) and a few
thousand through real UDP and TCP/SLIP sockets, with a deterministic seed.

The input: hypothesis-generated well-formed messages and bundles (nested too) to every real
address with hostile values (nan, inf, huge, negative, wrong types, blobs, nil); valid datagrams
mutated (bit flips, truncation, type-tag garbage, broken sizes); random bytes. After: every engine
value within its registry range and finite, the rendered audio finite and at most full scale, no
bug counted by the routes or the bus, no traceback logged, the bus empty after a drain, and the
server still answers.

What the fuzzer found is fixed, each with its own test below: a reply carrying a float beyond
float32 (a ping's argument echoed) could not be encoded; a flood of refused packets queued replies
without bound.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_rig import (
    HOSTILE,
    LogLines,
    OscRig,
    encode_bundle,
    encode_msg,
    mutate,
    osc_addresses,
    osc_corpus,
    send_tcp_slip,
    typed,
)

SEED = 20240612
BULK = 100_000


@pytest.fixture
def rig() -> Iterator[OscRig]:
    r = OscRig()
    yield r
    r.close()


def _problems(rig: OscRig, lines: LogLines, seconds: float) -> list[str]:
    """The invariants: values, bus, audio, no bug but the known ones, no traceback logged, and a
    bounded log (rate-limited: a few lines a second, whatever the input)."""
    problems = [p for p in rig.problems() if "handler exceptions" not in p]
    problems += [f"{where}: {what}" for where, what in rig.bugs]
    problems += lines.tracebacks
    if lines.count > 20 + 20 * seconds:
        problems.append(f"{lines.count} log lines in {seconds:.0f} s")
    return problems


def _answers(rig: OscRig, timeout: float = 10.0) -> bool:
    """The server answers a ping over UDP (retried: the kernel may drop datagrams under a flood)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendto(encode_msg("/endless/ping", ((None, 424242),)), ("127.0.0.1", rig.server.port))
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                rig.tick()
                try:
                    data, _ = s.recvfrom(65536)
                except TimeoutError:
                    continue
                if b"/endless/pong" in data and (424242).to_bytes(4, "big") in data:
                    return True
    return False


# == bulk: 100k packets into the routes =============================================================
@pytest.mark.timeout(240)
def test_100k_fuzzed_packets_break_no_invariant(rig: OscRig) -> None:
    rng = random.Random(SEED)
    addresses = osc_addresses(rig.engine.registry)
    t0 = time.monotonic()
    with LogLines() as lines:
        for data in osc_corpus(rng, addresses, BULK):
            rig.feed(data)
        took = time.monotonic() - t0
        problems = _problems(rig, lines, time.monotonic() - t0)
    st_ = rig.server.stats
    assert rig.inputs >= BULK
    assert not problems, problems
    # the mix reached the engine: values were applied, messages refused, packets found malformed
    assert st_.applied > 1000 and st_.errors > 10000 and st_.malformed > 10000, st_
    assert rig.render.blocks >= BULK // 256
    assert took < 120, f"{BULK} packets took {took:.1f} s"
    assert _answers(rig)


# == hypothesis: well-formed messages and bundles with hostile values ==============================
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1),
                    st.sampled_from([v for v in HOSTILE if isinstance(v, (int, float))]))
ARGS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=40), st.binary(min_size=1, max_size=40),
                 st.sampled_from(HOSTILE))


def _messages(addresses: list[str]) -> st.SearchStrategy[bytes]:
    return st.builds(lambda a, args: encode_msg(a, tuple(typed(x) for x in args)),
                     st.sampled_from(addresses), st.lists(ARGS, max_size=4))


def _packets(addresses: list[str]) -> st.SearchStrategy[bytes]:
    msg = _messages(addresses)
    bundle = st.lists(msg, max_size=5).map(encode_bundle)
    nested = st.tuples(st.lists(msg, min_size=1, max_size=3).map(encode_bundle), msg).map(lambda p: encode_bundle(list(p)))
    return st.one_of(msg, bundle, nested)


@pytest.mark.timeout(240)
def test_hypothesis_messages_and_bundles_to_real_addresses(rig: OscRig) -> None:
    addresses = osc_addresses(rig.engine.registry)

    @settings(max_examples=300, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_packets(addresses), min_size=1, max_size=8), st.integers(0, 2**32))
    def fuzz(packets: list[bytes], seed: int) -> None:
        rng = random.Random(seed)
        for p in packets:
            rig.feed(p)
            rig.feed(mutate(p, rng))
        rig.tick()
        assert not [p for p in rig.problems() if "handler exceptions" not in p]

    t0 = time.monotonic()
    with LogLines() as lines:
        fuzz()
        problems = _problems(rig, lines, time.monotonic() - t0)
    assert not problems, problems
    assert rig.inputs > 1000


# == through the sockets ==========================================================================
@pytest.mark.timeout(120)
def test_fuzzed_packets_over_udp_and_tcp_slip(rig: OscRig) -> None:
    rng = random.Random(SEED + 1)
    addresses = osc_addresses(rig.engine.registry)
    tcp = rig.server.tcp_port
    assert tcp is not None
    t0 = time.monotonic()
    with LogLines() as lines, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for i, data in enumerate(osc_corpus(rng, addresses, 1500)):
            if data and len(data) < 60000:
                udp.sendto(data, ("127.0.0.1", rig.server.port))
            if i % 64 == 0:
                rig.tick()
        # TCP: SLIP frames in several connections, with empty frames, stray ENDs and escapes
        batch = list(osc_corpus(rng, addresses, 1000))
        for k in range(0, len(batch), 250):
            send_tcp_slip(tcp, batch[k:k + 250] + [b"", b"\xc0\xdb\xdc", rng.randbytes(50)])
            rig.tick()
        assert _answers(rig)
        problems = _problems(rig, lines, time.monotonic() - t0)
    assert not problems, problems
    assert rig.server.stats.packets > 500  # through the transport, not only the routes


# == findings the fuzzer made, fixed: each failed before its fix ==========================================
def test_the_sender_encodes_every_reply_to_fuzzed_packets(rig: OscRig) -> None:
    rng = random.Random(SEED + 2)
    for data in osc_corpus(rng, osc_addresses(rig.engine.registry), 20000):
        rig.feed(data)
    rig.problems()
    assert not rig.bugs, rig.bugs[:3]


def test_the_reply_queue_stays_bounded_under_a_flood(rig: OscRig) -> None:
    bad = encode_msg("/endless/nope", ((None, 1.0),))
    for _ in range(20000):
        rig.feed(bad)
    assert rig.max_outbox <= 4096, f"{rig.max_outbox} replies waiting"


HANG = "#bundle\\x00" + "\\x00" * 7 + "\\x01" + "\\xff\\xff\\xff\\xfc"  # an element of size -4


@pytest.mark.timeout(120)
def test_a_bundle_with_a_negative_element_size_is_refused_not_a_hang() -> None:
    # in a child process: the hang must not leave a spinning thread in the test session
    code = ("from tests.fuzz_rig import OscRig\n"
            f"r = OscRig(); r.routes.packet(b'{HANG}', r.peer); r.close(); print('returned')")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                              cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        raise AssertionError("Routes.packet did not return within 30 s") from None
    assert "returned" in proc.stdout, proc.stderr[-1000:]
