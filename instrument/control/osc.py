"""The OSC server: UDP (and TCP with SLIP framing), its address space derived from the registry.

Threads; the engine is changed only by a thread holding `engine.lock`:
  receiver  one selector loop over the UDP socket, the TCP listener and its connections. It parses
            packets (python-osc), routes addresses through a Dispatcher built from the registry,
            and validates values with the registry. With `OscConfig.immediate` (what `endless
            play` uses) it then applies a packet of values, pings and dumps itself when the
            engine's lock is free (the control loop is asleep, which is almost always) and only
            such work waits before it (actions and record start/stop touch files: they stay with
            the control thread): the change is in the mixer's command
            ring ~0.24 ms (median, busy 2-core machine: `python benchmarks/bench_control.py`)
            after the datagram is read, with no second thread to wake. Otherwise, and
            whenever the control loop is busy, it queues the work on the inbox, each message with
            its sender, and sets the `wake` event (which other inputs may share); queued work is
            always applied first, so messages keep their order.
  control   the play loop calls `drain(engine)` each tick (holding the lock): it applies the inbox
            through `Engine.set`, and builds the status snapshot (at most `status_hz` a second,
            coalesced: a new one only once the last has been sent). Between ticks it sleeps on
            `wake` (or `wait()`). Either way the mixer's command ring has one producer at a time.
  sender    encodes and sends everything outgoing: replies, errors, echoes, sync dumps, status.

A malformed, unknown, wrongly typed or out-of-range message is answered on the sender's address
with `/endless/error <address> <message>` and changes nothing; the messages of one bundle (and
the targets of one address pattern) are applied all together or not at all.

    server = OscServer(engine, OscConfig(port=9000)).start()
    while playing:                 # the control loop
        server.drain(engine)       # or play(..., ticks=[server.drain], wake=server.wake)
        ...                        # the rest of the tick: scripts, engine.pump()
        server.wait(0.01)          # returns at once when a message arrives
    server.stop()
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import math
import queue
import re
import select
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pythonosc import slip
from pythonosc.dispatcher import Dispatcher, Handler
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from instrument.errors import ConfigError, EndlessError, ParamError
from instrument.params import Param, Ref, Value

if TYPE_CHECKING:
    from instrument.engine import Engine

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65536  # UDP's own limit; python-osc's examples stop at 8 KB
MAX_SLIP_FRAME = 2 * MAX_DATAGRAM  # escaped: at most twice the packet
SEND_TIMEOUT = 1.0  # a TCP client that does not read for this long is dropped
STATUS_REFRESH = 1.0  # seconds between full status frames (in between, only what changed)

Msg = tuple[str, tuple[Any, ...]]
RecordCallback = Callable[[bool, str | None], str]
Action = Callable[[tuple[Any, ...]], object]  # runs holding engine.lock, with the message's arguments


@dataclass(frozen=True)
class OscConfig:
    host: str = "127.0.0.1"  # --listen: the address to listen on (0.0.0.0: every interface, for a LAN)
    port: int = 9000  # --osc-port (UDP); 0 picks a free port
    tcp_port: int | None = None  # --osc-tcp-port: also OSC 1.1 over TCP, SLIP-framed (TouchOSC's TCP mode)
    allow: tuple[str, ...] = ()  # --allow: client addresses or networks; empty: anyone; loopback always
    status_hz: float = 30.0  # status and meters to subscribers at most this often (<= 30)
    max_subscribers: int = 32
    max_connections: int = 16  # TCP clients at once
    inbox: int = 4096  # messages waiting for the control thread before new ones are refused
    immediate: bool = False  # apply on the receiver thread when engine.lock is free (play() holds it per tick)


@dataclass(frozen=True)
class ServerAddress:
    path: str  # below the prefix
    args: str
    doc: str


# The addresses the server answers itself (the parameters come from the registry).
SERVER_ADDRESSES: tuple[ServerAddress, ...] = (
    ServerAddress("ping", "[any]", "Answered with `/pong` and the same arguments once everything sent before "
                  "it has been applied (round-trip time, liveness, a barrier)."),
    ServerAddress("subscribe", "[port]", "Send every accepted change (on its own address, real and /normalized), "
                  "and the status below, to the sender's address, or to `port` on the sender's host; starts "
                  "with a full dump as `/sync` gives. Over TCP without a port: on the connection."),
    ServerAddress("unsubscribe", "[port]", "Stop sending to that address."),
    ServerAddress("sync", "", "Dump every current value to the sender, then `/sync/done <count>`."),
    ServerAddress("record", "1 or 0 [name]", "Start (1) or stop (0) recording the output; `name` is a file name "
                  "(`take1.wav`, `.flac`), no folders. Answered (and sent to subscribers) with "
                  "`/record <1 or 0> <path>`."),
    ServerAddress("record/start", "[name]", "Same as `/record 1 [name]`."),
    ServerAddress("record/stop", "", "Same as `/record 0`."),
)

# Sent to subscribers under <prefix>/status, at most status_hz a second, only what changed (and
# everything once a second).
STATUS_ADDRESSES: tuple[ServerAddress, ...] = (
    ServerAddress("slot/N/level", "float dBFS", "RMS of the slot's last block after its gain (-100: silent)."),
    ServerAddress("slot/N/buffered", "float s", "Audio ready for the slot: the rest of its clip plus its queue."),
    ServerAddress("slot/N/queue", "int", "Clips queued for the slot."),
    ServerAddress("slot/N/progress", "float 0..1", "Generation of the slot's clip in flight (0: none)."),
    ServerAddress("generator/state", "text", "loading, ready, busy, restarting, failed or stopped."),
    ServerAddress("generator/progress", "float 0..1", "Steps done of the generator's current call."),
    ServerAddress("generator/rtf", "float", "Generation time over audio time of the last clip (< 1: keeps up)."),
    ServerAddress("xruns", "int", "Audio device underruns since the start."),
    ServerAddress("starvations", "int", "Times a slot ran out of audio."),
    ServerAddress("limiter", "float dB", "Gain reduction of the output limiter now."),
    ServerAddress("tempo", "float bpm", "The transport's tempo (internal, or MIDI clock)."),
)


def reference(prefix: str = "/endless") -> str:
    """Markdown for docs/osc.md: the server's own addresses, its replies and the status it sends."""
    rows = ["## Server addresses", "", "| address | arguments | what it does |", "|---|---|---|"]
    rows += [f"| `{prefix}/{a.path}` | {a.args or '-'} | {a.doc} |" for a in SERVER_ADDRESSES]
    rows += ["", f"A refused message is answered on the sender's address with `{prefix}/error <address> "
             "<message>` and changes nothing; the messages of one bundle apply all together or not at all. "
             "Address patterns (`*`, `?`, `[..]`, `{a,b}`) reach every parameter they match. A trigger given a "
             "0 (a button's release) does nothing. Text takes several arguments as words joined by spaces "
             "(Pure Data sends each word as its own symbol). Actions the instrument adds (presets, MIDI learn) "
             f"answer `{prefix}/done <address> <result>` where they have a result.",
             "", "## Status (to subscribers)", "", "| address | value | meaning |", "|---|---|---|"]
    rows += [f"| `{prefix}/status/{a.path}` | {a.args} | {a.doc} |" for a in STATUS_ADDRESSES]
    return "\n".join(rows) + "\n"


