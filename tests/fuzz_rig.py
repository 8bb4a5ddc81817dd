"""What the fuzzers share (tests/test_fuzz_*.py and benchmarks/fuzz_atheris.py): an in-process
OSC server and a MIDI control on real engines, input generators, and the invariants checked after.

The OSC rig is a real `OscServer` (started: its UDP and TCP ports and its sender thread run) on a
real `ControlBus` over an `Engine` with a `Scheduler` whose worker is never started, so generator
parameters (prompts, steps, seeds) are accepted into its plans; its mixer is rendered a block every
`TICK` inputs, as the audio thread would, so the command ring never fills. Bulk input goes straight
to `Routes.packet`, the transport's entry point; `send_udp`/`send_tcp` go through the sockets.
Replies go to a UDP socket of ours that nobody reads (the kernel drops what does not fit).
"""

from __future__ import annotations

import logging
import math
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pythonosc import slip

from instrument.control.actions import Actions
from instrument.control.bus import ControlBus
from instrument.control.mapfile import parse_mapping
from instrument.control.midi import MidiConfig, MidiControl
from instrument.control.osc import OscConfig, OscServer, Peer
from instrument.control.presets import PresetStore
from instrument.control.surface import Surface
from instrument.engine import Engine
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.params import Registry
from instrument.rt import MixerConfig
from instrument.scheduler import Scheduler

SR = 44100
SLOTS = 4
TICK = 256  # inputs between two rendered blocks (and bus drains)
BLOCK = 256
HUGE = (1e308, -1e308, 3.4e38, 2**31 - 1, -(2**31), 2**63 - 1, 1e-320, -0.0)
HOSTILE: tuple[Any, ...] = (math.nan, math.inf, -math.inf, *HUGE, 0, 1, -1, 0.5, True, False, None, "",
                            "x" * 300, "nan", "inf", "-1", "rain:nan | wind", "a:1|b:1|c:1", "\x00", "é\u2028",
                            b"", b"\x00\xff" * 40)


# == engines ======================================================================================
def plan_engine(slots: int = SLOTS) -> Engine:
    """An engine with a real Scheduler whose worker is never started, and a second of noise queued in
    each slot (so the rendered blocks carry sound through gains, pans, morphs and the limiter)."""
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR))
    e = Engine(MixerConfig(slots=slots, sample_rate=SR, queue_capacity=16), Scheduler(client, slots))
    rng = np.random.default_rng(0)
    for s in range(slots):
        e.push_clip(s, (rng.standard_normal((SR, 2)) * 0.3).astype(np.float32))
    return e


def value_problems(engine: Engine) -> list[str]:
    """Every engine value outside its registry range or not finite (empty when all hold)."""
    reg, bad = engine.registry, []
    for (key, slot), v in engine.values.items():
        p = reg[key]
        where = f"{key}[{slot}]={v!r}"
        if p.kind in ("float", "int"):
            assert p.min is not None and p.max is not None
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and p.min <= v <= p.max
            ok = ok and (p.kind == "float" or isinstance(v, int))
        elif p.kind == "bool":
            ok = isinstance(v, bool)
        elif p.kind == "enum":
            ok = v in p.choices
        elif p.kind == "text":
            ok = isinstance(v, str)
        elif p.kind == "weights":
            ok = isinstance(v, tuple) and len(v) <= 16 and all(
                isinstance(w, float) and math.isfinite(w) and w >= 0 for w in v) and (not v or any(w > 0 for w in v))
        else:
            ok = True
        if not ok:
            bad.append(where)
    return bad


class Render:
    """Renders the engine's mixer a block at a time, as the audio thread would, checking the output."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.block = np.zeros((BLOCK, 2), np.float32)
        self.blocks = 0
        self.bad_blocks = 0  # blocks with a non-finite sample or one above full scale

    def __call__(self) -> None:
        self.engine.mixer.process(self.block)
        self.blocks += 1
        if not np.isfinite(self.block).all() or float(np.abs(self.block).max()) > 1.0:
            self.bad_blocks += 1


def rig_problems(engine: Engine, bus: ControlBus, render: Render) -> list[str]:
    """The invariants every rig checks: values in range and finite, no bug on the bus, the bus empty
    after a drain, the rendered audio finite and at most full scale."""
    out = value_problems(engine)
    if bus.stats.errors:
        out.append(f"{bus.stats.errors} bus job errors (bugs)")
    if bus.pending():
        out.append(f"{bus.pending()} jobs left on the bus after a drain")
    if render.bad_blocks:
        out.append(f"{render.bad_blocks} rendered blocks not finite or above full scale")
    return out


class LogLines(logging.Handler):
    """Counts the records logged (any logger) and keeps the first few with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if (record.exc_info or "Traceback" in record.getMessage()) and len(self.tracebacks) < 5:
            self.tracebacks.append(self.format(record))

    def __enter__(self) -> LogLines:
        root = logging.getLogger()
        self._level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


