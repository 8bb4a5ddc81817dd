"""OSC control: UDP and TCP/SLIP in, the address space from the registry, echo and status out.

Three rooms and a hall, each its own module:

  transport  sockets: UDP through python-osc's server, TCP (OSC 1.1, SLIP) through our own loop,
             the allowlist, sending (`Transport`, `Peer`)
  routes     the address space (parameters, `SERVER_ADDRESSES`, `ACTIONS`) and each packet made
             into one all-or-nothing job for the control bus (`Routes`)
  feedback   replies, echo of every accepted change, `/sync` dumps, status at <= 30 Hz, on one
             sender thread (`Feedback`, `STATUS_ADDRESSES`)
  server     the three put together for one `ControlBus` (`OscServer`); config: `OscConfig`, `OscStats`

The OSC code never takes the engine lock: every change goes to the bus as a job
(`instrument/control/bus.py`).
"""

from instrument.control.osc.config import OscConfig, OscStats
from instrument.control.osc.feedback import STATUS_ADDRESSES
from instrument.control.osc.routes import SERVER_ADDRESSES
from instrument.control.osc.server import OscServer
from instrument.control.osc.transport import Peer

__all__ = ["SERVER_ADDRESSES", "STATUS_ADDRESSES", "OscConfig", "OscServer", "OscStats", "Peer"]
