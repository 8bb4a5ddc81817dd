"""The OSC server over real loopback sockets: every address, the malformed ones, TCP/SLIP, Pure Data.

Each test runs an in-process Engine with the server on an ephemeral port; the test thread plays
the control loop (the bus's `wait`/`drain` and the server's `tick`, holding the engine lock) and
renders with the offline renderer, so every accepted message is checked where it matters: in the
audio (mixer parameters) or in the generator's plan.
"""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import itertools
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pythonosc import slip
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

import instrument.generator.conditioning  # noqa: F401  (torch: imported here, not inside a timed drain)
from instrument.control.actions import ACTIONS, Actions, Done
from instrument.control.bus import ControlBus
from instrument.control.osc import SERVER_ADDRESSES, STATUS_ADDRESSES, OscConfig, OscServer, Peer
from instrument.control.presets import PresetStore
from instrument.docs import server_reference
from instrument.engine import Engine
from instrument.errors import ConfigError
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.params import Ref, Registry, db_to_amp
from instrument.render import render
from instrument.rt import MixerConfig
from instrument.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[1]
SR = 44100
SLOTS = 2
Msg = tuple[str, list[Any]]
_tokens = itertools.count(1)


def encode(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def parse(data: bytes) -> list[Msg]:
    return [(m.message.address, list(m.message.params)) for m in OscPacket(data).messages]


def pump(server: OscServer, wait: float = 0.0) -> int:
    """One tick of the control loop: wait for the bus (at most `wait` s), then, holding the engine's
    lock, run what waits on the bus and let the server send its status. Returns the jobs run."""
    if wait:
        server.bus.wait(wait)
    with server.engine.lock:
        n = server.bus.drain()
        server.tick()
    return n


class Recording:
    """A record switch (`Actions(recording=)`) that keeps its calls; the first stop before any
    start is refused by the actions themselves."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[bool, str | None]] = []
        self.active = False
        self.fail = fail

    def __call__(self, start: bool, name: str | None) -> str:
        if self.fail is not None:
            raise self.fail
        self.calls.append((start, name))
        self.active = start
        return f"/recordings/{name or 'take-001.wav'}"


def actions(engine: Engine, folder: Path | None = None, recording: Recording | None = None) -> Actions:
    """The instrument's actions, with presets in `folder` (none stored when None)."""
    return Actions(engine, PresetStore(folder or Path("/nonexistent"), ()), recording=recording)


class Client:
    """A UDP OSC peer on 127.0.0.1 that keeps everything the server sends it."""

    def __init__(self, server: OscServer) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def send(self, address: str, *args: Any) -> None:
        self.send_raw(encode(address, *args))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.server.port))

    def until_pong(self, token: int, timeout: float = 5.0) -> list[Msg]:
        """Everything the server sends until the pong for `token`, draining meanwhile (the test
        thread is the control loop)."""
        got: list[Msg] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.01)
        while True:
            pump(self.server)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no pong {token} within {timeout} s; got {got}") from None
                continue
            for m in parse(data):
                if m == ("/endless/pong", [token]):
                    return got
                got.append(m)

    def marker(self) -> list[Msg]:
        """Ping and collect everything before the pong: the pong comes once everything sent
        before it has been applied, so its replies and echoes are in."""
        return self.until_pong(_ping(self))

    def exchange(self, *packets: bytes | tuple[Any, ...]) -> list[Msg]:
        """Send, let the control loop drain, and return every reply and echo (no status)."""
        for p in packets:
            self.send_raw(p) if isinstance(p, bytes) else self.send(*p)
        return [m for m in self.marker() if not m[0].startswith("/endless/status/")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[OscServer, Client]]]:
    made: list[tuple[OscServer, Client]] = []

    def start(engine: Engine, acts: Actions | None = None, immediate: bool = False, **cfg: Any
              ) -> tuple[OscServer, Client]:
        server = OscServer(ControlBus(engine, immediate=immediate), OscConfig(port=0, **cfg), acts).start()
        made.append((server, Client(server)))
        return made[-1]

    yield start
    for server, client in made:
        client.close()
        server.stop()


# -- engines ----------------------------------------------------------------------------------------
def _ping(client: Client) -> int:
    token = next(_tokens)
    client.send("/endless/ping", token)
    return token


def noise(seconds: float, seed: int, amp: float = 0.05) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((int(seconds * SR), 2)) * amp).astype(np.float32)


def mix_engine() -> Engine:
    """Two slots of 1 s noise clips, starting together, 50 ms crossfades."""
    e = Engine(MixerConfig(slots=SLOTS, sample_rate=SR, xfade=0.05, stagger=False, queue_capacity=16))
    for s in range(SLOTS):
        for k in range(4):
            e.push_clip(s, noise(1.0, seed=10 * s + k))
    return e


def plan_engine() -> Engine:
    """An engine with a real Scheduler whose worker is never started: the plan shows what reached it."""
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR))
    return Engine(MixerConfig(slots=SLOTS, sample_rate=SR), Scheduler(client, SLOTS))


def db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-30)


# -- every address ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    args: tuple[Any, ...]  # real units
    normalized: float | None = None  # the /normalized argument
    setup: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # applied to both engines first
    then: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # applied to both engines after the change
    check: Callable[[Engine, Engine, np.ndarray, np.ndarray], bool] = lambda *a: True
    plan: str = ""  # generator parameters: the SlotPlan field that must take the value
    seconds: float = 1.0  # rendered after the change


def _lv(slot: int) -> Callable[[Engine], float]:
    return lambda e: e.stats().levels[slot]


