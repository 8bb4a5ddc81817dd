"""Replies that reach every controller (issue 13, item 5), over real loopback UDP sockets.

Max's `udpsend`/`udpreceive` and Pd's `netsend`/`netreceive` send from one port and listen on
another: a reply sent to the source port is lost. A sender (host and source port) that subscribed
a port gets its replies there as well while the subscription lasts; `/sync PORT` and
`/ping/to PORT [args]` answer at a port without subscribing. The test thread plays the control loop
(see tests/test_osc.py).
"""

# ruff: noqa: F811  (serve: the fixture from tests/test_osc.py, imported)
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instrument.control.osc import OscServer, Peer
from instrument.control.osc.feedback import MAX_SENDERS
from tests.test_osc import (  # noqa: F401  (serve: the fixture)
    G1,
    Client,
    Msg,
    Recording,
    _errors,
    actions,
    mix_engine,
    parse,
    pump,
    serve,
)

Serve = Callable[..., tuple[OscServer, Client]]
DONE = "/endless/sync/done"


def _until(server: OscServer, sock: socket.socket, want: str | Msg, timeout: float = 5.0) -> list[Msg]:
    """What `sock` hears (status left out) before `want` (an address, or a whole message), pumping
    the control loop meanwhile; the last item is the one wanted."""
    got: list[Msg] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.01)
    while True:
        pump(server)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {want} within {timeout} s; got {got}") from None
            continue
        for m in parse(data):
            if m[0].startswith("/endless/status/"):
                continue
            got.append(m)
            if m == want or m[0] == want:
                return got


