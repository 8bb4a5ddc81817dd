"""OSC 1.1 over TCP (SLIP framing): our own selector loop, one thread for the listener and every
connection, bounded against a bad client in every direction:

  - frames: one over `MAX_SLIP_FRAME` bytes is dropped (answered as malformed), memory stays flat;
  - connections: at most `max_connections`; when full, the connection idle longest makes room if it
    has sent nothing for `EVICT_IDLE` s, else the new one is told why and closed;
  - idle time: a connection that sends nothing for `tcp_idle` s is told why and closed;
  - sending: never blocks the sender thread. What the socket does not take at once waits in the
    connection's own buffer (at most `MAX_OUT` bytes) and goes out when the socket is writable; a
    client that stops reading overflows it and is dropped, so it never delays anyone else.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pythonosc import slip

if TYPE_CHECKING:
    from instrument.control.osc.config import OscConfig, OscStats, RateLog

MAX_DATAGRAM = 65536  # UDP's own limit, and what one recv reads
MAX_SLIP_FRAME = 2 * MAX_DATAGRAM  # escaped: at most twice the packet
MAX_OUT = 256 * 1024  # bytes waiting for one client before it is dropped as not reading
SNDBUF = 64 * 1024  # the kernel's send buffer per connection (fixed: no autotuning to megabytes)
EVICT_IDLE = 10.0  # s: when full, a connection idle this long makes room for a new one


@dataclass(frozen=True)
class Peer:
    """Where a message came from, and where its answers go: a UDP address or a TCP connection."""

    host: str
    port: int
    conn: Conn | None = None

    @property
    def key(self) -> tuple[object, ...]:
        return ("tcp", id(self.conn)) if self.conn is not None else ("udp", self.host, self.port)

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or self.host.startswith("127.")

    def __str__(self) -> str:
        return f"{'tcp' if self.conn is not None else 'udp'}:{self.host}:{self.port}"


class Receiver(Protocol):
    """What the transport hands packets to (the routes)."""

    def packet(self, data: bytes, peer: Peer) -> None: ...

    def malformed(self, peer: Peer, why: str) -> None: ...

    def closed(self, peer: Peer) -> None: ...

    def goodbye(self, why: str) -> bytes: ...  # the packet that tells a client why it is closed


class Conn:
    """One TCP client: its SLIP frame buffer (the TCP thread) and its bounded outgoing buffer."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = Peer(host, port, self)
        self.dead = False
        self.last_in = time.monotonic()
        self.writing = False  # registered for EVENT_WRITE (the TCP thread)
        self._buf = bytearray()
        self._skipping = False  # inside an overlong frame: drop bytes up to its end
        self._out = bytearray()
        self._lock = threading.Lock()

    def frames(self, data: bytes) -> list[bytes | None]:
        """The complete frames in `data` (still escaped; None for an overlong one). OSC 1.1 framing:
        a packet ends with END (0xC0); empty frames (double END) are skipped."""
        self.last_in = time.monotonic()
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
        """Queue `data` and send what the socket takes now, never waiting (any thread). False when
        the client is not reading: its buffer would pass `MAX_OUT`."""
        with self._lock:
            if len(self._out) + len(data) > MAX_OUT:
                return False
            self._out += data
            return self._flush()

    def flush(self) -> bool:
        with self._lock:
            return self._flush()

    def _flush(self) -> bool:
        try:
            while self._out:
                del self._out[:self.sock.send(self._out)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return False
        return True

    @property
    def pending(self) -> bool:
        return bool(self._out)


class TcpServer:
    """The listener and every connection on one selector thread (see the module)."""

    def __init__(self, config: OscConfig, stats: OscStats, note: RateLog, receiver: Receiver,
                 listener: socket.socket, allows: Callable[[str], bool]) -> None:
        self.config = config
        self.stats = stats
        self.note = note
        self.receiver = receiver
        self.listener = listener
        self.allows = allows
        listener.listen(config.max_connections)
        self.port: int = listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, self._on_accept)
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the thread: stop, a dead connection
        for w in (self._wake_r, self._wake_w):
            w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_poke)
        self._conns: dict[int, Conn] = {}
        self._stopping = False

    def run(self, bug: Callable[[str, BaseException], None]) -> None:
        tick = min(1.0, self.config.tcp_idle / 4)
        while not self._stopping:
            for key, events in self._sel.select(tick):
                if self._stopping:
                    break
                try:
                    if isinstance(key.data, Conn):
                        self._on_ready(key.data, events)
                    else:
                        key.data(key.fileobj)
                except Exception as e:
                    bug("the TCP loop", e)
            self._housekeep()
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

    def send(self, conn: Conn, data: bytes) -> bool:
        """Send one packet to a connection (the sender thread): False, and the connection is closed,
        when it does not read."""
        if conn.dead:
            return False
        if not conn.send(slip.encode(data)):
            conn.dead = True
            self.note(f"OSC tcp client {conn.peer.host}:{conn.peer.port} dropped: it does not read what it is "
                      f"sent ({MAX_OUT // 1024} KB waiting)")
            self.poke()
            return False
        if conn.pending:
            self.poke()  # its thread waits for the socket to take the rest
        return True

    def _housekeep(self) -> None:
        now = time.monotonic()
        for c in list(self._conns.values()):
            if not c.dead and now - c.last_in > self.config.tcp_idle:
                self._goodbye(c.sock, f"closed: nothing received for {self.config.tcp_idle:g} s (a client that "
                                      "stays connected sends something, e.g. /ping, more often)")
                c.dead = True
            if c.dead:
                self._close(c)
            elif c.pending != c.writing:
                c.writing = c.pending
                self._sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.writing else 0), c)

    def _on_poke(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.recv(4096)

    def _on_accept(self, sock: socket.socket) -> None:
        try:
            s, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        host, port = addr[0], addr[1]
        if not self.allows(host):
            self.stats.refused_peers += 1
            self.note(f"OSC tcp client {host}:{port} refused (not allowed: see --allow)")
            s.close()
            return
        if len(self._conns) >= self.config.max_connections and not self._make_room():
            self.stats.refused_peers += 1
            why = (f"refused: too many TCP connections ({self.config.max_connections}, all in use): close one, "
                   "or use UDP")
            self.note(f"OSC tcp client {host}:{port} {why}")
            self._goodbye(s, why)
            s.close()
            return
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        conn = Conn(s, host, port)
        self._conns[conn.fd] = conn
        self._sel.register(s, selectors.EVENT_READ, conn)

    def _make_room(self) -> bool:
        """Close the connection idle longest if it has been idle `EVICT_IDLE` s."""
        now = time.monotonic()
        oldest = min(self._conns.values(), key=lambda c: c.last_in)
        if now - oldest.last_in < EVICT_IDLE:
            return False
        self.note(f"OSC tcp client {oldest.peer.host}:{oldest.peer.port} closed to make room for a new one "
                  f"(idle {now - oldest.last_in:.0f} s)")
        self._goodbye(oldest.sock, f"closed to make room for a new connection: {self.config.max_connections} "
                                   "connections at once at most, and this one was idle longest")
        self._close(oldest)
        return True

    def _goodbye(self, sock: socket.socket, why: str) -> None:
        with contextlib.suppress(OSError):  # best effort: one small frame, never waiting
            sock.setblocking(False)
            sock.send(slip.encode(self.receiver.goodbye(why)))

    def _on_ready(self, conn: Conn, events: int) -> None:
        if events & selectors.EVENT_WRITE and not conn.flush():
            conn.dead = True
        if events & selectors.EVENT_READ:
            self._on_conn(conn)

    def _on_conn(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            conn.dead = True
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
            self.stats.packets += 1
            receiver.packet(packet, conn.peer)

    def _close(self, conn: Conn) -> None:
        conn.dead = True
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._conns.pop(conn.fd, None)
        conn.sock.close()
        self.receiver.closed(conn.peer)