SKIP = int(0.15 * SR)  # glides and fades of the change itself
QUANT = (("/endless/quantize", ("beat",)),)
NEXT2 = (("/endless/slot/2/next", ()),)
CASES: dict[str, Case] = {
    "master/gain": Case((-20,), 0.2, check=lambda r, o, ra, oa: db(oa[SKIP:]) < db(ra[SKIP:]) - 15),
    "xfade": Case((0.4,), 0.9),
    "curve": Case(("sin2",), 0.9),
    "autolevel": Case((0,), check=lambda r, o, ra, oa: db(oa[SKIP:]) > db(ra[SKIP:]) + 2),
    "morph/mode": Case(("line",), 0.5, check=lambda r, o, ra, oa: _lv(1)(o) < 1e-6 < _lv(1)(r)),
    "morph/position": Case((1.0,), 1.0, setup=(("/endless/morph/mode", ("line",)),),
                           check=lambda r, o, ra, oa: _lv(0)(o) < 1e-6 < _lv(0)(r)),
    "morph/x": Case((1,), 1.0, setup=(("/endless/morph/mode", ("xy",)),),
                    check=lambda r, o, ra, oa: _lv(0)(o) < 1e-6 < _lv(0)(r)),
    "morph/y": Case((1,), 1.0, setup=(("/endless/morph/mode", ("xy",)),),
                    check=lambda r, o, ra, oa: float(np.abs(oa[SKIP:]).max()) < 1e-6 < float(np.abs(ra).max())),
    # transport and quantize move where a quantized `next` lands
    "tempo": Case((300,), 1.0, setup=QUANT, then=NEXT2),
    "meter": Case((1,), 0.0, setup=(("/endless/quantize", ("bar",)),), then=NEXT2),
    "quantize": Case(("beat",), 0.5, then=NEXT2),
    "slot/gain": Case((-20,), 0.2, check=lambda r, o, ra, oa: _lv(1)(o) < _lv(1)(r) / 5),
    "slot/pan": Case((-1,), 0.0, check=lambda r, o, ra, oa: db(oa[SKIP:, 1]) < db(ra[SKIP:, 1]) - 2),
    "slot/mute": Case((1,), check=lambda r, o, ra, oa: _lv(1)(o) < 1e-6 < _lv(1)(r)),
    "slot/solo": Case(("on",), check=lambda r, o, ra, oa: _lv(0)(o) < 1e-6 < _lv(0)(r)),
    "slot/next": Case((), check=lambda r, o, ra, oa: o.stats().transitions[1] > r.stats().transitions[1]),
    "slot/flush": Case((), check=lambda r, o, ra, oa: o.stats().starvations[1] > r.stats().starvations[1]),
    "slot/prompt": Case(("rain on a tin roof",), plan="prompt"),
    "slot/weights": Case((1, 3.0), setup=(("/endless/slot/2/prompt", ("rain | thunder",)),), plan="prompt"),
    "slot/steps": Case((10,), 0.5, plan="steps"),
    "slot/guidance": Case((3.5,), 0.5, plan="guidance"),
    "slot/seed": Case((1234,), 0.5, plan="seed"),
    "slot/length": Case((5,), 0.5, plan="seconds"),
    "slot/regenerate": Case((), plan="generation"),
    "slot/fallback": Case(("silence",), 0.9, plan="fallback"),  # what a dry slot plays: tests/test_fallback.py
}


def _every_address() -> list[Any]:
    reg = Registry(slots=SLOTS)
    out = []
    for p in reg:
        slot = SLOTS - 1 if p.scope == "slot" else None
        for norm in (False, True) if p.has_normalized else (False,):
            out.append(pytest.param(p.key, norm, id=Ref(p, slot, norm).address()))
    return out


def _echoed(got: list[Msg], address: str, want: tuple[Any, ...]) -> bool:
    for a, args in got:
        if a == address and len(args) == len(want) and all(
                x == y if isinstance(y, str) else math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)
                for x, y in zip(args, want, strict=True)):
            return True
    return False


@pytest.mark.parametrize("key, normalized", _every_address())
def test_every_address_is_accepted_echoed_and_takes_effect(serve: Any, key: str, normalized: bool) -> None:
    case = CASES.get(key)
    assert case is not None, f"a new parameter {key}: add a Case saying how its effect shows"
    ref_e, osc_e = (plan_engine(), plan_engine()) if case.plan else (mix_engine(), mix_engine())
    reg = osc_e.registry
    p = reg[key]
    r = Ref(p, SLOTS - 1 if p.scope == "slot" else None, normalized)
    args = (case.normalized,) if normalized else case.args
    assert args != (None,), f"{key}: the Case needs a /normalized argument"
    value = reg.coerce(r, args)
    for e in (ref_e, osc_e):
        for a, v in case.setup:
            e.handle(a, v)
    server, client = serve(osc_e)
    client.exchange(("/endless/subscribe",))  # the sync dump
    gen = osc_e.generator
    before = getattr(gen.plans[SLOTS - 1], case.plan) if gen is not None else None
    if gen is None:
        ref_before, osc_before = render(ref_e, 0.2, 256), render(osc_e, 0.2, 256)

    got = client.exchange((r.address(), *args))

    assert not [m for m in got if m[0] == "/endless/error"], got
    base = p.address(reg.prefix, r.slot)
    if p.kind == "trigger":
        assert (base, []) in got
    else:
        real = tuple(float(x) for x in value) if isinstance(value, tuple) else \
            (int(value),) if isinstance(value, bool) else (value,)
        assert _echoed(got, base, real), (base, real, got)
        if p.has_normalized:
            assert _echoed(got, base + "/normalized", (p.to_normalized(value),)), got
    assert server.stats.applied == 1 and server.stats.errors == 0
    if gen is not None:
        after = getattr(gen.plans[SLOTS - 1], case.plan)
        # weights (1, 3) over "rain | thunder" reweigh the blend the generator is asked for
        want = before + 1 if case.plan == "generation" else "rain:0.25 | thunder:0.75" if key == "slot/weights" \
            else value
        assert after == want and after != before, (before, after)
        return
    for e in (ref_e, osc_e):
        for a, v in case.then:
            e.handle(a, v)
    ref_after, osc_after = render(ref_e, case.seconds, 256), render(osc_e, case.seconds, 256)
    assert np.array_equal(osc_before, ref_before)
    assert not np.array_equal(osc_after, ref_after), "no audible effect"
    assert case.check(ref_e, osc_e, ref_after, osc_after)