def _settle(server: OscServer, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the control loop until `done()` (checked right after each tick)."""
    deadline = time.monotonic() + timeout
    while True:
        server.bus.wait(0.05)
        pump(server)
        if done():
            return
        assert time.monotonic() < deadline, f"not settled within {timeout} s"


class Patch:
    """A Max or Pd patch: sends from one socket (`udpsend`, its source port the system's choice) and
    listens on another (`udpreceive PORT`). The send socket keeps what reaches it too."""

    def __init__(self, server: OscServer) -> None:
        self.server = server
        self.out = Client(server)
        self.inlet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inlet.bind(("127.0.0.1", 0))
        self.port = self.inlet.getsockname()[1]
        self.sender = Peer("127.0.0.1", self.out.port)

    def send(self, address: str, *args: Any) -> None:
        self.out.send(address, *args)

    def hears(self, want: str | Msg) -> list[Msg]:
        """What the listening port hears up to `want` (included)."""
        return _until(self.server, self.inlet, want)

    def sends_back(self, want: str | Msg) -> list[Msg]:
        """What the sending socket hears up to `want` (included)."""
        return _until(self.server, self.out.sock, want)

    def replies_go_to(self) -> list[int]:
        return [p.port for p in self.server.feedback.targets(self.sender)]

    def close(self) -> None:
        self.out.close()
        self.inlet.close()


def _count(got: list[Msg], address: str) -> int:
    return sum(m[0] == address for m in got)


def test_a_subscribed_patch_gets_every_reply_on_its_listening_port(serve: Serve, tmp_path: Path) -> None:
    e = mix_engine()
    server, _ = serve(e, actions(e, tmp_path, recording=Recording()))
    patch = Patch(server)
    try:
        patch.send("/endless/subscribe", patch.port)
        dump = patch.hears(DONE)
        assert len(dump) > 10 and dump[-1] == (DONE, [len(dump) - 1]) and ("/endless/slot/2/mute", [0]) in dump
        assert [str(p) for p in server.subscribers()] == [f"udp:127.0.0.1:{patch.port}"]
        assert patch.replies_go_to() == [patch.out.port, patch.port]
        patch.send("/endless/subscribe", patch.port)  # the layouts renew every 30 s: same sender, same port
        assert patch.hears(DONE) == dump and patch.replies_go_to() == [patch.out.port, patch.port]

        patch.send("/endless/ping", "hello", 1)
        assert patch.hears("/endless/pong") == [("/endless/pong", ["hello", 1])]
        patch.send("/endless/sync")
        assert patch.hears(DONE) == dump
        patch.send(G1, "loud")
        patch.send("/endless/preset/store", "dusk")
        patch.send("/endless/record", 1)
        patch.send("/endless/ping", 2)
        got = patch.hears(("/endless/pong", [2]))
        assert set(_errors(got)) == {G1} and "loud" in _errors(got)[G1], got
        assert ("/endless/done", ["/endless/preset/store", "dusk"]) in got
        assert [m for m in got if m[0] == "/endless/record"] == [("/endless/record", [1, "/recordings/take-001.wav"])]
        # as well, not instead: the send socket has them too (the /record once: it is no subscriber)
        back = patch.sends_back(("/endless/pong", [2]))
        assert ("/endless/pong", ["hello", 1]) in back and _count(back, "/endless/error") == 1
        assert _count(back, DONE) == 1  # the /sync dump; the subscribe dumps went to the listening port only
        assert _count(back, "/endless/done") == 1 and back.count(("/endless/record", [1, "/recordings/take-001.wav"])) == 1
        assert (tmp_path / "dusk.toml").exists()
    finally:
        patch.close()


def test_another_client_on_the_same_host_gets_none_of_its_replies(serve: Serve) -> None:
    server, _ = serve(mix_engine())
    a, b = Patch(server), Patch(server)
    try:
        for p in (a, b):
            p.send("/endless/subscribe", p.port)
            p.hears(DONE)
        assert a.replies_go_to() == [a.out.port, a.port] and b.replies_go_to() == [b.out.port, b.port]
        a.send(G1, "loud")
        a.send("/endless/ping", "a")
        assert [m[0] for m in a.hears(("/endless/pong", ["a"]))] == ["/endless/error", "/endless/pong"]
        b.send("/endless/ping", "b")  # sent after a's replies went out: its pong comes after them
        assert b.hears(("/endless/pong", ["b"])) == [("/endless/pong", ["b"])]
        a.send("/endless/ping", "a2")
        assert a.hears(("/endless/pong", ["a2"])) == [("/endless/pong", ["a2"])]  # not b's pong
        plain = Client(server)  # a third sender on the host, never subscribed: its replies reach it alone
        try:
            plain.send(G1, "loud")
            assert [m[0] for m in plain.marker()] == ["/endless/error"]
            a.send("/endless/ping", "a3")
            assert a.hears(("/endless/pong", ["a3"])) == [("/endless/pong", ["a3"])]
        finally:
            plain.close()
    finally:
        a.close()
        b.close()


def test_sync_and_ping_to_a_port_without_subscribing(serve: Serve) -> None:
    server, _ = serve(mix_engine())
    patch = Patch(server)
    try:
        patch.send("/endless/ping/to", patch.port, "x", 2.5)
        assert patch.hears("/endless/pong") == [("/endless/pong", ["x", 2.5])]
        patch.send("/endless/ping/to", patch.port)
        assert patch.hears("/endless/pong") == [("/endless/pong", [])]
        patch.send("/endless/sync", patch.port)
        dump = patch.hears(DONE)
        assert len(dump) > 10 and dump[-1] == (DONE, [len(dump) - 1])
        assert server.subscribers() == [] and patch.replies_go_to() == [patch.out.port]
        patch.send("/endless/ping", 1)  # the send socket had none of it: its own pong is the first thing
        assert patch.sends_back("/endless/pong") == [("/endless/pong", [1])]
        patch.send("/endless/sync", 1.0)  # TouchOSC's button press: a dump to the sender, not to port 1
        assert patch.sends_back(DONE) == dump
        patch.send("/endless/subscribe", True)  # the same for subscribe: the sender itself
        assert patch.sends_back(DONE) == dump and [p.port for p in server.subscribers()] == [patch.out.port]
        patch.send("/endless/unsubscribe", 1)
        assert patch.sends_back("/endless/unsubscribed") == [("/endless/unsubscribed", [])]
        refused = [("/endless/ping/to",), ("/endless/ping/to", 0), ("/endless/ping/to", 70000, "x"),
                   ("/endless/ping/to", "9001"), ("/endless/ping/to", 9001.5), ("/endless/sync", 9001, 9002),
                   ("/endless/ping/to", server.port), ("/endless/sync", server.port),
                   ("/endless/subscribe", server.port)]
        for msg in refused:
            got = patch.out.exchange(msg)
            assert [m[0] for m in got] == ["/endless/error"] and got[0][1][0] == msg[0], (msg, got)
            why = got[0][1][1]
            assert ("own port" in why) == (server.port in msg[1:]) and ("port" in why), (msg, why)
        assert server.subscribers() == []
    finally:
        patch.close()


def test_the_reply_port_ends_with_its_subscription(serve: Serve) -> None:
    server, _ = serve(mix_engine(), subscribe_ttl=1.0)
    patch = Patch(server)
    try:
        for end in ("unsubscribe", "expiry"):
            patch.send("/endless/subscribe", patch.port)
            _settle(server, lambda: bool(server.subscribers()))  # it cannot expire before the next tick
            assert patch.replies_go_to() == [patch.out.port, patch.port], end
            if end == "unsubscribe":
                patch.send("/endless/unsubscribe", patch.port)
            else:
                time.sleep(1.2)
            assert patch.hears(("/endless/unsubscribed", []))[-1] == ("/endless/unsubscribed", []), end
            assert server.subscribers() == [] and patch.replies_go_to() == [patch.out.port], end
            patch.send("/endless/ping", end)
            assert patch.sends_back(("/endless/pong", [end]))[-1] == ("/endless/pong", [end])
            patch.send("/endless/ping/to", patch.port, "after")  # a barrier: anything sent before it is in
            assert patch.hears(("/endless/pong", ["after"])) == [("/endless/pong", ["after"])], end
    finally:
        patch.close()


def test_reply_ports_are_bounded_and_a_sender_keeps_the_last_port_it_subscribed(serve: Serve) -> None:
    server, _ = serve(mix_engine())
    patch, other = Patch(server), Patch(server)
    senders = [Client(server) for _ in range(MAX_SENDERS + 2)]  # a patch reloaded again and again
    fb = server.feedback
    try:
        peers = [Peer("127.0.0.1", c.port) for c in senders]
        for c, p in zip(senders, peers, strict=True):
            c.send("/endless/subscribe", patch.port)
            _settle(server, lambda p=p: len(fb.targets(p)) == 2)  # type: ignore[misc]
        assert [len(fb.targets(p)) for p in peers] == [1, 1] + [2] * MAX_SENDERS  # the newest 4
        assert len(server.subscribers()) == 1
        last = peers[-1]
        patch.send("/endless/subscribe", patch.port)  # the patch's own sender: the newest now
        senders[-1].send("/endless/subscribe", other.port)  # the last sender moves to another port
        _settle(server, lambda: len(server.subscribers()) == 2 and fb.targets(last)[-1].port == other.port)
        assert [p.port for p in fb.targets(last)] == [last.port, other.port]
        assert patch.replies_go_to() == [patch.out.port, patch.port]
        assert [len(fb.targets(p)) for p in peers[:-1]] == [1, 1, 1] + [2] * (MAX_SENDERS - 2)
        patch.send("/endless/unsubscribe", patch.port)
        patch.hears(("/endless/unsubscribed", []))
        assert [len(fb.targets(p)) for p in peers[:-1]] == [1] * (len(peers) - 1)
        assert patch.replies_go_to() == [patch.out.port] and len(fb.targets(last)) == 2  # the other port stays
    finally:
        for c in senders:
            c.close()
        patch.close()
        other.close()