# == OSC ==========================================================================================
class OscRig:
    def __init__(self, slots: int = SLOTS) -> None:
        self.engine = plan_engine(slots)
        self.bus = ControlBus(self.engine, immediate=True)
        self.server = OscServer(self.bus, OscConfig(port=0, tcp_port=0)).start()
        self.routes = self.server.routes
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.peer = Peer("127.0.0.1", self.sink.getsockname()[1])
        self.render = Render(self.engine)
        self.inputs = 0
        self.max_outbox = 0
        self.max_pending = 0
        self.bugs: list[tuple[str, str]] = []  # (where, the exception's type and text) of every bug noted
        for part in (self.routes, self.server.feedback):
            part._note = self._noting(part._note)

    def _noting(self, note: Callable[..., None]) -> Callable[..., None]:
        """Keep what a bug note says before it reaches the rate-limited log (which drops repeats)."""
        def noted(text: str, exc: BaseException | None = None) -> None:
            if exc is not None and len(self.bugs) < 1000:
                self.bugs.append((text, f"{type(exc).__name__}: {exc}"))
            note(text, exc)
        return noted

    def feed(self, data: bytes) -> None:
        """One packet into the routes, as the transport hands it over."""
        self.routes.packet(data, self.peer)
        self.inputs += 1
        if self.inputs % TICK == 0:
            self.tick()

    def tick(self) -> None:
        """The control loop's tick and an audio block."""
        self.max_pending = max(self.max_pending, self.bus.pending())
        self.max_outbox = max(self.max_outbox, self.server.feedback._outbox.qsize())
        with self.engine.lock:
            self.bus.drain()
            self.server.tick()
            self.render()

    def settle(self, timeout: float = 60.0) -> bool:
        """Tick until the sender has sent every reply (True), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if self.server.feedback._outbox.empty():
                time.sleep(0.05)  # the last item being sent
                return True
            time.sleep(0.01)
        return False

    def problems(self) -> list[str]:
        """What broke an invariant (after the replies are sent and a final tick): values, exceptions,
        the audio, the bus."""
        if not self.settle():
            return [f"the sender did not send its {self.server.feedback._outbox.qsize()} replies within 60 s"]
        st = self.server.stats
        bugs = [f"{st.handler_exceptions} handler exceptions"] if st.handler_exceptions else []
        return bugs + rig_problems(self.engine, self.bus, self.render)

    def close(self) -> None:
        self.server.stop()
        self.sink.close()


def osc_addresses(registry: Registry) -> list[str]:
    """Every parameter address (real and /normalized), the server's own but subscribe (which would
    send to any port of this host), the actions, and near misses."""
    reg, pre, out = registry, registry.prefix, []
    for p in reg:
        for slot in range(reg.slots + 1) if p.scope == "slot" else (None,):  # one slot past the last
            a = p.address(pre, slot)
            out += [a, a + "/normalized"]
    out += [f"{pre}/{a}" for a in ("ping", "sync", "preset/recall", "preset/next", "preset/store", "learn",
                                   "record", "preset/arm", "unknown", "slot/0/gain", "slot/x/gain", "")]
    out += [f"{pre}/slot/*/gain", f"{pre}/slot/[12]/mute", f"{pre}/master/g?in", f"{pre}/{{xfade,curve}}",
            "/other/xfade", "/", "//", "noslash"]
    return out


def _pad(b: bytes) -> bytes:
    """An OSC string or blob body: padded with NULs to a multiple of 4 (a string always ends with one)."""
    return b + b"\x00" * (4 - len(b) % 4)


def encode_msg(address: str, args: tuple[tuple[str | None, Any], ...]) -> bytes:
    """An OSC message; each argument with its type tag (None: the usual one for its Python type). Our
    own encoder: python-osc's refuses what a hostile sender can send (NULs in strings, empty blobs)."""
    tags, body = ",", b""
    for tag, a in args:
        if tag is None:
            tag = ("T" if a else "F") if isinstance(a, bool) else "N" if a is None else "s" if isinstance(a, str) \
                else "b" if isinstance(a, bytes) else "i" if isinstance(a, int) else "f"
        tags += tag
        if tag == "s":
            body += _pad(str(a).encode("utf-8", "surrogatepass"))
        elif tag == "b":
            body += struct.pack(">i", len(a)) + (_pad(a) if len(a) % 4 else a)
        elif tag in "ifhd":
            body += struct.pack({"i": ">i", "f": ">f", "h": ">q", "d": ">d"}[tag], a)
    return _pad(address.encode("utf-8", "surrogatepass")) + _pad(tags.encode()) + body