# -- malformed input --------------------------------------------------------------------------------
def _bundle(*msgs: tuple[Any, ...], when: float = IMMEDIATELY) -> bytes:
    b = OscBundleBuilder(when)
    for m in msgs:
        mb = OscMessageBuilder(m[0])
        for a in m[1:]:
            mb.add_arg(a)
        b.add_content(mb.build())  # type: ignore[arg-type]
    return b.build().dgram


G1 = "/endless/slot/1/gain"
MALFORMED: list[tuple[str, bytes | tuple[Any, ...], list[str]]] = [
    # (case, the packet, the addresses its /endless/error replies name)
    ("unknown address", ("/endless/loudness", 1.0), ["/endless/loudness"]),
    ("another prefix", ("/other/slot/1/gain", 0.0), ["/other/slot/1/gain"]),
    ("slot 0", ("/endless/slot/0/gain", 0.0), ["/endless/slot/0/gain"]),
    ("slot past the last", ("/endless/slot/3/gain", 0.0), ["/endless/slot/3/gain"]),
    ("slot not a number", ("/endless/slot/x/gain", 0.0), ["/endless/slot/x/gain"]),
    ("no argument", (G1,), [G1]),
    ("two arguments", (G1, 1.0, 2.0), [G1]),
    ("text for a number", (G1, "loud"), [G1]),
    ("a blob for a number", (G1, b"\x01\x02"), [G1]),
    ("true for a number", (G1, True), [G1]),
    ("above the range", (G1, 6.5), [G1]),
    ("below the range", ("/endless/xfade", 0), ["/endless/xfade"]),
    ("normalized above 1", ("/endless/master/gain/normalized", 1.5), ["/endless/master/gain/normalized"]),
    ("normalized below 0", ("/endless/slot/1/pan/normalized", -0.1), ["/endless/slot/1/pan/normalized"]),
    ("NaN", ("/endless/slot/1/pan", float("nan")), ["/endless/slot/1/pan"]),
    ("infinity", ("/endless/morph/x", float("inf")), ["/endless/morph/x"]),
    ("a switch given 2", ("/endless/slot/1/mute", 2), ["/endless/slot/1/mute"]),
    ("an unknown choice", ("/endless/curve", "linear"), ["/endless/curve"]),
    ("a choice index past the end", ("/endless/morph/mode", 3), ["/endless/morph/mode"]),
    ("a fraction for a whole number", ("/endless/slot/1/steps", 2.5), ["/endless/slot/1/steps"]),
    ("no /normalized form", ("/endless/slot/1/mute/normalized", 1), ["/endless/slot/1/mute/normalized"]),
    ("a blob for text", ("/endless/slot/1/prompt", b"\x00\x01"), ["/endless/slot/1/prompt"]),
    ("a bad blend", ("/endless/slot/1/prompt", "rain:x | thunder"), ["/endless/slot/1/prompt"]),
    ("weights for a one-part prompt", ("/endless/slot/1/weights", 0.5, 0.5), ["/endless/slot/1/weights"]),
    ("negative weights", ("/endless/slot/1/weights", -1.0), ["/endless/slot/1/weights"]),
    ("subscribe to port 0", ("/endless/subscribe", 0), ["/endless/subscribe"]),
    ("subscribe to port 70000", ("/endless/subscribe", 70000), ["/endless/subscribe"]),
    ("record into a folder", ("/endless/record", 1, "../../etc/take.wav"), ["/endless/record"]),
    ("record given 2", ("/endless/record", 2), ["/endless/record"]),
    ("a pattern out of range", ("/endless/slot/*/gain", 9.0), ["/endless/slot/1/gain", "/endless/slot/2/gain"]),
    ("a bundle with one bad message", _bundle((G1, -6.0), ("/endless/slot/2/pan", 5.0)),
     ["/endless/slot/2/pan", G1]),
    ("a bundle with a bad blend", _bundle((G1, -6.0), ("/endless/slot/2/prompt", "rain:x")),
     [G1, "/endless/slot/2/prompt"]),
    ("a bundle with weights that do not fit", _bundle((G1, -6.0), ("/endless/slot/2/weights", 0.5, 0.5)),
     [G1, "/endless/slot/2/weights"]),
    ("not OSC", b"hello, world", ["?"]),
    ("empty", b"", ["?"]),
    ("an int cut short", b"/endless/slot/1/gain\0\0\0\0,i\0\0\0\0", ["?"]),
    ("a string without its end", encode("/endless/slot/1/prompt", "rain")[:-4], ["?"]),
    ("an address without its end", b"/endless/xfade", ["?"]),
    ("a bundle cut short", _bundle((G1, -6.0))[:-6], ["?"]),
]


