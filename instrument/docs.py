"""Generated documentation: the parameter and OSC reference, built from the registry.

`endless docs` prints it; `docs/osc.md` holds a copy that a test keeps in sync
(`make docs` rewrites it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from instrument.params import DEFAULT_PREFIX, PARAMS, Param

HEADER = """\
# Parameter and OSC reference

Generated from the parameter registry (`instrument/params.py`) by `endless docs`; do not edit by
hand (`make docs` rewrites it, and a test fails when it is out of date).

Addresses start with `{prefix}`. Slots are numbered from 1: `{prefix}/slot/2/gain -6`.
Values are in real units; ints and floats are both accepted wherever a number is expected.
Every number and enum also has a `/normalized` form taking 0..1 (for faders): dB gains use a
square-law fader taper (0.707 is 0 dB, 1.0 is +6 dB, 0 is off), times a log taper.
Switches take 0/1, true/false or on/off. Triggers take no arguments. A value out of range is
refused whole, never clamped, and changes nothing.
"""


def _range(p: Param) -> str:
    if p.kind == "enum":
        return " \\| ".join(f"`{c}`" for c in p.choices)
    if p.kind in ("float", "int"):
        return f"{p.min:g} .. {p.max:g}"
    if p.kind == "bool":
        return "0 / 1"
    if p.kind == "weights":
        return "one number >= 0 per blend part"
    return "-"


def _default(p: Param) -> str:
    if p.kind == "trigger":
        return "-"
    if p.kind == "bool":
        return "1" if p.default else "0"
    if p.kind == "weights":
        return "the prompt's"
    return f"`{p.default}`"


def osc_reference(prefix: str = DEFAULT_PREFIX) -> str:
    lines = [HEADER.format(prefix=prefix), "| address | type | range | default | unit | glide | description |",
             "|---|---|---|---|---|---|---|"]
    for p in PARAMS:
        addr = f"{prefix}/{p.path.replace('{slot}', 'N')}"
        norm = " (+ `/normalized`)" if p.has_normalized else ""
        glide = f"{p.smoothing * 1000:g} ms" if p.smoothing else "-"
        lines.append(f"| `{addr}`{norm} | {p.kind} | {_range(p)} | {_default(p)} | {p.unit or '-'} | {glide} "
                     f"| {p.doc} |")
    flags = [p for p in PARAMS if p.cli]
    lines += ["", "## Command-line flags from the registry", "",
              "These parameters also have a flag on `endless play` and `endless render` setting their start value:", ""]
    lines += [f"- `--{p.name}` ({_range(p)}{' ' + p.unit if p.unit else ''}, default {_default(p)})" for p in flags]
    lines += ["", server_reference(prefix).rstrip("\n")]
    lines += ["", "## Control scripts", "",
              'A control script is a JSON-lines file of `{"t": seconds, "address": "/endless/...", "args": [...]}`.',
              "`endless render --script FILE` and `endless play --script FILE` apply each event at its exact "
              "sample, so a live recording of a script equals its offline render.", ""]
    return "\n".join(lines)


def server_reference(prefix: str = DEFAULT_PREFIX) -> str:
    """Markdown for the server's own addresses, the actions (from `ACTIONS`, the one table MIDI
    bindings use too), the replies, and the status sent to subscribers."""
    from instrument.control.actions import ACTIONS
    from instrument.control.osc import SERVER_ADDRESSES, STATUS_ADDRESSES, OscConfig
    from instrument.control.osc.feedback import MAX_SENDERS
    from instrument.control.osc.pattern import MAX_PATTERN
    from instrument.control.osc.routes import FUTURE_SLACK
    from instrument.control.osc.tcp import EVICT_IDLE, MAX_OUT, MAX_SLIP_FRAME
    from instrument.control.osc.transport import MAX_UDP_REPLY

    cfg = OscConfig()

    rows = ["## Server addresses", "", "| address | arguments | what it does |", "|---|---|---|"]
    rows += _rows(f"{prefix}/", SERVER_ADDRESSES)
    rows += ["", "## Actions", "", "The same actions, with the same arguments, are reachable from a MIDI binding (docs/mappings.md).",
             "", "| address | arguments | what it does |", "|---|---|---|"]
    rows += _rows(f"{prefix}/", ACTIONS)
    rows += ["", f"A refused message is answered on the sender's address with `{prefix}/error <address> "
             "<message>` and changes nothing; the messages of one bundle (and the parameters one address "
             "pattern reaches) apply all together or not at all, and the error names each refused message's own "
             "address. Address patterns (`*`, `?`, `[..]`, `{a,b}`) reach every parameter they match. A trigger "
             "or an action given a 0 (a button's release) does nothing, except `record`, where 0 stops. Text "
             "takes several arguments as words joined by spaces (Pure Data sends each word as its own symbol). "
             f"An action answers `{prefix}/done <address> <result>` where it has a result.",
             "", "## Limits and safety", "",
             "- **Where it listens.** OSC listens on loopback (127.0.0.1) unless `--listen` says otherwise. OSC has "
             "no authentication: with `--listen 0.0.0.0` on a shared network, anyone who reaches the port plays "
             "the instrument unless `--allow ADDR[/BITS]` names who may (loopback always may; every other packet "
             "and TCP connection is refused).",
             "- **Bundle timetags.** A bundle applies when it arrives; the server does not schedule. A timetag "
             f"of \"immediately\" (1), the past, or up to {FUTURE_SLACK:g} s ahead of this machine's clock applies at once; "
             "one further ahead is refused, every message of it answered with an error.",
             f"- **Address patterns** are at most {MAX_PATTERN} characters and reach parameters only (not the server "
             "addresses or actions); they are matched in linear time.",
             "- **Type tags** python-osc does not parse (e.g. `S`, `c`) refuse the message with one error.",
             f"- **Subscriptions.** At most {cfg.max_subscribers}. Over UDP a subscription lasts {cfg.subscribe_ttl:g} s: send `/subscribe` again to "
             f"renew it (each renewal starts with the full dump); when it ends, `{prefix}/unsubscribed` says so. "
             "Over TCP a subscription lasts as long as the connection.",
             "- **Replies to a client that listens on another port than it sends from** (Max's `udpsend` and "
             "`udpreceive`, Pd's `netsend` and `netreceive`). Over UDP a client is its sender address: its host "
             f"and source port. After `{prefix}/subscribe PORT`, every reply to that sender (`/pong`, a `/sync` "
             "dump and `/sync/done`, `/error`, `/done`, `/record`) goes to PORT on its host as well, for as long "
             "as that subscription lasts (renew it every 30 s); another client on the same host, sending from "
             "another port, does not get them. A sender's replies go to the last port it subscribed; a port "
             f"takes the replies of its {MAX_SENDERS} newest senders. Without subscribing: `/sync PORT`, `/ping/to PORT "
             "[args]`. A port is always on the sender's own host, from any client the allowlist lets in (a "
             "forged sender address could already point a plain `/subscribe` anywhere; subscriptions end and "
             "are capped), and never the server's own port.",
             f"- **Replies over UDP** larger than one datagram ({MAX_UDP_REPLY:,} bytes) are not sent: an error names the "
             f"address instead (use TCP for them); `{prefix}/sync/done <count>` counts the messages actually sent.",
             f"- **TCP** (`--osc-tcp-port`, OSC 1.1 SLIP framing): at most {cfg.max_connections} connections; when full, the one that "
             f"has sent nothing longest makes room if idle for {EVICT_IDLE:g} s, else the new one is told why and closed. A "
             f"connection that sends nothing for {cfg.tcp_idle:g} s is closed (send `/ping` to keep it). A frame over "
             f"{MAX_SLIP_FRAME // 1024} KB "
             f"is dropped with an error. A client that does not read what it is sent is dropped once {MAX_OUT // 1024} KB wait "
             "for it: it never delays anyone else.",
             "", "## Status (to subscribers)", "", "| address | value | meaning |", "|---|---|---|"]
    rows += _rows(f"{prefix}/status/", STATUS_ADDRESSES)
    return "\n".join(rows) + "\n"


class _Row(Protocol):
    """A row of the address tables (`Action`, the server's and the status addresses)."""

    @property
    def path(self) -> str: ...

    @property
    def args(self) -> str: ...

    @property
    def doc(self) -> str: ...


def _rows(base: str, items: Iterable[_Row]) -> list[str]:
    return [f"| `{base}{a.path}` | {a.args or '-'} | {a.doc} |" for a in items]
