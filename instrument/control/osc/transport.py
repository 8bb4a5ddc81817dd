"""OSC transport: UDP datagrams and TCP streams in, replies out. Knows bytes and peers, not OSC.

UDP is python-osc's `BlockingOSCUDPServer` (socketserver's bind and receive loop, on its own
thread), changed in three places: datagrams up to 64 KB (it reads 8 KB), the allowlist checked on
every datagram (`verify_request`), and each datagram handed whole to the receiver (a bundle applies
all or nothing, so it cannot be dispatched message by message, and a packet that does not parse is
answered, not dropped in silence).

TCP (OSC 1.1: SLIP framing) is our own small selector loop (`tcp.py`), one thread for the listener
and every connection, because python-osc's TCP servers cannot do what a live instrument needs:
  - answer later on the same connection (a pong once what came before it has been applied, echoes,
    status) from the sender thread: python-osc answers only with a handler's return value, at once;
  - stay bounded against a bad client: frame size, the number of connections, idle time, and what
    waits to be sent to a client that does not read (python-osc buffers a frame without limit and
    starts a thread per connection);
  - frame as OSC 1.1 says: one END ends a packet (python-osc splits only on END END), and a bad
    escape is answered as one malformed frame instead of ending the connection.
Each frame is still decoded and encoded by python-osc's `slip`.

A reply over UDP larger than `MAX_UDP_REPLY` cannot go in one datagram: `fits` tells the sender,
which answers an error instead (TCP has no such limit).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import sys
import threading
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from instrument.control.osc.config import OscConfig, OscStats, RateLog, log
from instrument.control.osc.tcp import MAX_DATAGRAM, Peer, Receiver, TcpServer
from instrument.errors import ConfigError

__all__ = ["MAX_UDP_REPLY", "Peer", "Receiver", "Transport"]

MAX_UDP_REPLY = 65507  # the largest UDP payload over IPv4
POLL = 0.1  # seconds: how soon the UDP thread notices stop()

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class Transport:
    """The server's sockets: `start(receiver)` binds (ConfigError naming the flag if it cannot) and
    hands every packet to `receiver`; `send()` from any thread; `stop()` closes everything."""

    def __init__(self, config: OscConfig, stats: OscStats, log_limited: RateLog) -> None:
        self.config = config
        self.stats = stats
        self.note = log_limited  # rate-limited warnings
        self.port = config.port  # the bound ports, once started
        self.tcp_port = config.tcp_port
        self._nets = _parse_allow(config.allow)
        self._allowed: dict[str, bool] = {}
        self._udp: _UdpServer | None = None
        self._tcp: TcpServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self, receiver: Receiver) -> None:
        cfg = self.config
        self._udp = _UdpServer(self, receiver, cfg.host, cfg.port)
        self.port = self._udp.server_address[1]
        self._threads = [threading.Thread(target=self._udp.serve_forever, args=(POLL,), name="endless-osc-udp",
                                          daemon=True)]
        if cfg.tcp_port is not None:
            try:
                listener = _bind(cfg.host, cfg.tcp_port, socket.SOCK_STREAM, "--osc-tcp-port")
                self._tcp = TcpServer(cfg, self.stats, self.note, receiver, listener, self.allows)
            except ConfigError:
                self._udp.server_close()
                raise
            self.tcp_port = self._tcp.port
            self._threads.append(threading.Thread(target=self._tcp.run, args=(self.bug,), name="endless-osc-tcp",
                                                 daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        if self._udp is not None:
            self._udp.shutdown()
            self._udp.server_close()
        if self._tcp is not None:
            self._tcp.stop()
        for t in self._threads:
            t.join(5)

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

    def admit(self, host: str) -> bool:
        """`allows`, counting a refusal."""
        if self.allows(host):
            return True
        self.stats.refused_peers += 1
        return False

    def send(self, dest: Peer, data: bytes) -> bool:
        """Send one OSC packet (the sender thread), never waiting; False if it did not go: a UDP
        error, or a TCP client that stopped reading (then closed: see tcp.py)."""
        if dest.conn is not None:
            ok = self._tcp is not None and self._tcp.send(dest.conn, data)
        elif self._udp is None or len(data) > MAX_UDP_REPLY:
            ok = False
        else:
            try:
                self._udp.socket.sendto(data, (dest.host, dest.port))
                ok = True
            except OSError as e:
                ok = False
                log.debug("OSC send to %s: %s", dest, e)
        if ok:
            self.stats.sent += 1
        else:
            self.stats.send_errors += 1
        return ok

    def is_self(self, dest: Peer) -> bool:
        """Whether `dest` is this server's own UDP socket (a reply port there would answer itself for
        ever): its port, on loopback or on an address of this machine (one a socket can bind)."""
        if dest.conn is not None or dest.port != self.port:
            return False
        if dest.loopback or dest.host == self.config.host:
            return True
        try:
            family = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.bind((dest.host, 0))
        except OSError:
            return False  # not an address of this machine
        return True

    @staticmethod
    def fits(dest: Peer, size: int) -> bool:
        """Whether a packet of `size` bytes can go to `dest` at all (UDP: one datagram)."""
        return dest.conn is not None or size <= MAX_UDP_REPLY

    @staticmethod
    def alive(dest: Peer) -> bool:
        """False for a TCP connection that is closed or being closed (nothing more is built for it)."""
        return dest.conn is None or not dest.conn.dead

    def bound(self) -> list[tuple[str, int]]:
        """The (address, port) each socket listens on: UDP, then TCP."""
        socks = [self._udp.socket] if self._udp is not None else []
        socks += [self._tcp.listener] if self._tcp is not None else []
        return [tuple(s.getsockname()[:2]) for s in socks]  # type: ignore[misc]

    def bug(self, where: str, exc: BaseException) -> None:
        self.stats.handler_exceptions += 1
        self.note(f"OSC: error in {where} (a bug: please report it)", exc)


class _UdpServer(BlockingOSCUDPServer):
    """python-osc's UDP server handing each allowed datagram whole to the transport's receiver."""

    max_packet_size = MAX_DATAGRAM

    def __init__(self, transport: Transport, receiver: Receiver, host: str, port: int) -> None:
        self.transport = transport
        self.receiver = receiver
        try:
            super().__init__((host, port), Dispatcher())  # its dispatcher is unused: see finish_request
        except OSError as e:
            raise _bind_error(e, host, port, "udp", "--osc-port") from None

    def server_bind(self) -> None:
        with contextlib.suppress(OSError):  # else the system's default buffer will do
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.transport.admit(client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.transport.stats.packets += 1
        self.receiver.packet(request[0], Peer(client_address[0], client_address[1]))

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.transport.bug(f"a datagram from {client_address}", sys.exc_info()[1] or RuntimeError("?"))


def _bind(host: str, port: int, kind: socket.SocketKind, flag: str) -> socket.socket:
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise _bind_error(e, host, port, "tcp", flag) from None
    s = socket.socket(family, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
    except OSError as e:
        s.close()
        raise _bind_error(e, host, port, "tcp", flag) from None
    s.setblocking(False)
    return s


def _bind_error(e: OSError, host: str, port: int, proto: str, flag: str) -> ConfigError:
    if isinstance(e, socket.gaierror):
        return ConfigError(f"--listen {host}: not an address here ({e.strerror}): use 127.0.0.1, 0.0.0.0 or one of "
                           "this machine's addresses")
    if e.errno == errno.EADDRINUSE:
        return ConfigError(f"{flag} {port}: {proto} port {port} on {host} is in use (another endless, or another "
                           f"program): pick another with {flag}")
    return ConfigError(f"--listen {host} {flag} {port}: cannot listen ({e.strerror}): use 127.0.0.1, 0.0.0.0 "
                       "or one of this machine's addresses")


def _parse_allow(items: tuple[str, ...]) -> tuple[Net, ...]:
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--allow {item!r}: not an IP address or network (examples: 192.168.1.20, "
                              "192.168.1.0/24)") from None
    return tuple(nets)