def test_malformed_messages_are_answered_and_change_nothing(serve: Any) -> None:
    rec = Recording()
    calls = rec.calls
    osc_e, ref_e = plan_engine(), plan_engine()
    for e in (osc_e, ref_e):
        for s in range(SLOTS):
            e.push_clip(s, noise(1.0, seed=s))
    server, client = serve(osc_e, actions(osc_e, recording=rec))
    values = dict(osc_e.values)
    gen = osc_e.generator
    assert gen is not None
    plans = [(p.prompt, p.steps, p.generation) for p in gen.plans]
    for case, packet, where in MALFORMED:
        got = client.exchange(packet)
        errors = [m for m in got if m[0] == "/endless/error"]
        assert sorted(a[0] for _, a in errors) == sorted(where), (case, got)
        assert all(len(a) == 2 and isinstance(a[1], str) and a[1] for _, a in errors), (case, errors)
        assert osc_e.values == values and not calls, case
    assert [(p.prompt, p.steps, p.generation) for p in gen.plans] == plans
    assert server.stats.applied == 0 and server.stats.handler_exceptions == 0
    assert server.stats.malformed == sum(w == ["?"] for _, _, w in MALFORMED)
    assert np.array_equal(render(osc_e, 0.3, 256), render(ref_e, 0.3, 256))  # nothing reached the mixer
    assert client.exchange((G1, -6)) == [] and osc_e.values[("slot/gain", 0)] == -6.0  # still serving


def test_a_generator_parameter_without_a_generator_is_refused(serve: Any) -> None:
    e = mix_engine()
    server, client = serve(e)
    got = client.exchange(("/endless/slot/1/prompt", "rain"))
    assert got[0][0] == "/endless/error" and "no generator" in got[0][1][1]
    assert e.values[("slot/prompt", 0)] == ""


def test_handler_exceptions_are_counted_and_the_server_goes_on(serve: Any) -> None:
    e = mix_engine()
    server, client = serve(e, actions(e, recording=Recording(fail=RuntimeError("disk on fire"))))
    got = client.exchange(("/endless/record", 1))
    assert got == [("/endless/error", ["/endless/record", got[0][1][1]])] and "internal error" in got[0][1][1]
    assert server.stats.handler_exceptions == 1
    assert client.exchange((G1, -3)) == []  # still serving


# -- the server's own addresses ---------------------------------------------------------------------
def test_subscribe_sync_echo_unsubscribe(serve: Any) -> None:
    e = mix_engine()
    server, client = serve(e)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2.0)
    try:
        client.exchange(("/endless/subscribe", other.getsockname()[1]))  # feedback to another port
        dump: list[Msg] = []
        while not dump or dump[-1][0] != "/endless/sync/done":
            dump += [m for m in parse(other.recv(65536)) if not m[0].startswith("/endless/status/")]
        # every value the server would accept back: no generator here, so none of its settings
        kept = [k for k, _ in e.values if e.registry[k].target != "generator"]
        n_values = len(kept)
        n_norm = sum(e.registry[k].has_normalized for k in kept)
        assert len(dump) == n_values + n_norm + 2 and dump[-1] == ("/endless/sync/done", [len(dump) - 1])
        assert ("/endless/slot/2/mute", [0]) in dump and ("/endless/curve", ["equal_power"]) in dump
        assert ("/endless/record", [0]) in dump
        assert _next_echo(other)[0] == "/endless/pong"  # the exchange's marker: the client's replies come here too
        # the sender itself gets the dump on /sync, and the other port the echo of a change
        sync = client.exchange(("/endless/sync",))
        assert sync == dump
        other_sync = [_next_echo(other) for _ in range(len(dump) + 1)]  # the client's reply port: it too (issue 13)
        assert other_sync[:-1] == dump and other_sync[-1][0] == "/endless/pong"
        assert client.exchange(("/endless/slot/2/mute", 1)) == []  # not subscribed itself
        assert _next_echo(other) == ("/endless/slot/2/mute", [1])
        assert _next_echo(other)[0] == "/endless/pong"
        e.handle("/endless/xfade", [2.0])  # a change from any other input is echoed too
        assert _next_echo(other) == ("/endless/xfade", [2.0])
        client.exchange(("/endless/unsubscribe", other.getsockname()[1]))
        assert server.subscribers() == []
    finally:
        other.close()


def _next_echo(sock: socket.socket) -> Msg:
    while True:
        for m in parse(sock.recv(65536)):
            if not m[0].startswith("/endless/status/"):
                return m


def test_status_is_sent_and_coalesced_at_most_30_hz(serve: Any) -> None:
    e = mix_engine()
    server, client = serve(e)
    client.send("/endless/subscribe")
    e.mixer._tel.underflows = 3  # as if the audio device had underrun three times
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:  # a control loop ticking every 2 ms
        render(e, 0.002, 88)
        pump(server)
        time.sleep(0.002)
    got = client.until_pong(_ping(client))
    levels = [m for m in got if m[0] == "/endless/status/slot/1/level"]
    assert 5 <= len(levels) <= 0.5 * 30 + 2, len(levels)
    assert all(-100 <= m[1][0] < 0 for m in levels)
    names = {m[0] for m in got}
    for want in ("/endless/status/slot/2/buffered", "/endless/status/slot/2/queue", "/endless/status/xruns",
                 "/endless/status/starvations", "/endless/status/limiter", "/endless/status/tempo"):
        assert want in names, want
    assert ("/endless/status/xruns", [3]) in got