def encode_bundle(items: list[bytes], timetag: int = 1) -> bytes:
    """An OSC bundle of datagrams (messages or bundles); timetag 1 is "immediately"."""
    return b"#bundle\x00" + struct.pack(">Q", timetag) + b"".join(struct.pack(">i", len(d)) + d for d in items)


def typed(a: Any) -> tuple[str | None, Any]:
    """An argument with an explicit OSC type where python-osc's own choice would refuse it."""
    if isinstance(a, bool) or a is None or isinstance(a, (str, bytes)):
        return (None, a)
    if isinstance(a, int):
        return ("h" if not -(2**31) <= a < 2**31 else "i", a)
    return ("d" if math.isfinite(a) and abs(a) > 3.4e38 else "f", a)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A valid datagram broken the ways a wire or a fuzzer breaks it."""
    b = bytearray(data)
    op = rng.randrange(7)
    if op == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        del b[rng.randrange(len(b) + 1):]
    elif op == 2 and b:  # garbage in the type tags (after the first ',')
        i = b.find(b",")
        i = rng.randrange(len(b)) if i < 0 else i
        for k in range(rng.randint(1, 8)):
            if i + 1 + k < len(b):
                b[i + 1 + k] = rng.choice(b"ifsbhdtTFNIcrm[]x\x00,")
    elif op == 3:  # a size or length field made huge or negative
        if len(b) >= 4:
            i = rng.randrange(0, len(b) - 3) & ~3
            b[i:i + 4] = struct.pack(">i", rng.choice((-1, 2**31 - 1, len(b) * 2, 0, -(2**31))))
    elif op == 4:  # spliced with itself
        k = rng.randrange(len(b) + 1)
        b = b[:k] + b[rng.randrange(len(b) + 1):]
    elif op == 5:  # random bytes appended
        b += rng.randbytes(rng.randrange(1, 40))
    else:  # a bundle header in front
        b = bytearray(b"#bundle\x00" + rng.randbytes(8) + struct.pack(">i", len(b))) + b
    return bytes(b)


def random_message(rng: random.Random, addresses: list[str]) -> bytes:
    args = tuple(typed(rng.choice(HOSTILE) if rng.random() < 0.6 else rng.uniform(-200, 200))
                 for _ in range(rng.choice((0, 1, 1, 1, 2, 3))))
    return encode_msg(rng.choice(addresses), args)


def osc_corpus(rng: random.Random, addresses: list[str], n: int) -> Iterator[bytes]:
    """`n` packets: well-formed messages and bundles with hostile values, mutations, random bytes."""
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            yield random_message(rng, addresses)
        elif r < 0.4:
            yield encode_bundle([random_message(rng, addresses) for _ in range(rng.randint(0, 4))])
        elif r < 0.45:  # nested
            inner = encode_bundle([random_message(rng, addresses) for _ in range(rng.randint(1, 3))])
            yield encode_bundle([inner, random_message(rng, addresses)])
        elif r < 0.85:
            yield mutate(random_message(rng, addresses) if rng.random() < 0.7
                         else encode_bundle([random_message(rng, addresses)]), rng)
        else:
            yield rng.randbytes(rng.randrange(0, 96))


def send_tcp_slip(port: int, packets: list[bytes]) -> None:
    """SLIP-framed packets over one TCP connection (TouchOSC's TCP mode), with garbage frames too."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(slip.encode(p) for p in packets))


# == MIDI =========================================================================================
MAPPING = """version = 1
[[control]]
cc = 7
target = "/endless/master/gain"
takeover = "jump"
[[control]]
cc = 10
channel = 2
target = "/endless/slot/1/pan"
[[control]]
cc14 = 1
target = "/endless/xfade"
curve = "log"
[[control]]
cc14 = 2
channel = 1
target = "/endless/slot/2/gain"
min = -40
max = 6
[[control]]
nrpn = 300
target = "/endless/morph/position"
[[control]]
nrpn = 301
bits = 14
target = "/endless/tempo"
curve = "exp"
[[control]]
cc = 20
mode = "twos_complement"
target = "/endless/slot/3/guidance"
step = 0.05
[[control]]
cc = 21
mode = "binary_offset"
target = "/endless/slot/4/steps"
[[control]]
cc = 22
mode = "sign_magnitude"
target = "/endless/morph/x"
[[control]]
note = 36
target = "/endless/slot/1/mute"
button = "momentary"
[[control]]
note = 37
target = "/endless/slot/2/solo"
[[control]]
note = 38
target = "/endless/slot/3/next"
[[control]]
note = 39
target = "/endless/curve"
value = "sin2"
[[control]]
cc = 64
target = "/endless/autolevel"
[[control]]
cc = 30
target = "/endless/morph/mode"
[[control]]
cc = 31
target = "/endless/slot/1/seed"
[[control]]
program = 5
target = "/endless/quantize"
value = "bar"
"""
MIDI_NUMBERS = (1, 2, 6, 7, 10, 20, 21, 22, 30, 31, 33, 34, 36, 37, 38, 39, 38, 64, 96, 97, 98, 99, 100, 101)


class MidiRig:
    """A `MidiControl` (no ports: messages are injected as if they had arrived) over the mapping above."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.engine = plan_engine(slots)
        reg = self.engine.registry
        self.surface = Surface(parse_mapping(MAPPING, "fuzz.toml", reg), reg)
        self.bus = ControlBus(self.engine, immediate=True)
        self.events: list[str] = []
        actions = Actions(self.engine, PresetStore(Path("/nonexistent"), ()))
        self.midi = MidiControl(MidiConfig(), self.surface, self.bus, actions, on_event=self._event)
        self.render = Render(self.engine)
        self.inputs = 0
        self.max_pending = 0

    def _event(self, text: str) -> None:
        if len(self.events) < 100000:
            self.events.append(text)

    def feed(self, data: tuple[int, ...]) -> None:
        self.midi.inject(data)
        self.inputs += 1
        if self.inputs % TICK == 0:
            self.tick()

    def tick(self) -> None:
        self.max_pending = max(self.max_pending, self.bus.pending())
        with self.engine.lock:
            self.bus.drain()
            self.midi.tick()
            self.render()

    def problems(self) -> list[str]:
        self.tick()
        return rig_problems(self.engine, self.bus, self.render)

    def close(self) -> None:
        self.midi.close()


def midi_message(rng: random.Random) -> tuple[int, ...]:
    """One message's bytes: mostly well-formed channel messages on the mapped numbers, then any
    status, out-of-range data, wrong lengths, running status, sysex fragments and empty ones."""
    r = rng.random()
    ch = rng.choice((0, 0, 1, 2, 15))
    if r < 0.45:
        kind = rng.choice((0xB0, 0xB0, 0xB0, 0x90, 0x80, 0xC0))
        num = rng.choice(MIDI_NUMBERS) if rng.random() < 0.8 else rng.randrange(128)
        val = rng.choice((0, 1, 63, 64, 65, 126, 127)) if rng.random() < 0.5 else rng.randrange(128)
        return (kind | ch, num) if kind == 0xC0 else (kind | ch, num, val)
    if r < 0.55:
        return (rng.choice((0xF8, 0xFA, 0xFB, 0xFC, 0xF2, 0xF2, 0xFE, 0xFF, 0xF6)), *(rng.randrange(128)
                                                                                 for _ in range(rng.randrange(3))))
    if r < 0.6:
        return (0xF0, *(rng.randrange(256) for _ in range(rng.randrange(6))), rng.choice((0xF7, 0x00)))
    if r < 0.65:
        return ()
    return tuple(rng.randrange(256) for _ in range(rng.randrange(1, 5)))

