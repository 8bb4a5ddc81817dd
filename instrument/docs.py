"""Generated documentation: the parameter and OSC reference, built from the registry.

`endless docs` prints it; `docs/osc.md` holds a copy that a test keeps in sync
(`make docs` rewrites it).
"""

from __future__ import annotations

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
    from instrument.control.osc import reference

    lines += ["", reference(prefix).rstrip("\n")]
    lines += ["", "## Control scripts", "",
              'A control script is a JSON-lines file of `{"t": seconds, "address": "/endless/...", "args": [...]}`.',
              "`endless render --script FILE` and `endless play --script FILE` apply each event at its exact "
              "sample, so a live recording of a script equals its offline render.", ""]
    return "\n".join(lines)