def test_ping_pong_and_large_datagrams(serve: Any) -> None:
    server, client = serve(mix_engine())
    blob = bytes(range(256)) * 200  # 51 KB: past python-osc's usual 8 KB
    client.send("/endless/ping", "hello", 2, blob)
    assert server.bus.wait(2.0) and pump(server) == 1
    client.sock.settimeout(2.0)
    assert parse(client.sock.recv(65536)) == [("/endless/pong", ["hello", 2, blob])]
    long_prompt = "rain " * 400  # 2000 characters: the longest prompt a slot takes (params.PROMPT_MAX_CHARS)
    e = plan_engine()
    server2, client2 = serve(e)
    assert client2.exchange(("/endless/slot/1/prompt", long_prompt)) == []
    assert e.values[("slot/prompt", 0)] == long_prompt


def test_words_triggers_patterns_and_releases(serve: Any) -> None:
    e = plan_engine()
    server, client = serve(e)
    assert client.exchange(("/endless/slot/1/prompt", "rain", "on", 2, "roofs")) == []
    assert e.values[("slot/prompt", 0)] == "rain on 2 roofs"  # Pd sends each word as a symbol
    assert client.exchange(("/endless/slot/1/next", 0.0), ("/endless/slot/1/regenerate", 0)) == []
    assert server.stats.releases_ignored == 2 and server.stats.applied == 1  # a button's release: nothing
    assert client.exchange(("/endless/slot/*/pan", 0.5)) == []
    assert e.values[("slot/pan", 0)] == e.values[("slot/pan", 1)] == 0.5
    assert client.exchange(("/endless/slot/{1,2}/steps", 7.0)) == []  # Pd's floats where an int is due
    assert [p.steps for p in e.generator.plans] == [7, 7]  # type: ignore[union-attr]


def test_record_start_stop(serve: Any) -> None:
    e = mix_engine()
    rec = Recording()
    server, client = serve(e, actions(e, recording=rec))
    got = client.exchange(("/endless/record/stop",))
    assert len(got) == 1 and got[0][0] == "/endless/error" and got[0][1][0] == "/endless/record/stop"
    assert got[0][1][1].startswith("not recording")
    assert client.exchange(("/endless/record", 1, "take1.wav")) == [("/endless/record", [1, "/recordings/take1.wav"])]
    assert server.recording == "/recordings/take1.wav"
    assert ("/endless/record", [1, "/recordings/take1.wav"]) in client.exchange(("/endless/sync",))
    assert client.exchange(("/endless/record", 0)) == [("/endless/record", [0, "/recordings/take-001.wav"])]
    assert client.exchange(("/endless/record/start", 1.0)) == [("/endless/record", [1, "/recordings/take-001.wav"])]
    assert client.exchange(("/endless/record/stop", 0.0)) == []  # the button's release
    assert client.exchange(("/endless/record/stop", 1.0)) == [("/endless/record", [0, "/recordings/take-001.wav"])]
    assert rec.calls == [(True, "take1.wav"), (False, None), (True, None), (False, None)]


def test_record_goes_to_every_subscriber(serve: Any) -> None:
    e = mix_engine()
    server, client = serve(e, actions(e, recording=Recording()))
    other = Client(server)
    try:
        other.exchange(("/endless/subscribe",))
        assert client.exchange(("/endless/record", 1)) == [("/endless/record", [1, "/recordings/take-001.wav"])]
        assert ("/endless/record", [1, "/recordings/take-001.wav"]) in other.marker()
    finally:
        other.close()


def test_a_flood_of_changes_is_echoed_newest_per_parameter(serve: Any) -> None:
    """10,000 changes to two faders while the sender is busy: subscribers get the newest value of
    each, not a queue of 10,000 (which delayed pongs by a second, issue 12 finding 5)."""
    e = mix_engine()
    server, client = serve(e)
    client.exchange(("/endless/subscribe",))
    with e.lock:  # as the bus runs a flood of jobs, faster than the sender sends
        for i in range(5000):
            e.handle("/endless/master/gain", [-float(i % 50)])
            e.handle("/endless/slot/1/gain", [-float(i % 40)])
        e.handle("/endless/master/gain", [-7.0])
    got = client.marker()
    masters = [args for addr, args in got if addr == "/endless/master/gain"]
    assert masters and masters[-1] == [-7.0]
    assert len(masters) < 100  # coalesced: not one echo per change
    assert [args for addr, args in got if addr == "/endless/slot/1/gain"][-1] == [-float(4999 % 40)]


def test_actions_from_another_input_reach_osc_subscribers(serve: Any) -> None:
    """A take started from a MIDI button, or a control MIDI learn bound, is told to OSC subscribers."""
    e = mix_engine()
    acts = actions(e, recording=Recording())
    server, client = serve(e, acts)
    client.exchange(("/endless/subscribe",))
    with e.lock:  # as the bus runs a MIDI action job
        acts.run("record", (1,))
    got = client.marker()
    assert ("/endless/record", [1, "/recordings/take-001.wav"]) in got
    assert server.recording == "/recordings/take-001.wav"
    with e.lock:
        acts.announce(Done("learn", "CC 7 ch 1 -> /endless/slot/1/gain"))
    assert ("/endless/done", ["/endless/learn", "CC 7 ch 1 -> /endless/slot/1/gain"]) in client.marker()


def test_without_a_record_switch_or_actions(serve: Any) -> None:
    e = mix_engine()
    server, client = serve(e, actions(e))
    got = client.exchange(("/endless/record", 1))
    assert got[0][0] == "/endless/error" and "not available" in got[0][1][1]
    server2, client2 = serve(mix_engine())  # no actions at all
    for a in ACTIONS:
        got = client2.exchange((f"/endless/{a.path}", "x"))
        assert got == [("/endless/error", [f"/endless/{a.path}", got[0][1][1]])] and "not available" in got[0][1][1]


