"""All layouts together: `make layouts` leaves nothing to change, and the shared checks refuse what
the instrument refuses (each format's own tests read their files; see tests/test_layouts_*.py)."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import instrument.layouts.common as common
from instrument.params import Registry

ROOT = Path(__file__).resolve().parents[1]
REG = Registry(slots=common.LAYOUT_SLOTS)


def test_every_committed_layout_and_preview_is_what_the_registry_makes() -> None:
    proc = subprocess.run([sys.executable, "-m", "instrument.layouts", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_check_finds_a_stale_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "instrument.layouts", "--check", "--root", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "max_patches/endless.pd" in proc.stderr and "make layouts" in proc.stderr


def test_check_send_refuses_what_the_server_refuses() -> None:
    ok = [("/endless/slot/1/gain/normalized", "f"), ("/endless/slot/4/prompt", "sss"), ("/endless/curve", "s"),
          ("/endless/slot/2/mute", "i"), ("/endless/slot/1/next", ""), ("/endless/ping/to", "i"),
          ("/endless/subscribe", "i"), ("/endless/preset/recall", "i"), ("/endless/tempo", "f")]
    for address, types in ok:
        assert common.check_send(REG, address, types) is None, (address, types)
    bad = [("/endless/slot/5/gain/normalized", "f"), ("/endless/slot/1/gain", "s"), ("/endless/curve", "f"),
           ("/endless/nope", "f"), ("/other/slot/1/gain", "f"), ("/endless/ping/to", "s"),
           ("/endless/subscribe", "s"), ("/endless/slot/1/prompt", "f"), ("/endless/slot/1/next", "s")]
    for address, types in bad:
        assert common.check_send(REG, address, types) is not None, (address, types)


def test_check_receive_knows_echoes_status_and_replies() -> None:
    for address in ("/endless/slot/1/gain/normalized", "/endless/status/slot/3/level", "/endless/pong",
                    "/endless/sync/done", "/endless/status/generator/state", "/endless/record"):
        assert common.check_receive(REG, address) is None, address
    for address in ("/endless/slot/1/next", "/endless/status/slot/9/level", "/endless/status/nope", "/endless/pongs"):
        assert common.check_receive(REG, address) is not None, address


def test_every_section_control_is_well_formed() -> None:
    for c in common.controls(REG):
        assert c.widget in common.WIDGETS, c
        assert c.send or c.receive or c.xy, c
    assert doctest.testmod(common).failed == 0
