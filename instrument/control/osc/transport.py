"""OSC transport: UDP datagrams and TCP streams in, replies out. Knows bytes and peers, not OSC.

UDP is python-osc's `BlockingOSCUDPServer` (socketserver's bind and receive loop, on its own
thread), changed in three places: datagrams up to 64 KB (it reads 8 KB), the allowlist checked on
every datagram (`verify_request`), and each datagram handed whole to the receiver (a bundle applies
all or nothing, so it cannot be dispatched message by message, and a packet that does not parse is
answered, not dropped in silence).

TCP (OSC 1.1: SLIP framing) is our own small selector loop, one thread for the listener and every
connection, because python-osc's TCP servers cannot do what a live instrument needs:
  - answer later on the same connection (a pong once what came before it has been applied, echoes,
    status) from the sender thread: python-osc answers only with a handler's return value, at once;
  - stay bounded against a bad client: a frame over 128 KB is dropped, clients past
    `max_connections` are refused (python-osc buffers a frame without limit and starts a thread
    per connection);
  - frame as OSC 1.1 says: one END ends a packet (python-osc splits only on END END), and a bad
    escape is answered as one malformed frame instead of ending the connection.
Each frame is still decoded and encoded by python-osc's `slip`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import select
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pythonosc import slip
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from instrument.control.osc.config import OscConfig, OscStats, RateLog, log
from instrument.errors import ConfigError

MAX_DATAGRAM = 65536  # UDP's own limit
MAX_SLIP_FRAME = 2 * MAX_DATAGRAM  # escaped: at most twice the packet
SEND_TIMEOUT = 1.0  # a TCP client that does not read for this long is dropped
POLL = 0.1  # seconds: how soon the UDP thread notices stop()

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class Receiver(Protocol):
    """What the transport hands packets to (the routes)."""

    def packet(self, data: bytes, peer: Peer) -> None: ...

    def malformed(self, peer: Peer, why: str) -> None: ...

    def closed(self, peer: Peer) -> None: ...


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
        self._tcp: _TcpServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self, receiver: Receiver) -> None:
        cfg = self.config
        self._udp = _UdpServer(self, receiver, cfg.host, cfg.port)
        self.port = self._udp.server_address[1]
        self._threads = [threading.Thread(target=self._udp.serve_forever, args=(POLL,), name="endless-osc-udp",
                                          daemon=True)]
        if cfg.tcp_port is not None:
            try:
                self._tcp = _TcpServer(self, receiver, _bind(cfg.host, cfg.tcp_port, socket.SOCK_STREAM, "--osc-tcp-port"))
            except ConfigError:
                self._udp.server_close()
                raise
            self.tcp_port = self._tcp.port
            self._threads.append(threading.Thread(target=self._tcp.run, name="endless-osc-tcp", daemon=True))
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

    def send(self, dest: Peer, data: bytes) -> None:
        """Send one OSC packet (the sender thread); a TCP client that stopped reading is closed."""
        if dest.conn is not None:
            if dest.conn.dead:
                return
            if not dest.conn.send(slip.encode(data)):
                self.stats.send_errors += 1
                dest.conn.dead = True
                if self._tcp is not None:
                    self._tcp.poke()  # its thread closes it
                return
        else:
            if self._udp is None:
                return
            try:
                self._udp.socket.sendto(data, (dest.host, dest.port))
            except OSError as e:
                self.stats.send_errors += 1
                log.debug("OSC send to %s: %s", dest, e)
                return
        self.stats.sent += 1

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


class _Conn:
    """One TCP client: its SLIP frame buffer (the TCP thread) and a locked, bounded-time send."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = Peer(host, port, self)
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


class _TcpServer:
    """OSC 1.1 over TCP: one selector thread for the listener and every connection (see the module)."""

    def __init__(self, transport: Transport, receiver: Receiver, listener: socket.socket) -> None:
        self.transport = transport
        self.receiver = receiver
        self.listener = listener
        listener.listen(transport.config.max_connections)
        self.port: int = listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, self._on_accept)
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the thread: stop, a dead connection
        for w in (self._wake_r, self._wake_w):
            w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_poke)
        self._conns: dict[int, _Conn] = {}
        self._stopping = False

    def run(self) -> None:
        while not self._stopping:
            for key, _ in self._sel.select(1.0):
                if self._stopping:
                    break
                try:
                    key.data(key.fileobj)
                except Exception as e:
                    self.transport.bug("the TCP loop", e)
            for c in [c for c in self._conns.values() if c.dead]:
                self._close(c)
        for c in list(self._conns.values()):
            self._close(c)
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def stop(self) -> None:
        self._stopping = True
        self.poke()

    def poke(self) -> None:
        with contextlib.suppress(OSError):  # the pipe is full: the thread is awake anyway
            self._wake_w.send(b"\0")

    def _on_poke(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.recv(4096)

    def _on_accept(self, sock: socket.socket) -> None:
        try:
            s, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        t = self.transport
        full = len(self._conns) >= t.config.max_connections
        if not t.admit(addr[0]) or full:
            if full:
                t.stats.refused_peers += 1
            t.note(f"OSC tcp client {addr[0]}:{addr[1]} refused ({'too many connections' if full else 'not allowed'})")
            s.close()
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(s, addr[0], addr[1])
        self._conns[conn.fd] = conn
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
        receiver = self.receiver
        for frame in conn.frames(data):
            if frame is None:
                receiver.malformed(conn.peer, f"SLIP frame longer than {MAX_SLIP_FRAME} bytes: dropped")
                continue
            try:
                packet = slip.decode(frame)
            except slip.ProtocolError:
                receiver.malformed(conn.peer, "malformed SLIP frame (an escape byte not followed by 0xDC or 0xDD)")
                continue
            self.transport.stats.packets += 1
            receiver.packet(packet, conn.peer)

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._conns.pop(conn.fd, None)
        conn.sock.close()
        self.receiver.closed(conn.peer)


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
