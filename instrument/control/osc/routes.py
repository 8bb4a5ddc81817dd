"""OSC routes: the address space, and each packet made into one job for the control bus.

The address space is built once from the registry (every parameter of every slot, real and
/normalized: a dict of exact addresses, and address patterns matched against the parameters in
linear time by `pattern.Matcher`), the server's own addresses (`SERVER_ADDRESSES`) and every action of
`ACTIONS` at `<prefix>/<path>`.

A packet (a message, a bundle, or a pattern reaching several parameters) is all or nothing:
  1. on arrival (the transport's thread): parse, route, and check each value against the registry;
     a refused message refuses the whole packet, with nothing sent to the bus;
  2. as one `Job` on the bus (holding the engine lock): `Engine.check_batch` for its parameter
     changes (weights against a prompt the same bundle sets) and `Actions.plan` for its actions;
     a refusal again refuses the whole packet; then everything applies, in order.
Each refused message is answered with `/error <its own address> <why>`, the others of its packet
with `/error <address> not applied: ...`. A packet with an action (actions read and write files)
waits for the control thread; any other may run where it arrived when the engine is free (the
bus decides). A ping is a job too, so its pong comes after everything sent before it.

Bundles apply when they arrive: a timetag more than `FUTURE_SLACK` s ahead of this machine's clock
is refused (the server does not schedule), an earlier one or "immediately" applies at once.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pythonosc.osc_packet import OscPacket

from instrument.control.actions import ACTIONS, Actions, Done
from instrument.control.bus import ControlBus, Job
from instrument.control.osc.config import OscStats, RateLog
from instrument.control.osc.feedback import Address, Feedback
from instrument.control.osc.pattern import Matcher, is_pattern
from instrument.control.osc.transport import Peer, Transport
from instrument.control.osc.wire import encode, problem
from instrument.errors import EndlessError, ParamError
from instrument.params import Ref, Value

if TYPE_CHECKING:
    from instrument.engine import Engine

# The addresses the server answers itself (the parameters come from the registry, actions from ACTIONS).
SERVER_ADDRESSES: tuple[Address, ...] = (
    Address("ping", "[any]", "Answered with `/pong` and the same arguments once everything sent before "
            "it has been applied (round-trip time, liveness, a barrier)."),
    Address("ping/to", "port [any]", "As `/ping`, its `/pong` (with the arguments after the port) sent to "
            "`port` on the sender's host instead: for a client that listens on another port than it sends from."),
    Address("subscribe", "[port]", "Send every accepted change (on its own address, real and /normalized), "
            "and the status below, to the sender's address, or to `port` on the sender's host; starts with "
            "a full dump as `/sync` gives. With a port, over UDP, the sender's replies (`/pong`, `/sync`, "
            "`/error`, `/done`, `/record`) go to that port as well while the subscription lasts (see "
            "Limits). Over UDP it lasts 60 s: send `/subscribe` again to renew it (it ends with "
            "`/unsubscribed`). Over TCP without a port: on the connection, as long as it is open. A 1 (a "
            "button's press) is no port."),
    Address("unsubscribe", "[port]", "Stop sending to that address (answered there with `/unsubscribed`)."),
    Address("sync", "[port]", "Dump every current value to the sender (and its reply port), or to `port` on "
            "the sender's host, then `/sync/done <count>`. A 1 (a button's press) is no port."),
)
SWITCHES = frozenset({"record"})  # actions whose 0 means "off", not a button's release
NOT_APPLIED = "not applied: another message in its bundle (or address pattern) was refused"
FUTURE_SLACK = 1.0  # s: a bundle timetag this far ahead of the clock here still applies at once


@dataclass(frozen=True)
class _Route:
    address: str
    kind: str  # "param", "action", or a server address: "ping", "ping/to", "subscribe", "unsubscribe", "sync"
    path: str = ""  # actions: below the prefix
    ref: Ref | None = None  # parameters
    button: bool = False  # a first argument 0 or false is a button's release, and does nothing


@dataclass(frozen=True)
class _Msg:
    """One routed message, checked against the registry."""

    route: _Route
    args: tuple[Any, ...]
    value: Value = 0  # parameters: the coerced value
    dest: Peer | None = None  # subscribe, unsubscribe, ping/to, sync: where (sync: None, the sender)

    @property
    def address(self) -> str:
        return self.route.address


class Routes:
    """Receives packets from the transport (`Receiver`) and submits one job per packet to the bus."""

    def __init__(self, bus: ControlBus, feedback: Feedback, stats: OscStats, actions: Actions | None,
                 note: RateLog, transport: Transport) -> None:
        self.bus = bus
        self.feedback = feedback
        self.transport = transport
        self.stats = stats
        self.actions = actions
        self.registry = bus.engine.registry
        self.prefix = self.registry.prefix
        self._note = note
        self._exact: dict[str, _Route] = {}
        reg = self.registry
        for p in reg:
            for slot in (range(reg.slots) if p.scope == "slot" else (None,)):
                for norm in ((False, True) if p.has_normalized else (False,)):
                    ref = Ref(p, slot, norm)
                    route = _Route(ref.address(self.prefix), "param", ref=ref, button=p.kind == "trigger")
                    self._exact[route.address] = route
        self.matcher = Matcher(list(self._exact))  # parameters only
        others = [_Route(f"{self.prefix}/{a.path}", a.path, button=a.path == "sync") for a in SERVER_ADDRESSES]
        others += [_Route(f"{self.prefix}/{a.path}", "action", a.path, button=a.path not in SWITCHES) for a in ACTIONS]
        for route in others:
            if route.address in self._exact:
                raise ValueError(f"{route.address} is both a parameter or server address and an action")
            self._exact[route.address] = route

    # -- the transport's thread ------------------------------------------------------------------
    def packet(self, data: bytes, peer: Peer) -> None:
        t = time.perf_counter_ns()
        bad = problem(data)
        if bad is not None:
            self.stats.malformed += 1
            self.feedback.error(peer, *bad)
            return
        try:
            timed = OscPacket(data).messages
        except Exception as e:  # ParseError, and on hostile input whatever python-osc trips on
            self.malformed(peer, f"malformed OSC packet ({len(data)} bytes): {str(e)[:200]}")
            return
        msgs: list[_Msg] = []
        refused: list[tuple[str, str]] = []
        ahead = max((tm.time for tm in timed), default=0.0) - time.time()
        if ahead > FUTURE_SLACK:
            self._refuse(peer, [(tm.message.address, f"bundle timetag {ahead:.1f} s in the future: this server "
                                 "applies a bundle when it arrives and does not schedule it; send it with the "
                                 "timetag 'immediately' (1) or the time now") for tm in timed])
            return
        for m in (tm.message for tm in timed):
            self.stats.messages += 1
            try:
                self._route(peer, m.address, tuple(m.params), msgs, refused)
            except Exception as e:  # a bug: the packet is refused, the server goes on
                refused.append((m.address, self._bug(peer, m.address, e)))
        if refused:
            self._refuse(peer, refused + [(m.address, NOT_APPLIED) for m in msgs])
            return
        if not msgs:
            return
        run = functools.partial(self._run, peer, tuple(msgs), threading.get_ident())
        if not self.bus.submit(Job(run, "osc", immediate=all(m.route.kind != "action" for m in msgs), t_ns=t)):
            self.stats.bus_full += 1
            self._refuse(peer, [(m.address, f"not applied: {self.bus.capacity} messages are waiting already "
                                            "(send less often)") for m in msgs])

    def malformed(self, peer: Peer, why: str) -> None:
        self.stats.malformed += 1
        self.feedback.error(peer, "?", why)

    def closed(self, peer: Peer) -> None:
        """A TCP connection closed: it no longer subscribes."""
        self.feedback.unsubscribe(peer)

    def goodbye(self, why: str) -> bytes:
        """What a TCP client is sent before the server closes it: `/error ? <why>`."""
        return encode(f"{self.prefix}/error", ("?", why))

    def _route(self, peer: Peer, address: str, args: tuple[Any, ...], msgs: list[_Msg],
               refused: list[tuple[str, str]]) -> None:
        """Add the message's targets to `msgs`, or (address, why) to `refused` for each refused one."""
        route = self._exact.get(address)
        if route is not None:
            routes = [route]
        elif is_pattern(address):
            try:
                routes = [self._exact[a] for a in self.matcher.match(address)]
            except ParamError as e:
                refused.append((address, str(e)))
                return
        else:
            routes = []
        if not routes:
            try:
                self.registry.resolve(address)  # raises, naming what is wrong (slot range, /normalized, prefix)
            except ParamError as e:
                refused.append((address, str(e)))
                return
            refused.append((address, "unknown address (see docs/osc.md)"))
            return
        for r in routes:
            if r.button and args and _is_release(args[0]):
                self.stats.releases_ignored += 1
                continue
            try:
                msgs.append(self._checked(peer, r, args))
            except ParamError as e:
                refused.append((r.address, str(e)))

    def _checked(self, peer: Peer, route: _Route, args: tuple[Any, ...]) -> _Msg:
        """The message for `route`, its value checked against the registry (ParamError if refused)."""
        if route.ref is not None:
            if route.ref.param.kind == "text":
                args = (_words(args, route.address),)
            return _Msg(route, args, value=self.registry.coerce(route.ref, args))
        if route.kind in ("subscribe", "unsubscribe", "sync"):
            if len(args) > 1:
                raise ParamError(f"{route.address}: expected no argument or a port 1..65535, got {list(args)}")
            if not args or args[0] in (1, True):  # a button's press (TouchOSC): the sender, not port 1
                return _Msg(route, args, dest=peer if route.kind != "sync" else None)
            return _Msg(route, args, dest=self._reply_port(peer, route.address, args[0]))
        if route.kind in ("ping", "ping/to"):
            dest = None
            if route.kind == "ping/to":
                if not args:
                    raise ParamError(f"{route.address}: expected a port 1..65535 (where the pong goes), then the "
                                     "arguments to send back")
                dest, args = self._reply_port(peer, route.address, args[0]), args[1:]
            try:
                encode(route.address, args)
            except Exception:
                raise ParamError(f"{route.address}: {[type(a).__name__ for a in args]}: arguments the pong cannot "
                                 "send back (a timetag?): ping takes ints, floats, text, blobs, true, false and "
                                 "nil") from None
            return _Msg(route, args, dest=dest)
        if route.kind == "action" and self.actions is None:
            raise ParamError(f"{route.address}: not available here (presets, MIDI learn and recording come with "
                             "`endless play`)")
        return _Msg(route, args)

    # -- the bus: holding the engine lock --------------------------------------------------------
    def _run(self, peer: Peer, msgs: tuple[_Msg, ...], arrived_on: int, engine: Engine) -> None:
        if threading.get_ident() == arrived_on:
            self.stats.immediate += 1
        current = msgs[0]
        try:
            plans: dict[int, Callable[[], Done | None]] = {}
            refused = self._check(engine, peer, msgs, plans)
            if refused:
                self._refuse(peer, [(m.address, refused.get(i, NOT_APPLIED)) for i, m in enumerate(msgs)])
                return
            for i, current in enumerate(msgs):
                self._apply(engine, peer, current, plans.get(i))
        except Exception as e:  # a bug: answer it, keep the instrument playing
            self.feedback.error(peer, current.address, self._bug(peer, current.address, e))

    def _check(self, engine: Engine, peer: Peer, msgs: tuple[_Msg, ...],
               plans: dict[int, Callable[[], Done | None]]) -> dict[int, str]:
        """What the engine and the actions would refuse, by message index; fills `plans` for actions."""
        sets = [(i, m.route.ref, m.value) for i, m in enumerate(msgs) if m.route.ref is not None]
        refused = {sets[k][0]: text for k, text in engine.check_batch([(r, v) for _, r, v in sets]).items()}
        for i, m in enumerate(msgs):
            if m.route.kind == "action" and self.actions is not None:
                try:
                    plans[i] = self.actions.plan(m.route.path, m.args)
                except EndlessError as e:
                    refused[i] = str(e)
                except Exception as e:  # a bug: named on its own message, not the bundle's first
                    refused[i] = self._bug(peer, m.address, e)
            elif m.dest is not None and m.route.kind == "subscribe" and not self.feedback.room_for(m.dest):
                refused[i] = (f"{m.address}: {len(self.feedback.subscribers())} subscribers already, the most "
                              "allowed: unsubscribe one first")
        return refused

    def _apply(self, engine: Engine, peer: Peer, m: _Msg, plan: Callable[[], Done | None] | None) -> None:
        fb, kind = self.feedback, m.route.kind
        if m.route.ref is not None:
            try:
                engine.set(m.route.ref, m.value)
            except ParamError as e:  # e.g. the audio thread's command queue is full
                fb.error(peer, m.address, str(e))
                return
            self.stats.applied += 1
        elif kind in ("ping", "ping/to"):
            pong = (f"{self.prefix}/pong", m.args)
            fb.send((m.dest,), pong) if m.dest is not None else fb.reply(peer, pong)
        elif kind == "sync":
            fb.sync(*((m.dest,) if m.dest is not None else fb.targets(peer)))
        elif kind == "subscribe" and m.dest is not None:
            fb.subscribe(m.dest, peer)
        elif kind == "unsubscribe" and m.dest is not None:
            fb.unsubscribe(m.dest)
            fb.send((m.dest,), (f"{self.prefix}/unsubscribed", ()))
        elif plan is not None:
            try:
                done = plan()
            except EndlessError as e:
                fb.error(peer, m.address, str(e))
                return
            if done is not None:
                self._done(peer, m.address, done)

    def _done(self, peer: Peer, address: str, done: Done) -> None:
        """An action's answer to its sender: `/done <address> <text>`, or a recording's `/record <on>
        <path>` (subscribers have it already: `Feedback.announce`)."""
        fb = self.feedback
        if done.recording is None:
            fb.reply(peer, (f"{self.prefix}/done", (address, done.text)))
            return
        subscribed = {d.key for d in fb.subscribers()}
        dests = tuple(d for d in fb.targets(peer) if d.key not in subscribed)
        if dests:
            fb.send(dests, (f"{self.prefix}/record", (int(done.recording), done.text)))

    def _refuse(self, peer: Peer, errors: list[tuple[str, str]]) -> None:
        for address, text in errors:
            self.feedback.error(peer, address, text)

    def _reply_port(self, peer: Peer, address: str, port: object) -> Peer:
        """`port` on the sender's host (UDP), from any client the allowlist lets in: never another
        host, and never this server's own port (it would answer itself for ever)."""
        if isinstance(port, bool) or not isinstance(port, (int, float)) or not float(port).is_integer() \
                or not 1 <= port <= 65535:
            raise ParamError(f"{address}: {port!r} is not a port: expected a port 1..65535 on your host, where "
                             "your client listens")
        dest = Peer(peer.host, int(port))
        if self.transport.is_self(dest):
            raise ParamError(f"{address} {dest.port}: that is this server's own port, where it listens: give the "
                             "port your client listens on")
        return dest

    def _bug(self, peer: Peer, address: str, e: Exception) -> str:
        """Count and log a bug met handling `address`; returns what to tell the sender."""
        self.stats.handler_exceptions += 1
        self._note(f"OSC: error handling {address} from {peer} (a bug: please report it)", e)
        return f"internal error ({type(e).__name__}: {e}); the server goes on"


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