def test_actions_run_on_the_control_thread(serve: Any, tmp_path: Path) -> None:
    import threading

    e = mix_engine()
    acts = actions(e, tmp_path)
    acts.presets.store(e, "Dusk")
    e.handle("/endless/master/gain", [-12.0])
    threads: set[str] = set()
    e.listeners.append(lambda ref, value: threads.add(threading.current_thread().name))
    server, client = serve(e, acts, immediate=True)  # actions wait for the control thread even so
    assert client.exchange(("/endless/preset/recall", "dusk", 2.0)) == [
        ("/endless/done", ["/endless/preset/recall", "Dusk"])]  # the preset's own name
    assert e.values[("master/gain", None)] == 0.0
    assert threads == {threading.current_thread().name}  # drained here, not on a server thread
    assert client.exchange(("/endless/preset/recall", 0.0)) == []  # a button's release
    got = client.exchange(("/endless/preset/recall",))
    assert got == [("/endless/error", ["/endless/preset/recall", "expected an argument, got none"])]
    got = client.exchange(("/endless/preset/recall", "nowhere"))
    assert got[0][:1] == ("/endless/error",) and got[0][1][0] == "/endless/preset/recall" and len(got) == 1


def test_tcp_slip(serve: Any) -> None:
    e = mix_engine()
    server, _ = serve(e, tcp_port=0)
    s = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5)
    buf = bytearray()

    def read_until(address: str) -> list[Msg]:
        """Frames from the connection until one on `address`, the test thread being the control loop."""
        got: list[Msg] = []
        deadline = time.monotonic() + 5
        s.settimeout(0.01)
        while True:
            while (i := buf.find(slip.END, 1)) < 0:
                assert time.monotonic() < deadline, got
                pump(server, 0.01)
                with contextlib.suppress(TimeoutError):
                    buf.extend(s.recv(65536))
            frame, rest = bytes(buf[:i + 1]), bytes(buf[i + 1:])
            buf[:] = rest
            if frame.strip(slip.END):
                got += parse(slip.decode(frame))
                if got[-1][0] == address:
                    return got

    try:
        s.sendall(slip.encode(encode("/endless/subscribe")))
        read_until("/endless/sync/done")
        gain = slip.encode(encode(G1, -6.0))  # -6.0 is 0xC0C00000: END bytes inside, escaped
        assert gain.count(slip.ESC) >= 1
        s.sendall(gain[:9])  # a frame split across reads, and an empty frame (double END)
        time.sleep(0.05)
        s.sendall(gain[9:] + slip.END + slip.encode(encode("/endless/ping", 5)))
        echo = read_until("/endless/pong")
        assert echo[-1] == ("/endless/pong", [5])
        assert ("/endless/slot/1/gain", [-6.0]) in echo and e.values[("slot/gain", 0)] == -6.0
        s.sendall(slip.END + b"/endless\xdb\x01" + slip.END)  # an escape byte escaping nothing
        err = read_until("/endless/error")[-1]
        assert err[1][0] == "?" and "SLIP" in err[1][1]
        s.sendall(b"\x01" * (3 * 65536) + slip.END + slip.encode(encode("/endless/ping", 6)))
        assert "longer than" in read_until("/endless/error")[-1][1][1]
        assert read_until("/endless/pong")[-1] == ("/endless/pong", [6])
    finally:
        s.close()
    deadline = time.monotonic() + 2
    while server.subscribers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.subscribers() == []  # a closed connection unsubscribes


def test_allowlist_and_config_errors() -> None:
    e = mix_engine()
    bus = ControlBus(e)
    server = OscServer(bus, OscConfig(allow=("192.168.1.0/24", "10.0.0.7")))
    assert server.allows("192.168.1.77") and server.allows("10.0.0.7") and server.allows("::ffff:192.168.1.9")
    assert server.allows("127.0.0.1") and server.allows("::1")  # loopback always
    assert not server.allows("10.0.0.8") and not server.allows("192.168.2.1") and not server.allows("nonsense")
    assert OscServer(bus, OscConfig()).allows("203.0.113.5")  # no list: anyone who reaches the port
    for bad in (OscConfig(allow=("192.168.1.300",)), OscConfig(status_hz=60), OscConfig(port=70000),
                OscConfig(tcp_port=-1)):
        with pytest.raises(ConfigError):
            OscServer(bus, bad)
    with OscServer(bus, OscConfig(port=0)) as first, pytest.raises(ConfigError, match="in use"):
        OscServer(bus, OscConfig(port=first.port)).start()
    with OscServer(bus, OscConfig(port=0, tcp_port=0)) as first, pytest.raises(ConfigError, match="--osc-tcp-port"):
        OscServer(bus, OscConfig(port=0, tcp_port=first.tcp_port)).start()
    with pytest.raises(ConfigError, match="--listen"):
        OscServer(bus, OscConfig(host="203.0.113.77", port=0)).start()
    assert e.listeners == []  # stop() detached the echo


