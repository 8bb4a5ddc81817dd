"""Issue 12, finding 12e: a mapping that targets a slot the instrument does not have is not accepted
without a word. It is not refused either: the shipped mappings (mappings/*.toml) have controls for
slots 5..8 and must load on the default 4 slots. One warning line per file names the file, each
control ([[control]] #N and its target) and the slot count, and says how to use them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from instrument.control.mapfile import load_mapping, parse_mapping
from instrument.control.surface import Surface
from instrument.params import Registry

ROOT = Path(__file__).resolve().parents[1]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_control_for_slot_9_on_4_slots_is_named_once(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('version = 1\n[[control]]\ncc = 7\ntarget = "/endless/slot/1/gain"\n'
                    '[[control]]\ncc = 8\ntarget = "/endless/slot/9/gain"\n'
                    '[[control]]\ncc = 9\ntarget = "slot/12/mute"\n')
    reg = Registry(slots=4)
    with caplog.at_level(logging.WARNING):
        m = load_mapping(path, reg)
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line
    assert str(path) in line and "4 slots" in line and "--slots 12" in line, line
    assert "[[control]] #2" in line and "/endless/slot/9/gain" in line, line
    assert "[[control]] #3" in line and "slot/12/mute" in line and "#1" not in line, line
    assert len(m.controls) == 3 and len(Surface(m, reg).unused) == 2  # loaded; the two are unused


def test_no_word_when_every_slot_exists(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parse_mapping('version = 1\n[[control]]\ncc = 8\ntarget = "/endless/slot/9/gain"\n', "t.toml",
                      Registry(slots=9))
    assert _warnings(caplog) == []


def test_the_shipped_8_slot_mappings_still_load_on_4_slots(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = load_mapping(ROOT / "mappings" / "generic-8x8.toml", Registry(slots=4))
    assert m.controls and len(_warnings(caplog)) == 1 and "--slots 8" in _warnings(caplog)[0]
