"""OSC feedback: everything the server sends, on one sender thread.

- replies: `/pong`, `/done`, `/record`, `/error`, `/sync` dumps to a sender (queued by the routes),
  and to its reply port: a UDP sender that subscribed another port on its host (`/subscribe PORT`,
  as Max's udpsend and Pd's netsend do: they send from one port and listen on another) gets its
  replies there as well, while that subscription lasts (`targets`);
- echo: every change the engine accepts, from any input (OSC, MIDI, presets, scripts), on its own
  address (real units, and /normalized) to every subscriber. The engine listener only queues it:
  whoever changes the engine (holding its lock) never waits on a socket;
- sync: a dump of every current value, only as messages the server itself accepts back (a client
  may replay it), then `/sync/done <count>`, the count of those actually sent: a value too large
  for a UDP datagram is answered with `/error <its address> ...` instead;
- subscriptions: over UDP they end (with `/unsubscribed`) unless renewed within `subscribe_ttl`;
  over TCP they last as long as the connection;
- status: meters and counters to subscribers at most `status_hz` a second (<= 30), only what
  changed and everything once a second. `tick()` (the control loop, holding the engine lock) takes
  a snapshot when one is due and the last one has gone out, so a slow network never queues them up.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import instrument.control.osc.transport as transport
from instrument.control.osc.config import OscConfig, OscStats, RateLog
from instrument.control.osc.transport import Peer, Transport
from instrument.control.osc.wire import encode
from instrument.errors import ParamError
from instrument.params import Param, Ref, Value

if TYPE_CHECKING:
    from instrument.control.actions import Done
    from instrument.engine import Engine

STATUS_REFRESH = 1.0  # seconds between full status frames (in between, only what changed)

Msg = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class Address:
    path: str  # below the prefix
    args: str
    doc: str


# Sent to subscribers under <prefix>/status.
STATUS_ADDRESSES: tuple[Address, ...] = (
    Address("slot/N/level", "float dBFS", "RMS of the slot's last block after its gain (-100: silent)."),
    Address("slot/N/buffered", "float s", "Audio ready for the slot: the rest of its clip plus its queue."),
    Address("slot/N/queue", "int", "Clips queued for the slot."),
    Address("slot/N/progress", "float 0..1", "Generation of the slot's clip in flight (0: none)."),
    Address("generator/state", "text", "loading, ready, busy, restarting, failed or stopped."),
    Address("generator/progress", "float 0..1", "Steps done of the generator's current call."),
    Address("generator/rtf", "float", "Generation time over audio time of the last clip (< 1: keeps up)."),
    Address("xruns", "int", "Audio device underruns since the start."),
    Address("starvations", "int", "Times a slot ran out of audio."),
    Address("limiter", "float dB", "Gain reduction of the output limiter now."),
    Address("tempo", "float bpm", "The transport's tempo (internal, or MIDI clock)."),
)


@dataclass(frozen=True)
class _Out:
    dests: tuple[Peer, ...] | None  # None: every subscriber
    msgs: tuple[Msg, ...]
    status: bool = False
    sync: bool = False  # a dump: ends with /sync/done and the count sent
    echo: bool = False  # a marker: send the echoes pending now (`Feedback._echoes`)


MAX_WAITING = 4096  # replies queued for the sender thread at most
MAX_SENDERS = 4  # UDP senders whose replies one subscribed port also takes (the newest kept)


class Feedback:
    """Subscribers, the outgoing queue and its sender thread, for one engine."""

    def __init__(self, engine: Engine, config: OscConfig, stats: OscStats, wire: Transport, note: RateLog) -> None:
        self.engine = engine
        self.registry = engine.registry
        self.prefix = engine.registry.prefix
        self.config = config
        self.stats = stats
        self.recording: str | None = None  # the path being recorded (for /sync)
        self._wire = wire
        self._note = note
        self._outbox: queue.Queue[_Out | None] = queue.Queue()
        self._subs: dict[tuple[object, ...], tuple[Peer, float]] = {}  # key: (where, until when)
        self._via: dict[tuple[object, ...], Peer] = {}  # a UDP sender's key: the port it subscribed (_subs_lock)
        self._subs_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status_due = 0.0
        self._status_busy = False  # a snapshot is waiting for the sender: coalesce, do not queue another
        self._status_refresh = True
        self._status_full_at = 0.0
        self._last_status: dict[str, tuple[Any, ...]] = {}
        # echoes waiting for the sender, the newest per parameter: a flood of changes to one fader
        # costs one message per send, and nothing queues without bound (one marker in the outbox)
        self._echoes: dict[tuple[str, int | None], tuple[Msg, ...]] = {}
        self._echo_lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._send_loop, name="endless-osc-send", daemon=True)
        self._thread.start()
        self.engine.listeners.append(self._changed)

    def stop(self) -> None:
        if self._changed in self.engine.listeners:
            self.engine.listeners.remove(self._changed)
        self._outbox.put(None)
        if self._thread is not None:
            self._thread.join(5)

    # -- subscribers -----------------------------------------------------------------------------
    def subscribers(self) -> list[Peer]:
        with self._subs_lock:
            return [p for p, _ in self._subs.values()]

    def room_for(self, dest: Peer) -> bool:
        with self._subs_lock:
            return dest.key in self._subs or len(self._subs) < self.config.max_subscribers

    def subscribe(self, dest: Peer, sender: Peer | None = None) -> None:
        """Add (or renew) `dest` and send it the full state (the caller holds the engine lock: no
        change falls between the dump and the first echo). A UDP `sender` other than `dest` gets
        its replies at `dest` as well from now on, until the subscription ends (`targets`)."""
        until = math.inf if dest.conn is not None else time.monotonic() + self.config.subscribe_ttl
        with self._subs_lock:
            self._subs[dest.key] = (dest, until)
            if sender is not None and sender.conn is None and sender.key != dest.key:
                self._via.pop(sender.key, None)  # a sender's replies: the last port it subscribed
                self._via[sender.key] = dest
                senders = [k for k, d in self._via.items() if d.key == dest.key]
                for k in senders[:-MAX_SENDERS]:
                    del self._via[k]
        self._status_refresh = True
        self.sync(dest)

    def targets(self, sender: Peer) -> tuple[Peer, ...]:
        """Where a reply to `sender` goes: to it, and to the port it subscribed, if it did (a UDP
        sender is its host and source port: another client on the same host is another sender)."""
        with self._subs_lock:
            via = self._via.get(sender.key)
        return (sender,) if via is None else (sender, via)

    def sync(self, *dests: Peer) -> None:
        """Every current value to each of `dests`, then `/sync/done <count sent>` (holding the engine lock)."""
        self._outbox.put(_Out(dests, self.dump(), sync=True))

    def _expire(self, now: float) -> None:
        """End the UDP subscriptions not renewed in time, telling each (`/unsubscribed`)."""
        with self._subs_lock:
            gone = [p for p, until in self._subs.values() if until < now]
            self._end(gone)
        for p in gone:
            self.send((p,), (f"{self.prefix}/unsubscribed", ()))

    def unsubscribe(self, dest: Peer) -> None:
        with self._subs_lock:
            self._end([dest])

    def _end(self, dests: list[Peer]) -> None:
        """Remove subscriptions, and the senders whose replies went to them (holding `_subs_lock`)."""
        keys = {d.key for d in dests}
        for k in keys:
            self._subs.pop(k, None)
        for k in [k for k, d in self._via.items() if d.key in keys]:
            del self._via[k]

    # -- what goes out ---------------------------------------------------------------------------
    def reply(self, sender: Peer, *msgs: Msg) -> None:
        """To a sender: to it, and to its reply port (`targets`)."""
        self._put(_Out(self.targets(sender), msgs))

    def send(self, dests: tuple[Peer, ...], *msgs: Msg) -> None:
        """To exactly `dests`."""
        self._put(_Out(dests, msgs))

    def to_all(self, *msgs: Msg) -> None:
        """To every subscriber (those there when it is sent)."""
        self._put(_Out(None, msgs))

    def _put(self, item: _Out) -> None:
        """Queue a reply for the sender, unless MAX_WAITING are waiting already (a flood of refused
        packets): then it is dropped and counted, so the queue stays bounded. Echo markers, status
        and dumps (at most one each waiting) are queued directly."""
        if self._outbox.qsize() >= MAX_WAITING:
            self.stats.replies_dropped += 1
            self._note(f"OSC: the sender is {MAX_WAITING} replies behind: replies dropped (send less often)")
            return
        self._outbox.put(item)

    def announce(self, done: Done) -> None:
        """An action's answer, from any input (an `Actions` listener): a recording started or stopped
        goes to every subscriber as `/record <on> <path>`, a control MIDI learn bound as `/done learn
        <binding>`."""
        if done.recording is not None:
            self.recording = done.text if done.recording else None
            self.to_all((f"{self.prefix}/record", (int(done.recording), done.text)))
        elif done.path == "learn":
            self.to_all((f"{self.prefix}/done", (f"{self.prefix}/learn", done.text)))

    def error(self, peer: Peer, address: str, message: str) -> None:
        """`/error <address> <message>` to the sender (the message without a leading "<address>: ")."""
        self.stats.errors += 1
        if message.startswith(address + ": "):
            message = message[len(address) + 2:]
        self.reply(peer, (f"{self.prefix}/error", (address, message)))
        self._note(f"OSC from {peer}: {address}: {message}")

    def _changed(self, ref: Ref, value: Value) -> None:
        """Engine listener (whoever holds the engine lock): every accepted change, to subscribers."""
        if not self._subs:
            return
        msgs = self.value_msgs(ref.param, ref.slot, value)
        with self._echo_lock:
            marker = not self._echoes
            self._echoes[(ref.param.key, ref.slot)] = msgs
        if marker:
            self._outbox.put(_Out(None, (), echo=True))

    def value_msgs(self, p: Param, slot: int | None, value: Value) -> tuple[Msg, ...]:
        addr = p.address(self.prefix, slot)
        if p.kind == "trigger":
            return ((addr, ()),)
        if not p.has_normalized:
            return ((addr, _args(value)),)
        return ((addr, _args(value)), (addr + "/normalized", (float(p.to_normalized(value)),)))

    def dump(self) -> tuple[Msg, ...]:
        """Every current value the server would accept back (holding the engine lock): weights with no
        values, or generator settings on an instrument without a generator, are left out."""
        values, reg = self.engine.values, self.registry
        kept: list[tuple[Ref, Value]] = []
        for p in reg:
            for slot in (range(reg.slots) if p.scope == "slot" else (None,)):
                value = values.get((p.key, slot))
                if value is None:
                    continue
                ref = Ref(p, slot, False)
                try:
                    reg.coerce(ref, _args(value))
                except ParamError:
                    continue
                kept.append((ref, value))
        refused = self.engine.check_batch(kept)
        msgs = [m for i, (ref, value) in enumerate(kept) if i not in refused
                for m in self.value_msgs(ref.param, ref.slot, value)]
        msgs.append((f"{self.prefix}/record", (1, self.recording) if self.recording else (0,)))
        return tuple(msgs)

    def tick(self) -> None:
        """Queue a status snapshot for subscribers when one is due (the control loop, holding the lock)."""
        now = time.monotonic()
        self._expire(now)
        if self._status_busy or now < self._status_due or not self._subs:
            return
        self._status_due = now + 1.0 / self.config.status_hz
        self._status_busy = True
        self._outbox.put(_Out(None, self._status(), status=True))

    def _status(self) -> tuple[Msg, ...]:
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
        msgs += [(f"{pre}/xruns", (e.mixer.underflows,)), (f"{pre}/starvations", (sum(st.starvations),)),
                 (f"{pre}/limiter", (round(st.limiter_db, 1),)), (f"{pre}/tempo", (round(e.transport.bpm, 2),))]
        return tuple(msgs)

    # -- the sender thread -----------------------------------------------------------------------
    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            try:
                self._deliver(item)
            except Exception as e:  # a bug: say so, keep sending
                self.stats.handler_exceptions += 1
                self._note(f"OSC: error sending {item.msgs[0][0] if item.msgs else '?'} (a bug: please report it)", e)
            finally:
                if item.status:
                    self._status_busy = False

    def _deliver(self, item: _Out) -> None:
        msgs = self._changed_status(item.msgs) if item.status else item.msgs
        if item.echo:
            with self._echo_lock:
                echoes, self._echoes = self._echoes, {}
            msgs = tuple(m for ms in echoes.values() for m in ms)
        wire = self._wire
        dests = [d for d in (item.dests if item.dests is not None else self.subscribers()) if wire.alive(d)]
        if not dests:
            return
        sent = dict.fromkeys([d.key for d in dests], 0)
        for addr, args in msgs:
            data = encode(addr, args)
            for d in dests:
                if not wire.fits(d, len(data)):  # answered in its place, in order
                    self.stats.errors += 1
                    why = (f"a reply of {len(data)} bytes, more than one UDP datagram takes "
                           f"({transport.MAX_UDP_REPLY}): not sent; use TCP (--osc-tcp-port) for it")
                    self._note(f"OSC to {d}: {addr}: {why}")
                    wire.send(d, encode(f"{self.prefix}/error", (addr, why)))
                elif wire.send(d, data):
                    sent[d.key] += 1
        for d in dests if item.sync else ():
            wire.send(d, encode(f"{self.prefix}/sync/done", (sent[d.key],)))

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


def _args(value: Value) -> tuple[Any, ...]:
    """A value as OSC arguments: weights as floats, a switch as 0/1 (Pd and Max have no boolean)."""
    if isinstance(value, tuple):
        return tuple(float(x) for x in value)
    if isinstance(value, bool):
        return (int(value),)
    return (value,)
