"""The OSC server against hostile input (issue 12): patterns that backtrack, type tags that flood the
log, TCP clients that hog connections or never read, far-future bundles, replies too large for a
datagram, subscriptions that never end, and what listens where. Real loopback sockets throughout;
the test thread plays the control loop (see tests/test_osc.py)."""

# ruff: noqa: F811  (serve: the fixture from tests/test_osc.py, imported)
from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pythonosc import slip

from instrument.control.mapfile import load_mapping
from instrument.control.osc import OscConfig, OscServer, tcp, transport
from instrument.control.presets import PresetStore
from instrument.errors import ConfigError, ParamError, ScriptError
from instrument.params import Registry
from instrument.script import load_script
from tests.conftest import endless
from tests.test_osc import (  # noqa: F401  (serve: the fixture)
    G1,
    Client,
    Msg,
    _bundle,
    _errors,
    _own_address,
    actions,
    encode,
    mix_engine,
    parse,
    plan_engine,
    pump,
    serve,
)

Serve = Callable[..., tuple[OscServer, Client]]


def _timed(client: Client, *packets: bytes | tuple[Any, ...], timeout: float) -> tuple[list[Msg], float]:
    """Send, ping, and return the replies before the pong and how long it took."""
    t0 = time.monotonic()
    for p in packets:
        client.send_raw(p) if isinstance(p, bytes) else client.send(*p)
    client.send("/endless/ping", 4242)
    return client.until_pong(4242, timeout), time.monotonic() - t0


# -- finding 3: address patterns are matched in linear time ----------------------------------------------
@pytest.mark.timeout(120)
def test_a_pattern_of_many_stars_is_answered_at_once(serve: Serve) -> None:
    e = mix_engine()
    server, client = serve(e)
    evil = "/endless/" + "*" * 32 + "/x"  # 52 bytes: python-osc's regex backtracked for 24 s
    got, took = _timed(client, (evil, 0.5), timeout=10.0)
    assert took < 1.0, f"{took:.1f} s"
    assert got == [] and e.values[("morph/x", None)] == 0.5  # what it matches: /endless/morph/x
    evil = "/endless/" + "*" * 32 + "/nothing"
    got, took = _timed(client, (evil, 0.5), timeout=10.0)
    assert took < 1.0 and [a for a, _ in got] == ["/endless/error"] and got[0][1][0] == evil, (took, got)
    assert client.exchange((G1, -3.0)) == [] and e.values[("slot/gain", 0)] == -3.0


def test_patterns_match_as_osc_says(serve: Serve) -> None:
    e = mix_engine()
    server, client = serve(e)
    cases = [("/endless/slot/*/gain", {0: -1.0, 1: -1.0}), ("/endless/slot/{2,7}/gain", {1: -2.0}),
             ("/endless/slot/[1-1]/gain", {0: -3.0}), ("/endless/slot/[!1]/gain", {1: -4.0}),
             ("/endless/slot/?/gai?", {0: -5.0, 1: -5.0}), ("/endless/sl*t/*/g*n", {0: -6.0, 1: -6.0}),
             ("/endless/*/{gain,pan}", {})]  # one level only: master/gain is two parts below /endless
    for pattern, want in cases:
        before = {s: e.values[("slot/gain", s)] for s in range(2)}
        got = client.exchange((pattern, want[min(want)] if want else -7.0))
        assert not _errors(got) or not want, (pattern, got)
        assert {s: e.values[("slot/gain", s)] for s in range(2)} == {**before, **want}, pattern
    assert client.exchange(("/endless/*/gain", -8.0)) == [] and e.values[("master/gain", None)] == -8.0
    long = "/endless/slot/" + "{1,2}" * 100 + "/gain"
    err = _errors(client.exchange((long, -1.0)))
    assert "at most" in err[long] and str(len(long)) in err[long], err


# -- finding 4: a datagram cannot flood the log ---------------------------------------------------------
def _tagged(address: str, tags: str) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (4 - len(b) % 4)
    return pad(address.encode()) + pad(tags.encode())


