"""Fuzzing the files a performer hands the instrument: control scripts, presets, mapping files.

Any text (or bytes, through the file readers) gives either a parsed result or one EndlessError
whose message is one line naming the file, never another exception. Inputs: hypothesis text and
bytes, and the shipped examples mutated (lines dropped, duplicated, swapped, characters changed,
numbers made hostile), with derandomized hypothesis so CI runs the same cases every time.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instrument.control.mapfile import load_mapping, parse_mapping
from instrument.control.presets import PresetStore, parse_preset
from instrument.errors import EndlessError
from instrument.params import Registry
from instrument.script import load_script

ROOT = Path(__file__).resolve().parents[1]
REG = Registry(slots=4)
PRESETS = [p.read_text() for p in sorted((ROOT / "presets").glob("*.toml"))]
MAPPINGS = [p.read_text() for p in sorted((ROOT / "mappings").glob("*.toml"))]
SCRIPT = "\n".join(json.dumps(e) for e in (
    {"t": 0, "address": "/endless/slot/1/prompt", "args": ["rain:0.7 | thunder:0.3"]},
    {"t": 1.5, "address": "/endless/master/gain", "args": [-6]},
    {"t": 2, "address": "/endless/slot/2/weights", "args": [1, 2]},
    {"t": 3, "address": "/endless/xfade/normalized", "args": [0.5]},
    {"t": 4, "address": "/endless/curve", "args": "sin2"},
)) + "\n# a comment\n\n"
HOSTILE_TOKENS = ["nan", "inf", "-inf", "1e999", "-1", "0", "99999999999999999999", '""', "[]", "{}", "true",
                  '"\\u0000"', '"rain:nan | wind"', "= =", "[[", "\ufeff", "\x00", "'", '"', "\\", "1.5.2"]
SETTINGS = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def mutate_text(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(lines)) if lines else 0
        if op == 0 and lines:
            del lines[i]
        elif op == 1 and lines:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2 and lines:  # a token made hostile
            words = lines[i].split(" ")
            words[rng.randrange(len(words))] = rng.choice(HOSTILE_TOKENS)
            lines[i] = " ".join(words)
        elif op == 3 and lines:  # a character changed
            s = lines[i]
            k = rng.randrange(len(s) + 1)
            lines[i] = s[:k] + chr(rng.choice((0, 7, 34, 39, 44, 58, 61, 91, 93, 123, 125, 0xFEFF, 0x2028,
                                               rng.randrange(32, 0x3000)))) + s[k + 1:]
        elif op == 4:  # truncated
            lines = lines[:i]
        elif lines:
            lines[i] = lines[i] * rng.randint(2, 3)
    return "\n".join(lines)


def _one_clear_line(e: EndlessError, where: str) -> None:
    msg = str(e)
    assert msg and "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert where in msg, f"does not name the file {where}: {msg!r}"


def _parse_or_clear_error(parse: object, text: str, where: str) -> None:
    assert callable(parse)
    try:
        parse(text, where, REG)
    except EndlessError as e:
        _one_clear_line(e, where)


# == presets ======================================================================================
@pytest.mark.timeout(120)
@SETTINGS
@given(st.sampled_from(PRESETS), st.integers(0, 2**32))
def test_mutated_presets_parse_or_give_one_clear_error(text: str, seed: int) -> None:
    _parse_or_clear_error(parse_preset, mutate_text(text, random.Random(seed)), "fuzz-preset.toml")


@pytest.mark.timeout(120)
@SETTINGS
@given(st.text(max_size=300))
def test_any_text_as_a_preset_parses_or_gives_one_clear_error(text: str) -> None:
    _parse_or_clear_error(parse_preset, text, "fuzz-preset.toml")


# == mappings =====================================================================================
@pytest.mark.timeout(120)
@SETTINGS
@given(st.sampled_from(MAPPINGS), st.integers(0, 2**32))
def test_mutated_mappings_parse_or_give_one_clear_error(text: str, seed: int) -> None:
    _parse_or_clear_error(parse_mapping, mutate_text(text, random.Random(seed)), "fuzz-mapping.toml")


@pytest.mark.timeout(120)
@SETTINGS
@given(st.text(max_size=300))
def test_any_text_as_a_mapping_parses_or_gives_one_clear_error(text: str) -> None:
    _parse_or_clear_error(parse_mapping, text, "fuzz-mapping.toml")


# == control scripts, and every reader given bytes ================================================
@pytest.mark.timeout(120)
@SETTINGS
@given(st.integers(0, 2**32))
def test_mutated_scripts_load_or_give_one_clear_error(seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz-script.jsonl"
        path.write_text(mutate_text(SCRIPT, random.Random(seed)))
        try:
            load_script(path, REG)
        except EndlessError as e:
            _one_clear_line(e, str(path))


@pytest.mark.timeout(120)
@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.sampled_from([SCRIPT, *PRESETS, *MAPPINGS]).map(
    lambda t: t.encode("utf-8")[:200] + b"\xff\xfe\x80" + t.encode("utf-8")[200:])))
def test_any_bytes_in_a_script_preset_or_mapping_file_load_or_give_one_clear_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name, load in (("fuzz-script.jsonl", lambda p: load_script(p, REG)),
                           ("fuzz-mapping.toml", lambda p: load_mapping(p, REG)),
                           ("fuzz-preset.toml", lambda p: PresetStore(folder, ()).load("fuzz-preset", REG))):
            path = folder / name
            path.write_bytes(data)
            try:
                load(path)
            except EndlessError as e:
                _one_clear_line(e, str(path))