def _own_address() -> str:
    """This machine's address on its way out (no packet is sent), to reach the server not from loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        return str(s.getsockname()[0])


def test_a_peer_not_allowed_is_refused_packet_by_packet(serve: Any) -> None:
    host = _own_address()
    if ipaddress.ip_address(host).is_loopback:
        pytest.fail("this machine has no address but loopback: the allowlist cannot be tested here")
    e = mix_engine()
    server, _ = serve(e, host="0.0.0.0", allow=("198.51.100.0/24",))  # not `host`
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.sendto(encode(G1, -6.0), (host, server.port))
        deadline = time.monotonic() + 2
        while server.stats.refused_peers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.stats.refused_peers == 1 and server.stats.packets == 0 and server.bus.pending() == 0
    assert e.values[("slot/gain", 0)] == 0.0


def test_wait_returns_as_soon_as_a_message_arrives() -> None:
    e = mix_engine()
    bus = ControlBus(e, immediate=False)  # every input shares the bus: the control loop sleeps on it
    server = OscServer(bus, OscConfig(port=0)).start()
    client = Client(server)
    try:
        t0 = time.perf_counter()
        client.send(G1, -1.0)
        assert bus.wait(2.0)
        assert time.perf_counter() - t0 < 0.1
        assert pump(server) == 1 and server.delays and server.delays[-1] < 100_000_000
        assert e.values[("slot/gain", 0)] == -1.0
        assert not bus.wait(0.01)  # nothing more
    finally:
        client.close()
        server.stop()
        server.stop()  # idempotent


def test_immediate_applies_on_arrival_and_keeps_order_behind_a_busy_control_loop(serve: Any) -> None:
    """With the engine's lock free, a message is applied on the receiving thread by the bus, with
    no drain(); while the control loop holds the lock it waits on the bus, and the next message
    that finds the lock free applies it first, so the order holds."""
    e = mix_engine()
    server, client = serve(e, immediate=True)
    g1 = e.registry.resolve(G1)

    def applied(value: float) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with e.lock:
                if e.values[(g1.param.key, g1.slot)] == value:
                    return True
            time.sleep(0.002)
        return False

    e.mixer.take_commands()  # the clips' pushes: the audio thread would take them
    client.send(G1, -7.0)
    assert applied(-7.0) and server.stats.immediate == 1
    cmds = e.mixer.take_commands()
    assert [c[2] for c in cmds] == [db_to_amp(-7.0)]  # in the audio thread's ring
    with e.lock:  # the control loop is busy: the message waits and wakes it
        client.send(G1, -9.0)
        assert server.bus.wake.wait(5)
        assert e.values[(g1.param.key, g1.slot)] == -7.0
    client.send(G1, -11.0)  # finds the lock free: -9 first, then -11
    assert applied(-11.0)
    assert [c[2] for c in e.mixer.take_commands()] == [db_to_amp(-9.0), db_to_amp(-11.0)]
    assert pump(server) == 0  # nothing left for the control loop


def test_reference_lists_every_server_action_and_status_address() -> None:
    text = server_reference("/endless")
    for a in SERVER_ADDRESSES:
        assert f"`/endless/{a.path}`" in text
    for a in ACTIONS:
        assert f"| `/endless/{a.path}` | {a.args or '-'} | {a.doc} |" in text
    for a in STATUS_ADDRESSES:
        assert f"`/endless/status/{a.path}`" in text


def test_peer_key_tells_transports_apart() -> None:
    assert Peer("127.0.0.1", 9000).key != Peer("127.0.0.1", 9001).key
    assert str(Peer("127.0.0.1", 9000)) == "udp:127.0.0.1:9000"


# -- a packet is one job on the control bus: all or nothing --------------------------------------------
def _errors(got: list[Msg]) -> dict[str, str]:
    return {args[0]: args[1] for a, args in got if a == "/endless/error"}


def test_a_bundle_with_a_bad_action_applies_nothing_and_names_the_action(serve: Any, tmp_path: Path) -> None:
    e = mix_engine()
    acts = actions(e, tmp_path)
    acts.presets.store(e, "Dusk")
    server, client = serve(e, acts)
    before = dict(e.values)
    got = client.exchange(_bundle(("/endless/master/gain", -21.0), ("/endless/preset/next", "fast"),
                                  (G1, -31.0)))
    errors = _errors(got)
    assert set(errors) == {"/endless/master/gain", "/endless/preset/next", G1}, got
    assert "fast" in errors["/endless/preset/next"] and "not applied" not in errors["/endless/preset/next"]
    assert errors["/endless/master/gain"].startswith("not applied") and errors[G1].startswith("not applied")
    assert e.values == before and server.stats.applied == 0 and acts.current is None
    got = client.exchange(_bundle(("/endless/master/gain", -21.0), ("/endless/preset/next", 0.5), (G1, -31.0)))
    assert got[-1] == ("/endless/done", ["/endless/preset/next", "Dusk"]) and not _errors(got)
    assert e.values[("master/gain", None)] == 0.0  # the recall came after the gain, in order
    assert e.values[("slot/gain", 0)] == -31.0 and server.stats.applied == 2


def test_weights_are_checked_against_the_prompt_the_same_bundle_sets(serve: Any) -> None:
    e = plan_engine()
    server, client = serve(e)
    w1 = "/endless/slot/1/weights"
    assert client.exchange(_bundle(("/endless/slot/1/prompt", "a | b"), (w1, 0.25, 0.75))) == [], "two parts: fits"
    assert e.values[("slot/prompt", 0)] == "a | b" and e.values[("slot/weights", 0)] == (0.25, 0.75)
    assert e.generator is not None and e.generator.plans[0].prompt == "a:0.25 | b:0.75"
    got = client.exchange(_bundle(("/endless/slot/1/prompt", "a"), (w1, 0.2, 0.8)))
    errors = _errors(got)
    assert set(errors) == {"/endless/slot/1/prompt", w1} and "weights" in errors[w1], got
    assert errors["/endless/slot/1/prompt"].startswith("not applied")
    assert e.values[("slot/prompt", 0)] == "a | b" and e.generator.plans[0].prompt == "a:0.25 | b:0.75"
    assert server.stats.applied == 2


def test_sync_dumps_only_what_the_server_accepts_back(serve: Any) -> None:
    e = plan_engine()
    server, client = serve(e)
    assert client.exchange(("/endless/slot/2/prompt", "rain | thunder"), ("/endless/slot/1/mute", 1)) == []
    dump = client.exchange(("/endless/sync",))
    assert dump[-1] == ("/endless/sync/done", [len(dump) - 1])
    assert ("/endless/slot/2/prompt", ["rain | thunder"]) in dump and ("/endless/slot/1/mute", [1]) in dump
    assert not [m for m in dump if m[0].endswith("/weights")], "weights with no values would be refused"
    # played back as one bundle, the dump is accepted whole and changes nothing
    before = dict(e.values)
    replay = [m for m in dump if m[0] not in ("/endless/sync/done", "/endless/record")]
    applied = server.stats.applied
    assert client.exchange(_bundle(*[(a, *args) for a, args in replay])) == []
    assert server.stats.applied == applied + len(replay) and e.values.keys() == before.keys()
    for k, v in e.values.items():  # OSC's floats are 32-bit
        assert v == before[k] if isinstance(v, (str, bool, tuple)) else math.isclose(v, before[k], rel_tol=1e-6, abs_tol=1e-5), k


def test_a_ping_waits_behind_an_action(serve: Any, tmp_path: Path) -> None:
    e = mix_engine()
    server, client = serve(e, actions(e, tmp_path), immediate=True)
    client.send("/endless/preset/store", "Dawn")  # an action: it waits for the control thread
    client.send("/endless/ping", 99)  # may not overtake it, though it could run where it arrived
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.sock.recv(65536)
    assert client.until_pong(99) == [("/endless/done", ["/endless/preset/store", "Dawn"])]


def test_the_osc_code_never_takes_the_engine_lock() -> None:
    for path in (ROOT / "instrument" / "control" / "osc").glob("*.py"):
        used = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert not used & {"lock", "acquire"}, f"{path}: the bus owns the engine lock"


# -- Pure Data as a real peer -----------------------------------------------------------------------
def _pd() -> str:
    path = shutil.which("pd")
    if path is None:
        pytest.fail("pd not found: apt-get install puredata-core (make test installs it)")
    return path


def _run_pd(server: OscServer, patch: str, send: str, seconds: float = 15.0) -> str:
    proc = subprocess.Popen([_pd(), "-nogui", "-nosound", "-nomidi", "-noprefs", "-stderr", "-open",
                             str(ROOT / "max_patches" / patch), "-send", send],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + seconds
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            pump(server, 0.01)
    finally:
        if proc.poll() is None:
            proc.terminate()
        out = proc.communicate(timeout=10)[0]
    return out


def test_pure_data_changes_a_gain_and_a_prompt(serve: Any) -> None:
    e = plan_engine()
    server, _ = serve(e)
    out = _run_pd(server, "endless_test.pd", f"endless-port {server.port}")
    assert "error" not in out, out
    assert e.values[("slot/gain", 0)] == -12.0
    assert e.values[("slot/prompt", 0)] == "rain on a tin roof"
    assert e.generator is not None and e.generator.plans[0].prompt == "rain on a tin roof"
    lines = out.splitlines()
    for want in ("endless-reply: endless pong 7", "endless-reply: endless slot 1 gain -12",
                 "endless-reply: endless slot 1 prompt rain\\ on\\ a\\ tin\\ roof",  # Pd escapes the spaces
                 "endless-reply: endless sync done"):
        assert any(ln.startswith(want) for ln in lines), (want, out)
    assert server.stats.errors == 0 and server.stats.malformed == 0


def test_pure_data_control_patch_drives_the_instrument(serve: Any) -> None:
    e = Engine(MixerConfig(slots=4, sample_rate=SR))
    server, _ = serve(e)
    out = _run_pd(server, "endless.pd", f"endless-ctl connect 127.0.0.1 {server.port}; endless-subscribe 1; "
                  "endless-gain-2 0.5; endless-mute-3 1; endless-next-1 bang; pd quit")
    t0 = time.monotonic()
    while server.stats.applied < 3 and time.monotonic() - t0 < 2:
        pump(server, 0.05)
    assert "error" not in out and "couldn't create" not in out, out
    assert math.isclose(e.values[("slot/gain", 1)], 20 * math.log10(2 * 0.5 ** 2), abs_tol=1e-4)
    assert e.values[("slot/mute", 2)] is True
    assert server.stats.applied == 3 and len(server.subscribers()) == 1


# -- the generator, for real ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_prompt_over_osc_reaches_the_rendered_audio(serve: Any) -> None:
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR, max_batch=1, threads=1))
    client.start()
    e = Engine(MixerConfig(slots=1, sample_rate=SR, xfade=0.5), Scheduler(client, 1, base_seed=3))
    try:
        for a, v in (("/endless/slot/1/steps", 3), ("/endless/slot/1/length", 3.0), ("/endless/slot/1/prompt", "rain")):
            e.handle(a, [v])
        server, osc = serve(e)
        render(e, 2.0, 512)
        change = e.mixer.frame
        got = osc.exchange(("/endless/slot/1/prompt", "thunder:0.7 | rain:0.3"), ("/endless/slot/1/seed", 77))
        assert got == [] and server.stats.applied == 2
        out = render(e, 6.0, 512)
    finally:
        client.stop()
    after = [c for c in e.clip_log if c.frame >= change]
    assert after and after[0].cut and after[0].frame == change  # the new prompt cuts in where it arrived
    assert all(c.prompt == "thunder:0.7 | rain:0.3" and c.seed == 77 for c in after)
    assert all(c.prompt == "rain" for c in e.clip_log if c.frame < change)
    assert np.isfinite(out).all() and np.abs(out).max() > 0.01