@pytest.mark.timeout(120)
def test_unknown_type_tags_are_refused_in_one_line(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    e = mix_engine()
    server, client = serve(e)
    flood = _tagged("/endless/ping", "," + "x" * 60000)
    caplog.set_level(logging.DEBUG)
    got, took = _timed(client, flood, flood, flood, timeout=10.0)
    assert took < 2.0, f"{took:.1f} s"
    errors = [a for n, a in got if n == "/endless/error"]
    assert len(errors) == 3 and all(a[0] == "/endless/ping" and "type tag 'x'" in a[1] for a in errors), got
    assert len(caplog.records) <= 2, f"{len(caplog.records)} log lines"


def test_python_osc_warnings_are_rate_limited_with_a_count(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    e = mix_engine()
    server, client = serve(e)
    caplog.set_level(logging.DEBUG)
    logging.warning("Unhandled parameter type: x")  # as python-osc logs: on the root logger
    junk = b"#bundle\0" + b"\0" * 7 + b"\1" + (struct.pack(">i", 4) + b"junk") * 2000  # 2000 unknown elements
    client.exchange(junk, junk)
    lines = [r for r in caplog.records if r.pathname.find("pythonosc") >= 0 or "content type" in r.getMessage()]
    assert len(lines) <= 2, f"{len(lines)} lines"


# -- finding 9: errors are answered as errors, not bugs -------------------------------------------------------
def test_bad_arguments_to_actions_and_ping_are_errors_not_bugs(serve: Serve, tmp_path: Path) -> None:
    e = mix_engine()
    acts = actions(e, tmp_path)
    acts.presets.store(e, "Dusk")
    (tmp_path / "broken.toml").write_bytes(b'version = 1\nname = "\xff\xfe"\n')
    server, client = serve(e, acts)
    ping_tt = _tagged("/endless/ping", ",it") + struct.pack(">iQ", 7, 3913056000 << 32)
    for packet, address in [(("/endless/preset/recall", "Dusk", "x"), "/endless/preset/recall"),
                            (("/endless/preset/next", "x"), "/endless/preset/next"),
                            (("/endless/preset/next", b"\1"), "/endless/preset/next"),
                            (("/endless/preset/next", None), "/endless/preset/next"),
                            (("/endless/preset/recall", "broken"), "/endless/preset/recall"),
                            (ping_tt, "/endless/ping"),
                            (_bundle((G1, -6.0), ("/endless/preset/recall", "broken")), "/endless/preset/recall")]:
        errors = _errors(client.exchange(packet))
        assert address in errors and "internal error" not in errors[address], (packet, errors)
        assert all(t.startswith("not applied") for a, t in errors.items() if a != address), errors
    assert "broken.toml" in _errors(client.exchange(("/endless/preset/recall", "broken")))["/endless/preset/recall"]
    assert server.stats.handler_exceptions == 0 and e.values[("slot/gain", 0)] == 0.0


def test_files_that_are_not_utf8_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'version = 1\n# caf\xe9\n')
    reg = Registry(slots=2)
    for call, error in ((lambda: load_mapping(bad, reg), ConfigError), (lambda: load_script(bad, reg), ScriptError)):
        with pytest.raises(error) as info:
            call()
        assert str(bad) in str(info.value) and "UTF-8" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bad.toml").write_bytes(bad.read_bytes())
    with pytest.raises(ParamError, match="UTF-8"):
        PresetStore(tmp_path / "p", ()).load("bad", reg)
    out = endless("render", "--demo", "--script", str(bad), "--seconds", "1", "--out", str(tmp_path / "o.wav"),
                  timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "UTF-8" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


# -- finding 11: TCP cannot be locked up ----------------------------------------------------------------------
class Tcp:
    def __init__(self, server: OscServer, rcvbuf: int = 0) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        assert server.tcp_port is not None
        self.sock.connect(("127.0.0.1", server.tcp_port))
        self.buf = bytearray()

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendall(slip.encode(encode(address, *args)))

    def read_until(self, address: str, timeout: float = 5.0) -> list[Msg]:
        """Frames until one on `address` (EOFError if the server closes first), pumping meanwhile."""
        got: list[Msg] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.01)
        while True:
            while (i := self.buf.find(slip.END, 1)) >= 0:
                frame = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                if frame.strip(slip.END):
                    got += parse(slip.decode(frame))
                    if got[-1][0] == address:
                        return got
            pump(self.server)
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing on {address} within {timeout} s: {got}")
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError(f"closed; got {got}")
            self.buf += data

    def closed(self, timeout: float = 5.0) -> bool:
        try:
            self.read_until("/never", timeout)
        except EOFError:
            return True
        except AssertionError:
            return False
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(60)
def test_idle_connections_cannot_lock_out_a_new_one(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "EVICT_IDLE", 0.3)
    server, _ = serve(mix_engine(), tcp_port=0, immediate=True)
    idle = [Tcp(server) for _ in range(server.config.max_connections)]
    time.sleep(0.2)
    busy = idle.pop()  # one of them is in use: not the one dropped
    busy.send("/endless/ping", 1)
    assert busy.read_until("/endless/pong")[-1] == ("/endless/pong", [1])
    time.sleep(0.4)
    busy.send("/endless/ping", 2)
    busy.read_until("/endless/pong")
    late = Tcp(server)
    late.send("/endless/ping", 3)
    assert late.read_until("/endless/pong")[-1] == ("/endless/pong", [3])
    assert idle[0].closed(), "the longest idle connection makes room"
    busy.send("/endless/ping", 4)
    assert busy.read_until("/endless/pong")[-1] == ("/endless/pong", [4])
    for c in [*idle, busy, late]:
        c.close()


@pytest.mark.timeout(60)
def test_when_every_connection_is_busy_a_new_one_is_told_why(serve: Serve) -> None:
    server, _ = serve(mix_engine(), tcp_port=0, immediate=True, max_connections=2)
    conns = [Tcp(server) for _ in range(2)]
    extra = Tcp(server)
    with pytest.raises(EOFError) as info:
        extra.read_until("/never")
    assert "too many" in str(info.value) and "2" in str(info.value)
    assert server.stats.refused_peers == 1
    for c in [*conns, extra]:
        c.close()


@pytest.mark.timeout(60)
def test_an_idle_connection_is_closed_and_a_busy_one_is_not(serve: Serve) -> None:
    server, _ = serve(mix_engine(), tcp_port=0, immediate=True, tcp_idle=1.0)
    idle, busy = Tcp(server), Tcp(server)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        busy.send("/endless/ping", 1)
        busy.read_until("/endless/pong")
        time.sleep(0.2)
    assert idle.closed(1.0)
    busy.send("/endless/ping", 2)
    assert busy.read_until("/endless/pong")[-1] == ("/endless/pong", [2])
    idle.close()
    busy.close()


@pytest.mark.timeout(120)
def test_a_tcp_client_that_never_reads_does_not_delay_others(serve: Serve) -> None:
    e = mix_engine()
    server, client = serve(e, tcp_port=0)
    stuck = Tcp(server, rcvbuf=4096)
    stuck.send("/endless/subscribe")
    worst, dropped = 0.0, False
    for i in range(80):  # each /sync answers ~2 KB on the connection, which nobody reads
        if not dropped:
            try:
                stuck.sock.sendall(slip.encode(encode("/endless/sync")) * 50)
            except (ConnectionResetError, BrokenPipeError):
                dropped = True
        t0 = time.monotonic()
        client.until_pong(_ping_token(client, i), timeout=10)
        worst = max(worst, time.monotonic() - t0)
    assert worst < 0.8, f"a pong took {worst:.2f} s"
    assert (dropped or stuck.closed(5.0)) and server.stats.send_errors >= 1, "its buffer overflowed: dropped"
    stuck.close()


def _ping_token(client: Client, i: int) -> int:
    client.send("/endless/ping", 10_000 + i)
    return 10_000 + i


# -- finding 12b: bundle timetags ---------------------------------------------------------------------------------
def _at(when: float, *msgs: tuple[Any, ...]) -> bytes:
    return _bundle(*msgs, when=when)


def test_a_future_bundle_is_refused_and_a_due_one_applies(serve: Serve) -> None:
    e = mix_engine()
    server, client = serve(e)
    errors = _errors(client.exchange(_at(time.time() + 60, (G1, -6.0), ("/endless/master/gain", -3.0))))
    assert set(errors) == {G1, "/endless/master/gain"} and "timetag" in errors[G1] and "60" in errors[G1], errors
    assert e.values[("slot/gain", 0)] == 0.0 and e.values[("master/gain", None)] == 0.0
    assert client.exchange(_at(time.time() - 5, (G1, -6.0))) == [] and e.values[("slot/gain", 0)] == -6.0


# -- finding 12c: replies too large for a datagram -------------------------------------------------------------
def test_a_reply_too_large_for_a_datagram_is_an_error_and_sync_counts_what_was_sent(
        serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "MAX_UDP_REPLY", 250)
    e = plan_engine()
    server, client = serve(e)
    prompt = "rain on a tin roof, far thunder, " * 8  # ~260 bytes: over the (lowered) datagram size
    assert client.exchange(("/endless/slot/1/prompt", prompt)) == []
    dump = client.exchange(("/endless/sync",))
    values = [m for m in dump if m[0] not in ("/endless/sync/done", "/endless/error")]
    assert dump[-1] == ("/endless/sync/done", [len(values)]), dump[-3:]
    assert not [m for m in values if m[0] == "/endless/slot/1/prompt"]
    err = _errors(dump)["/endless/slot/1/prompt"]
    assert "250" in err and "TCP" in err, err


# -- finding 12d: subscriptions expire unless renewed; another port on the sender's own host (issue 13) ----------
def test_a_subscription_expires_unless_renewed(serve: Serve) -> None:
    e = mix_engine()
    server, client = serve(e, subscribe_ttl=2.0)
    watcher = Client(server)
    try:
        watcher.exchange(("/endless/subscribe",))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:  # renewed every 0.3 s: it stays
            watcher.exchange(("/endless/subscribe",))
            time.sleep(0.3)
        assert len(server.subscribers()) == 1
        time.sleep(2.3)
        pump(server)
        got = [m for m in watcher.marker() if not m[0].startswith("/endless/status")]
        assert ("/endless/unsubscribed", []) in got and server.subscribers() == [], got
        client.exchange((G1, -5.0))
        assert not [m for m in watcher.exchange() if m[0] == G1], "no echo after it expired"
    finally:
        watcher.close()


def _lan() -> str:
    host = _own_address()
    if ipaddress.ip_address(host).is_loopback:
        pytest.fail("this machine has no address but loopback: cannot test from another host")
    return host


def test_a_lan_peer_may_subscribe_another_port_on_its_own_host(serve: Serve) -> None:
    """Max on a second laptop: udpsend from one port, udpreceive on another. Any allowed peer may
    subscribe a port on its own host (issue 13); its replies reach that port too."""
    host = _lan()
    server, _ = serve(mix_engine(), host="0.0.0.0", allow=(host,))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listen:
        s.bind((host, 0))
        listen.bind((host, 0))
        listen.settimeout(5)
        port = listen.getsockname()[1]
        s.sendto(encode("/endless/subscribe", port), (host, server.port))
        pump(server, 1.0)
        assert [str(p) for p in server.subscribers()] == [f"udp:{host}:{port}"]
        s.sendto(encode("/endless/ping", 7), (host, server.port))
        pump(server, 1.0)
        got: list[Msg] = []
        while ("/endless/pong", [7]) not in got:
            got += [m for m in parse(listen.recv(65536)) if not m[0].startswith("/endless/status/")]
        assert got[-2:] == [("/endless/sync/done", [len(got) - 2]), ("/endless/pong", [7])], got[-3:]
        s.sendto(encode("/endless/sync", server.port), (host, server.port))  # its host is this one: refused
        pump(server, 1.0)
        while (m := parse(listen.recv(65536))[0])[0] != "/endless/error":
            pass
        assert m[1][0] == "/endless/sync" and "own port" in m[1][1], m


# -- deliverable 5: what listens where ----------------------------------------------------------------------------
def test_osc_listens_on_loopback_unless_told_otherwise(serve: Serve) -> None:
    host = _lan()
    server, _ = serve(mix_engine(), tcp_port=0)
    assert OscConfig().host == "127.0.0.1"
    assert server.transport.bound() == [("127.0.0.1", server.port), ("127.0.0.1", server.tcp_port)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.sendto(encode(G1, -6.0), (host, server.port))
    with pytest.raises(OSError):
        socket.create_connection((host, server.tcp_port), timeout=2).close()
    time.sleep(0.2)
    assert server.stats.packets == 0
    from instrument.cli import build_parser
    assert build_parser().parse_args(["play"]).listen == "127.0.0.1"


def test_the_allowlist_refuses_tcp_connections_from_others(serve: Serve) -> None:
    host = _lan()
    server, _ = serve(mix_engine(), host="0.0.0.0", tcp_port=0, allow=("198.51.100.0/24",))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.settimeout(5)
    s.connect((host, server.tcp_port))
    s.sendall(slip.encode(encode(G1, -6.0)))
    with contextlib.suppress(ConnectionResetError):
        assert s.recv(65536) == b""
    s.close()
    assert server.stats.refused_peers == 1 and server.stats.packets == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
