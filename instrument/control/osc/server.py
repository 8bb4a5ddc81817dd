"""The OSC server: the three rooms (transport, routes, feedback) put together for one control bus.

    bus = ControlBus(engine)
    with OscServer(bus, OscConfig(port=9000), actions) as server:   # start() ... stop()
        while playing:                      # the control loop
            bus.wait(0.01)                  # returns at once when a job waits for it
            with engine.lock:
                bus.drain()                 # what could not run where it arrived
                server.tick()               # status to subscribers, when due
                ...                         # the rest of the tick: scripts, engine.pump()

Threads: the transport's receivers (UDP: python-osc's server; TCP: one selector loop) parse,
route and check each packet, then submit it to the bus as one job, which runs at once on that
thread when the engine is free, else on the control thread; the sender thread sends every reply,
echo and status. None of them takes the engine lock: the bus does.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from instrument.control.osc.config import OscConfig, OscStats, RateLog, limit_library_logs, log
from instrument.control.osc.feedback import Feedback
from instrument.control.osc.routes import Routes
from instrument.control.osc.transport import Peer, Transport

if TYPE_CHECKING:
    from instrument.control.actions import Actions
    from instrument.control.bus import ControlBus


class OscServer:
    """OSC for the engine of one control bus. `start()` binds and starts the threads (ConfigError,
    naming the flag, if a port is taken); the control loop calls `tick()` holding the engine lock;
    `stop()` closes everything (idempotent). `actions` (presets, learn, recording) answers at
    `<prefix>/<path>` for each of `ACTIONS`; without it they are refused as not available here."""

    def __init__(self, bus: ControlBus, config: OscConfig | None = None, actions: Actions | None = None) -> None:
        config = config if config is not None else OscConfig()
        config.check()
        self.bus = bus
        self.engine = bus.engine
        self.config = config
        self.stats = OscStats()
        note = RateLog()
        self.transport = Transport(config, self.stats, note)
        self.feedback = Feedback(self.engine, config, self.stats, self.transport, note)
        self.routes = Routes(bus, self.feedback, self.stats, actions, note, self.transport)
        if actions is not None:
            actions.listeners.append(self.feedback.announce)
        self._started = False
        self._stopped = False

    @property
    def port(self) -> int:
        """The UDP port (the one bound, once started)."""
        return self.transport.port

    @property
    def tcp_port(self) -> int | None:
        return self.transport.tcp_port

    @property
    def delays(self) -> deque[int]:
        """Arrival -> applied, ns, of the bus's jobs (diagnostics, benchmarks)."""
        return self.bus.delays

    @property
    def recording(self) -> str | None:
        """The path being recorded, as the last record action answered."""
        return self.feedback.recording

    def start(self) -> OscServer:
        limit_library_logs()
        self.transport.start(self.routes)
        self.feedback.start()
        self._started = True
        cfg = self.config
        tcp = f", tcp (SLIP) port {self.tcp_port}" if cfg.tcp_port is not None else ""
        allow = f", clients {', '.join(cfg.allow)} and loopback" if cfg.allow else ""
        log.info("OSC on %s udp port %d%s%s", cfg.host, self.port, tcp, allow)
        return self

    def tick(self) -> None:
        """The control loop, each tick, holding the engine lock: status to subscribers when due."""
        self.feedback.tick()

    def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        self.transport.stop()
        self.feedback.stop()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def allows(self, host: str) -> bool:
        """Whether a client address may talk to the server (loopback always may)."""
        return self.transport.allows(host)

    def subscribers(self) -> list[Peer]:
        return self.feedback.subscribers()