@dataclass
class OscStats:
    packets: int = 0  # datagrams and SLIP frames from allowed peers
    messages: int = 0
    applied: int = 0  # changes the engine accepted
    errors: int = 0  # /error replies (refused messages)
    malformed: int = 0  # packets that did not parse
    handler_exceptions: int = 0  # bugs caught in a handler (logged with a traceback; the server goes on)
    refused_peers: int = 0  # packets and connections from addresses not allowed
    inbox_full: int = 0
    immediate: int = 0  # packets applied on the receiver thread (OscConfig.immediate)
    releases_ignored: int = 0  # triggers with a 0 (button releases)
    sent: int = 0
    send_errors: int = 0


@dataclass(frozen=True)
class Peer:
    """Where a message came from, and where its answers go: a UDP address or a TCP connection."""

    host: str
    port: int
    conn: _Conn | None = None

    @property
    def key(self) -> tuple[object, ...]:
        return ("tcp", id(self.conn)) if self.conn is not None else ("udp", self.host, self.port)

    def __str__(self) -> str:
        return f"{'tcp' if self.conn is not None else 'udp'}:{self.host}:{self.port}"


# -- work for whoever applies it (the control thread, or the receiver when immediate) ---------------
@dataclass(frozen=True)
class _Set:
    address: str  # the concrete address (a pattern's match)
    args: tuple[Any, ...]
    ref: Ref
    value: Value


@dataclass(frozen=True)
class _Sync:
    address: str
    dest: Peer


@dataclass(frozen=True)
class _Record:
    address: str
    start: bool
    name: str | None


@dataclass(frozen=True)
class _Ping:
    address: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class _Act:
    address: str
    fn: Action
    args: tuple[Any, ...]


_Work = _Set | _Sync | _Record | _Act | _Ping


@dataclass(frozen=True)
class _Job:
    """One packet's work, applied together: its sender, and its arrival (perf_counter_ns)."""

    peer: Peer
    work: tuple[_Work, ...]
    t_ns: int


@dataclass(frozen=True)
class _Out:
    dest: Peer | None  # None: every subscriber
    msgs: tuple[Msg, ...]
    status: bool = False


_PATTERN = re.compile(r"[*?\[{]")
_SWITCH = Param("record", "global", "bool", False, "")  # /record's first argument, checked as a registry switch
_RECORD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,120}\.(wav|flac)")


def _plain(job: _Job) -> bool:
    """Only values, pings and dumps: what the receiver thread may apply itself. Actions (presets
    read and write files, learn saves one) and record start/stop wait for the control thread."""
    return all(isinstance(w, (_Set, _Ping, _Sync)) for w in job.work)


class OscServer:
    """OSC for one engine. `start()` binds and starts the threads (ConfigError if the port is taken);
    the control loop calls `wait()` then `drain()`; `stop()` closes everything (idempotent).

    `on_record(start, name) -> path` starts or stops recording the output (the CLI provides it;
    `name` is a checked bare file name or None); it runs holding `engine.lock` and raises an
    EndlessError to refuse. `actions` adds addresses (paths below the prefix, e.g. "preset/recall")
    whose callable runs holding `engine.lock` with the message's arguments: an EndlessError it
    raises goes back as /error, a result other than None as `/done <address> <result>`. `wake` is
    set whenever work arrives; share one Event among inputs so one wait serves them all.
    `xruns`, once the audio runs, returns the output's underflow count for the status.
    """

    def __init__(self, engine: Engine, config: OscConfig = OscConfig(), on_record: RecordCallback | None = None,
                 actions: dict[str, Action] | None = None, wake: threading.Event | None = None) -> None:
        if not 0 < config.status_hz <= 30:
            raise ConfigError(f"OSC status rate {config.status_hz:g} Hz: allowed above 0 up to 30 Hz")
        for name, port in (("--osc-port", config.port), ("--osc-tcp-port", config.tcp_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{name} {port}: allowed 0..65535 (0: any free port)")
        self.engine = engine
        self.config = config
        self.registry = engine.registry
        self.prefix = self.registry.prefix
        self.on_record = on_record
        self.wake = wake if wake is not None else threading.Event()
        self.xruns: Callable[[], int] | None = None
        self.stats = OscStats()
        self.recording: str | None = None  # the path being recorded
        self.port = config.port  # the bound ports, once started
        self.tcp_port = config.tcp_port
        self.delays: deque[int] = deque(maxlen=4096)  # arrival -> applied, ns (diagnostics, benchmarks)
        self._nets = _parse_allow(config.allow)
        self._allowed: dict[str, bool] = {}
        self.dispatcher = Dispatcher(strict_timing=False)  # for pattern matching only: timetags are ignored
        self._exact: dict[str, list[Handler]] = {}
        for p in self.registry:
            for slot in (range(self.registry.slots) if p.scope == "slot" else (None,)):
                for norm in ((False, True) if p.has_normalized else (False,)):
                    ref = Ref(p, slot, norm)
                    addr = ref.address(self.prefix)
                    self._exact[addr] = [self.dispatcher.map(addr, self._on_param, ref)]
        commands: dict[str, Callable[[Peer, str, tuple[Any, ...]], _Work | None]] = {
            "ping": self._on_ping, "subscribe": self._on_subscribe, "unsubscribe": self._on_unsubscribe,
            "sync": self._on_sync, "record": self._on_record, "record/start": self._on_record_start,
            "record/stop": self._on_record_stop,
        }
        self._commands = {f"{self.prefix}/{a.path}": commands[a.path] for a in SERVER_ADDRESSES}
        for path in actions or {}:
            if f"{self.prefix}/{path}" in self._commands or f"{self.prefix}/{path}" in self._exact:
                raise ValueError(f"action {path!r} would hide an address of the same name")
        self._actions = {f"{self.prefix}/{path}": fn for path, fn in (actions or {}).items()}
        self._inbox: queue.Queue[_Job] = queue.Queue(config.inbox)
        self._outbox: queue.Queue[_Out | None] = queue.Queue()
        self._subs: dict[tuple[object, ...], Peer] = {}
        self._subs_lock = threading.Lock()
        self._status_due = 0.0
        self._status_busy = False  # a snapshot is waiting for the sender: coalesce, do not queue another
        self._status_refresh = True
        self._status_full_at = 0.0
        self._last_status: dict[str, tuple[Any, ...]] = {}
        self._log_at = 0.0
        self._log_skipped = 0
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None  # wakes the receiver thread (stop, a dead connection)
        self._wake_w: socket.socket | None = None
        self._conns: dict[int, _Conn] = {}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> OscServer:
        cfg = self.config
        self._udp = _bind(cfg.host, cfg.port, socket.SOCK_DGRAM, "--osc-port")
        self.port = self._udp.getsockname()[1]
        with contextlib.suppress(OSError):  # else the system's default buffer will do
            self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, self._on_udp)
        if cfg.tcp_port is not None:
            try:
                self._tcp = _bind(cfg.host, cfg.tcp_port, socket.SOCK_STREAM, "--osc-tcp-port")
            except ConfigError:
                self._udp.close()
                sel.close()
                raise
            self._tcp.listen(cfg.max_connections)
            self.tcp_port = self._tcp.getsockname()[1]
            sel.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        self._wake_r, self._wake_w = socket.socketpair()
        for w in (self._wake_r, self._wake_w):
            w.setblocking(False)
        sel.register(self._wake_r, selectors.EVENT_READ, self._on_poke)
        self._sel = sel
        self._threads = [threading.Thread(target=self._recv_loop, name="endless-osc-recv", daemon=True),
                         threading.Thread(target=self._send_loop, name="endless-osc-send", daemon=True)]
        for t in self._threads:
            t.start()
        self.engine.listeners.append(self._changed)
        self._started = True
        tcp = f", tcp (SLIP) port {self.tcp_port}" if self._tcp is not None else ""
        log.info("OSC on %s udp port %d%s%s", cfg.host, self.port, tcp,
                 f", clients {', '.join(cfg.allow)} and loopback" if cfg.allow else "")
        return self

    def stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self._changed in self.engine.listeners:
            self.engine.listeners.remove(self._changed)
        self._poke()
        self._outbox.put(None)
        for t in self._threads:
            t.join(5)
        for c in list(self._conns.values()):
            c.sock.close()
        self._conns.clear()
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if self._sel is not None:
            self._sel.close()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def allows(self, host: str) -> bool:
        """Whether a client address may talk to the server (loopback always may)."""
        ok = self._allowed.get(host)
        if ok is None:
            try:
                ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                ok = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                ok = ip.is_loopback or not self._nets or any(ip in n for n in self._nets)
            if len(self._allowed) > 4096:
                self._allowed.clear()
            self._allowed[host] = ok
        return ok

    def subscribers(self) -> list[Peer]:
        with self._subs_lock:
            return list(self._subs.values())

    # -- applying: holding engine.lock (the control loop, or the receiver: immediate) ------------
    def wait(self, timeout: float) -> bool:
        """Sleep until work arrives (True) or `timeout` seconds pass (False)."""
        hit = self.wake.wait(timeout)
        self.wake.clear()  # before draining: work arriving from here on sets it again
        return hit

    def drain(self, engine: Engine | None = None, limit: int = 256) -> int:
        """Apply what arrived (at most `limit` packets' work, so a flood cannot stall the control
        loop), and queue a status snapshot for subscribers when one is due. `engine`, if given,
        must be the server's own (the play loop's ticks pass it). Returns how many packets' work
        was done (changes, pings, dumps; not refusals, which the receiver answered)."""
        if engine is not None and engine is not self.engine:
            raise ValueError("drain() got another engine than the server was built for")
        done = self._run_queued(limit)
        if done == limit and not self._inbox.empty():
            self.wake.set()  # more is waiting: the next wait returns at once
        try:
            self._status(self.xruns() if self.xruns is not None else None)
        except Exception as e:
            self._exception(None, f"{self.prefix}/status", e)
        return done

    def _run_queued(self, limit: int) -> int:
        done = 0
        while done < limit:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            done += 1
            self._run_safe(job)
        return done

    def _run_safe(self, job: _Job) -> None:
        try:
            self._run(job)
        except Exception as e:  # a bug: count it, say so, keep the instrument playing
            self._exception(job.peer, job.work[0].address, e)

    def _run(self, job: _Job) -> None:
        if len(job.work) > 1:
            bad = {i: msg for i, w in enumerate(job.work) if isinstance(w, _Set)
                   and (msg := self._refusal(w, job.work)) is not None}
            if bad:
                for i, w in enumerate(job.work):
                    self._error(job.peer, w.address, bad.get(i, "not applied: another message in its bundle "
                                                                "(or address pattern) was refused"))
                return
        for w in job.work:
            if isinstance(w, _Set):
                try:
                    self.engine.set(w.ref, w.value)  # resolved and coerced on arrival
                except ParamError as e:
                    self._error(job.peer, w.address, str(e))
                    continue
                self.stats.applied += 1
                self.delays.append(time.perf_counter_ns() - job.t_ns)
            elif isinstance(w, _Sync):
                self._outbox.put(_Out(w.dest, self._dump()))
            elif isinstance(w, _Ping):  # answered after what came before it: a barrier for clients
                self._outbox.put(_Out(job.peer, ((f"{self.prefix}/pong", w.args),)))
            elif isinstance(w, _Act):
                try:
                    result = w.fn(w.args)
                except EndlessError as e:
                    self._error(job.peer, w.address, str(e))
                    continue
                if result is not None:
                    self._outbox.put(_Out(job.peer, ((f"{self.prefix}/done", (w.address, str(result))),)))
            else:
                self._record(job.peer, w)

    def _refusal(self, w: _Set, together: tuple[_Work, ...]) -> str | None:
        """What Engine.set would still refuse once the registry accepted the value (no generator, a
        bad blend, weights that do not fit the prompt), checked before a bundle applies anything."""
        if w.ref.param.key == "slot/weights" and any(
                isinstance(o, _Set) and o.ref.param.key == "slot/prompt" and o.ref.slot == w.ref.slot for o in together):
            return None  # with a new prompt in the same bundle, the engine checks the weights in order
        try:
            self.engine.check(w.ref, w.value)
        except ParamError as e:
            return str(e)
        return None

    def _record(self, peer: Peer, w: _Record) -> None:
        if self.on_record is None:
            self._error(peer, w.address, "recording is not available here (only `endless play` records)")
            return
        try:
            path = self.on_record(w.start, w.name)
        except EndlessError as e:
            self._error(peer, w.address, str(e))
            return
        self.recording = str(path) if w.start else None
        msg = ((f"{self.prefix}/record", (int(w.start), str(path or ""))),)
        dests = {d.key: d for d in self.subscribers()}
        dests[peer.key] = peer
        for d in dests.values():
            self._outbox.put(_Out(d, msg))

    def _changed(self, ref: Ref, value: Value) -> None:
        """Engine listener (whoever holds engine.lock): every accepted change, from any input, to subscribers."""
        if self._subs:
            self._outbox.put(_Out(None, self._value_msgs(ref.param, ref.slot, value)))

    def _value_msgs(self, p: Param, slot: int | None, value: Value) -> tuple[Msg, ...]:
        addr = p.address(self.prefix, slot)
        if p.kind == "trigger":
            return ((addr, ()),)
        if isinstance(value, tuple):
            args: tuple[Any, ...] = tuple(float(x) for x in value)
        elif isinstance(value, bool):
            args = (int(value),)  # Pd and Max have no boolean type
        else:
            args = (value,)
        if not p.has_normalized:
            return ((addr, args),)
        return ((addr, args), (addr + "/normalized", (float(p.to_normalized(value)),)))

    def _dump(self) -> tuple[Msg, ...]:
        msgs: list[Msg] = []
        values = self.engine.values
        for p in self.registry:
            for slot in (range(self.registry.slots) if p.scope == "slot" else (None,)):
                if (p.key, slot) in values:
                    msgs += self._value_msgs(p, slot, values[(p.key, slot)])
        msgs.append((f"{self.prefix}/record", (1, self.recording) if self.recording else (0,)))
        msgs.append((f"{self.prefix}/sync/done", (len(msgs),)))
        return tuple(msgs)

    def _status(self, xruns: int | None) -> None:
        now = time.monotonic()
        if self._status_busy or now < self._status_due or not self._subs:
            return
        self._status_due = now + 1.0 / self.config.status_hz
        e, pre = self.engine, f"{self.prefix}/status"
        st = e.stats()
        gen = e.generator
        prog = gen.client.progress if gen is not None else None
        msgs: list[Msg] = []
        for i in range(e.cfg.slots):
            lv = st.levels[i]
            msgs += [(f"{pre}/slot/{i + 1}/level", (round(20 * math.log10(lv), 1) if lv > 1e-5 else -100.0,)),
                     (f"{pre}/slot/{i + 1}/buffered", (round(st.buffered_seconds[i], 1),)),
                     (f"{pre}/slot/{i + 1}/queue", (st.queue_depths[i],))]
            if gen is not None:
                req = gen.plans[i].inflight
                frac = prog.step / prog.steps if prog is not None and req in prog.ids and prog.steps else 0.0
                msgs.append((f"{pre}/slot/{i + 1}/progress", (round(frac, 3),)))
        if gen is not None:
            frac = prog.step / prog.steps if prog is not None and prog.steps else 0.0
            msgs += [(f"{pre}/generator/state", (gen.client.state,)), (f"{pre}/generator/progress", (round(frac, 3),)),
                     (f"{pre}/generator/rtf", (round(gen.stats.rtf, 3),))]
        if xruns is not None:
            msgs.append((f"{pre}/xruns", (int(xruns),)))
        msgs += [(f"{pre}/starvations", (sum(st.starvations),)), (f"{pre}/limiter", (round(st.limiter_db, 1),)),
                 (f"{pre}/tempo", (round(e.transport.bpm, 2),))]
        self._status_busy = True
        self._outbox.put(_Out(None, tuple(msgs), status=True))

    # -- receiver thread -------------------------------------------------------------------------
    def _recv_loop(self) -> None:
        assert self._sel is not None
        while not self._stopping:
            for key, _ in self._sel.select(1.0):
                if self._stopping:
                    return
                try:
                    key.data(key.fileobj)
                except Exception as e:
                    self._exception(None, "?", e)
            for c in [c for c in self._conns.values() if c.dead]:
                self._close(c)

    def _on_poke(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.recv(4096)

    def _poke(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"\0")
        except OSError:
            pass  # the pipe is full: the receiver is awake anyway

    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(64):  # then let the other sockets have a turn
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error from an earlier reply
                log.debug("OSC udp receive: %s", e)
                return
            if not self.allows(addr[0]):
                self.stats.refused_peers += 1
                continue
            self._packet(data, Peer(addr[0], addr[1]))

    def _on_accept(self, sock: socket.socket) -> None:
        try:
            s, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not self.allows(addr[0]) or len(self._conns) >= self.config.max_connections:
            self.stats.refused_peers += 1
            self._log(f"OSC tcp client {addr[0]}:{addr[1]} refused "
                      f"({'not allowed' if not self.allows(addr[0]) else 'too many connections'})")
            s.close()
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(s)
        conn.peer = Peer(addr[0], addr[1], conn)
        self._conns[conn.fd] = conn
        assert self._sel is not None
        self._sel.register(s, selectors.EVENT_READ, functools.partial(self._on_conn, conn))

    def _on_conn(self, conn: _Conn, sock: socket.socket) -> None:
        try:
            data = sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        for frame in conn.frames(data):
            if frame is None:
                self.stats.malformed += 1
                self._error(conn.peer, "?", f"SLIP frame longer than {MAX_SLIP_FRAME} bytes: dropped")
                continue
            try:
                packet = slip.decode(frame)
            except slip.ProtocolError:
                self.stats.malformed += 1
                self._error(conn.peer, "?", "malformed SLIP frame (an escape byte not followed by 0xDC or 0xDD)")
                continue
            self._packet(packet, conn.peer)

    def _close(self, conn: _Conn) -> None:
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        self._conns.pop(conn.fd, None)
        conn.sock.close()
        with self._subs_lock:
            self._subs.pop(conn.peer.key, None)

    def _packet(self, data: bytes, peer: Peer) -> None:
        """Parse, route and validate one packet; apply it now (immediate, engine free) or queue its work
        and wake the control thread."""
        t = time.perf_counter_ns()
        self.stats.packets += 1
        try:
            msgs = [tm.message for tm in OscPacket(data).messages]
        except Exception as e:  # ParseError, and on hostile input whatever python-osc trips on
            self.stats.malformed += 1
            self._error(peer, "?", f"malformed OSC packet ({len(data)} bytes): {str(e)[:200]}")
            return
        work: list[_Work] = []
        refused = False
        for m in msgs:
            self.stats.messages += 1
            try:
                done, errors = self._route(peer, m.address, tuple(m.params))
            except Exception as e:  # a bug in a handler: the packet is refused, the server goes on
                self._exception(peer, m.address, e)
                refused = True
                continue
            work += done
            for address, message in errors:
                self._error(peer, address, message)
            refused = refused or bool(errors)
        if refused:
            for w in work:
                self._error(peer, w.address, "not applied: another message in its bundle was refused")
            return
        if not work:
            return
        job = _Job(peer, tuple(work), t)
        lock = self.engine.lock
        if self.config.immediate and _plain(job) and lock.acquire(blocking=False):
            try:  # the control loop is asleep: apply now, after anything it left waiting
                with self._inbox.mutex:
                    ready = all(_plain(j) for j in self._inbox.queue)
                if ready:
                    self._run_queued(self.config.inbox)
                    self._run_safe(job)
                    self.stats.immediate += 1
                    return
            finally:
                lock.release()
        try:
            self._inbox.put_nowait(job)
        except queue.Full:
            self.stats.inbox_full += 1
            for w in work:
                self._error(peer, w.address, f"not applied: {self.config.inbox} messages are waiting already "
                                             "(send less often)")
            return
        self.wake.set()

    def _route(self, peer: Peer, address: str, args: tuple[Any, ...]) -> tuple[list[_Work], list[tuple[str, str]]]:
        """The work one message asks for, and what is wrong with it: (address, message) for each
        refused target (a pattern's targets are checked one by one)."""
        act = self._actions.get(address)
        if act is not None:
            if len(args) == 1 and _is_release(args[0]):
                self.stats.releases_ignored += 1
                return [], []
            return [_Act(address, act, args)], []
        cmd = self._commands.get(address)
        if cmd is not None:
            try:
                w = cmd(peer, address, args)
            except ParamError as e:
                return [], [(address, str(e))]
            return ([w] if w is not None else []), []
        handlers = self._exact.get(address)
        if handlers is None and _PATTERN.search(address):
            handlers = list(self.dispatcher.handlers_for_address(address))
        if not handlers:
            try:
                self.registry.resolve(address)  # raises, naming what is wrong (slot range, /normalized, prefix)
            except ParamError as e:
                return [], [(address, str(e))]
            return [], [(address, "unknown address (see docs/osc.md)")]
        out: list[_Work] = []
        errors: list[tuple[str, str]] = []
        for h in handlers:
            try:
                w = h.callback(peer, address, h.args, args)
            except ParamError as e:
                errors.append((h.args[0].address(self.prefix), str(e)))
                continue
            if w is not None:
                out.append(w)
        return out, errors

    def _on_param(self, peer: Peer, address: str, fixed: list[Ref], args: tuple[Any, ...]) -> _Set | None:
        ref = fixed[0]
        p, where = ref.param, ref.address(self.prefix)
        if p.kind == "trigger" and args and _is_release(args[0]):
            self.stats.releases_ignored += 1
            return None
        if p.kind == "text":
            args = (_words(args, where),)
        return _Set(where, args, ref, self.registry.coerce(ref, args))

    def _on_ping(self, peer: Peer, address: str, args: tuple[Any, ...]) -> _Ping:
        return _Ping(address, args)

    def _subscriber(self, peer: Peer, address: str, args: tuple[Any, ...]) -> Peer:
        if not args:
            return peer
        port = args[0]
        if len(args) > 1 or isinstance(port, bool) or not isinstance(port, (int, float)) \
                or not float(port).is_integer() or not 1 <= port <= 65535:
            raise ParamError(f"{address}: expected no argument or a port 1..65535, got {list(args)}")
        return Peer(peer.host, int(port))

    def _on_subscribe(self, peer: Peer, address: str, args: tuple[Any, ...]) -> _Sync:
        dest = self._subscriber(peer, address, args)
        with self._subs_lock:
            if dest.key not in self._subs and len(self._subs) >= self.config.max_subscribers:
                raise ParamError(f"{address}: {len(self._subs)} subscribers already, the most allowed: "
                                 "unsubscribe one first")
            self._subs[dest.key] = dest
        self._status_refresh = True
        return _Sync(address, dest)  # a new subscriber starts from the full state

    def _on_unsubscribe(self, peer: Peer, address: str, args: tuple[Any, ...]) -> None:
        dest = self._subscriber(peer, address, args)
        with self._subs_lock:
            self._subs.pop(dest.key, None)
        self._outbox.put(_Out(dest, ((f"{self.prefix}/unsubscribed", ()),)))

    def _on_sync(self, peer: Peer, address: str, args: tuple[Any, ...]) -> _Sync | None:
        if args and _is_release(args[0]):
            self.stats.releases_ignored += 1
            return None
        return _Sync(address, peer)

    def _on_record(self, peer: Peer, address: str, args: tuple[Any, ...]) -> _Record:
        if not 1 <= len(args) <= 2:
            raise ParamError(f"{address}: expected 1 (start) or 0 (stop), and a file name to start, got {list(args)}")
        on = self.registry.check(_SWITCH, args[0], address)
        return self._record_work(address, bool(on), args[1:])

    def _on_record_start(self, peer: Peer, address: str, args: tuple[Any, ...]) -> _Record | None:
        if len(args) == 1 and _is_release(args[0]):
            self.stats.releases_ignored += 1
            return None
        return self._record_work(address, True, tuple(a for a in args if isinstance(a, str)))

    def _on_record_stop(self, peer: Peer, address: str, args: tuple[Any, ...]) -> _Record | None:
        if args and _is_release(args[0]):
            self.stats.releases_ignored += 1
            return None
        return _Record(address, False, None)

    def _record_work(self, address: str, start: bool, rest: tuple[Any, ...]) -> _Record:
        name = rest[0] if rest else None
        if name is not None and not (start and isinstance(name, str) and _RECORD_NAME.fullmatch(name)):
            raise ParamError(f"{address}: {name!r} is not a recording name: give a file name like take1.wav or "
                             "take1.flac, without folders")
        return _Record(address, start, name)

    # -- sender thread ---------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception as e:
                self._exception(item.dest, item.msgs[0][0] if item.msgs else "?", e)
            finally:
                if item.status:
                    self._status_busy = False

    def _deliver(self, item: _Out) -> None:
        msgs = item.msgs
        if item.status:
            msgs = self._changed_status(msgs)
        dests = [item.dest] if item.dest is not None else self.subscribers()
        if not dests:
            return
        for addr, args in msgs:
            b = OscMessageBuilder(addr)
            for a in args:
                b.add_arg(a)
            data = b.build().dgram
            for d in dests:
                self._send(d, data)

    def _changed_status(self, msgs: tuple[Msg, ...]) -> tuple[Msg, ...]:
        now = time.monotonic()
        full = self._status_refresh or now >= self._status_full_at
        if full:
            self._status_refresh = False
            self._status_full_at = now + STATUS_REFRESH
        last = self._last_status
        out = tuple(m for m in msgs if full or last.get(m[0]) != m[1])
        last.update(out)
        return out

    def _send(self, dest: Peer, data: bytes) -> None:
        if dest.conn is not None:
            if dest.conn.dead:
                return
            if not dest.conn.send(slip.encode(data)):
                self.stats.send_errors += 1
                dest.conn.dead = True  # the receiver closes it
                self._poke()
                return
        else:
            assert self._udp is not None
            try:
                self._udp.sendto(data, (dest.host, dest.port))
            except OSError as e:
                self.stats.send_errors += 1
                log.debug("OSC send to %s: %s", dest, e)
                return
        self.stats.sent += 1

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, peer: Peer, address: str, message: str) -> None:
        self.stats.errors += 1
        if message.startswith(address + ": "):
            message = message[len(address) + 2:]
        self._outbox.put(_Out(peer, ((f"{self.prefix}/error", (address, message)),)))
        self._log(f"OSC from {peer}: {address}: {message}")

    def _exception(self, peer: Peer | None, address: str, e: Exception) -> None:
        self.stats.handler_exceptions += 1
        self._log(f"OSC: error handling {address} from {peer or '-'} (a bug: please report it)", e)
        if peer is not None:
            self._error(peer, address, f"internal error ({type(e).__name__}: {e}); the server goes on")

    def _log(self, text: str, exc: Exception | None = None) -> None:
        now = time.monotonic()
        if now - self._log_at < 1.0:  # a flood of bad messages must not flood the log
            self._log_skipped += 1
            return
        more = f" (and {self._log_skipped} more since the last report)" if self._log_skipped else ""
        self._log_at, self._log_skipped = now, 0
        if exc is not None:
            log.error("%s%s", text, more, exc_info=exc)
        else:
            log.warning("%s%s", text, more)


class _Conn:
    """One TCP client: its SLIP frame buffer (receiver thread) and a locked, bounded-time send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = Peer("", 0)
        self.dead = False
        self._buf = bytearray()
        self._skipping = False  # inside an overlong frame: drop bytes up to its end
        self._lock = threading.Lock()

    def frames(self, data: bytes) -> list[bytes | None]:
        """The complete frames in `data` (still escaped; None for an overlong one). OSC 1.1 framing:
        a packet ends with END (0xC0); empty frames (double END) are skipped."""
        self._buf += data
        out: list[bytes | None] = []
        while (i := self._buf.find(slip.END)) >= 0:
            frame = bytes(self._buf[:i])
            del self._buf[:i + 1]
            if self._skipping:
                self._skipping = False
            elif frame:
                out.append(frame)
        if len(self._buf) > MAX_SLIP_FRAME:
            self._buf.clear()
            if not self._skipping:
                out.append(None)
            self._skipping = True
        return out

    def send(self, data: bytes) -> bool:
        view = memoryview(data)
        deadline = time.monotonic() + SEND_TIMEOUT
        with self._lock:
            while view:
                try:
                    view = view[self.sock.send(view):]
                except (BlockingIOError, InterruptedError):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    select.select([], [self.sock], [], left)
                except OSError:
                    return False
        return True


def _bind(host: str, port: int, kind: socket.SocketKind, flag: str) -> socket.socket:
    proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--listen {host}: not an address here ({e.strerror}): use 127.0.0.1, 0.0.0.0 or one of "
                          "this machine's addresses") from None
    s = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"{flag} {port}: {proto} port {port} on {host} is in use (another endless, or another "
                              f"program): pick another with {flag}") from None
        raise ConfigError(f"--listen {host} {flag} {port}: cannot listen ({e.strerror}): use 127.0.0.1, 0.0.0.0 "
                          "or one of this machine's addresses") from None
    s.setblocking(False)
    return s


def _parse_allow(items: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--allow {item!r}: not an IP address or network (examples: 192.168.1.20, "
                              "192.168.1.0/24)") from None
    return tuple(nets)


def _is_release(a: object) -> bool:
    """A button's release: 0 or false (TouchOSC sends 1 on press, 0 on release)."""
    return a is False or (isinstance(a, (int, float)) and not isinstance(a, bool) and a == 0)


def _words(args: tuple[Any, ...], where: str) -> str:
    """Text from one or more arguments (Pd sends each word of a message as its own symbol)."""
    if not args:
        raise ParamError(f"{where}: expected text, got no argument")
    words = []
    for a in args:
        if isinstance(a, str):
            words.append(a)
        elif isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a):
            words.append(format(a, "g"))
        else:
            raise ParamError(f"{where}: {a!r} is not text")
    return " ".join(words)
