"""Coverage-guided fuzzing (atheris, libFuzzer) of the OSC packet path and the MIDI path.

    .venv/bin/python benchmarks/fuzz_atheris.py osc -runs=100000
    .venv/bin/python benchmarks/fuzz_atheris.py midi -runs=100000 -max_len=64
    .venv/bin/python benchmarks/fuzz_atheris.py osc -max_total_time=600 CORPUS_DIR

`osc`: each input is one packet handed to the OSC routes (`Routes.packet`, where the UDP and TCP
transports hand theirs) of a real OscServer on an engine with a generator plan (the rig of
tests/fuzz_rig.py); `midi`: each input is a byte stream cut into messages (by status bytes) and
injected into a MidiControl over a mapping of CC, 14-bit, NRPN, notes and encoders. The
instrument's own modules are instrumented for coverage. After every 256 inputs the bus is drained
and a block rendered; every 4096 inputs, and at the end, the invariants of the fuzz tests are
checked (values in range and finite, audio finite, no bug counted): a broken invariant raises,
which libFuzzer reports as a crash with the input that caused it. Without a corpus folder, it starts
from 300 seeds of the fuzz tests' generators. With -runs=N, the run's last input prints a JSON
line: {"bench": "fuzz_atheris", "target", "runs", "inputs", "seconds", "problems": []}.

atheris installs on Linux for CPython up to the versions it ships wheels or builds for (it needs
clang's libFuzzer to build from source); without it this script says so and exits 2.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.fuzz_rig` from the repository root

try:
    import atheris
except ImportError:
    print("atheris is not installed for this Python (pip install atheris; it needs a libFuzzer-capable "
          "clang where no wheel exists): skipped", file=sys.stderr)
    sys.exit(2)

with atheris.instrument_imports(include=["instrument"]):
    from tests.fuzz_rig import MidiRig, OscRig, midi_message, osc_addresses, osc_corpus

CHECK_EVERY = 4096


def split_midi(data: bytes) -> list[tuple[int, ...]]:
    """A byte stream as messages: a new message at every status byte (>= 0x80)."""
    out: list[list[int]] = []
    for b in data:
        if b >= 0x80 or not out:
            out.append([b])
        else:
            out[-1].append(b)
    return [tuple(m) for m in out]


def seed_corpus(target: str, rig: OscRig | MidiRig) -> str:
    """A folder of seeds (well-formed messages, bundles and MIDI streams): libFuzzer mutates from them."""
    folder = Path(tempfile.mkdtemp(prefix=f"fuzz_{target}_"))
    rng = random.Random(1)
    for i in range(300):
        if target == "osc":
            data = next(iter(osc_corpus(rng, osc_addresses(rig.engine.registry), 1)))
        else:
            data = bytes(b for _ in range(rng.randint(1, 8)) for b in midi_message(rng))
        (folder / f"seed{i:03d}").write_bytes(data)
    return str(folder)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("osc", "midi"):
        print(__doc__, file=sys.stderr)
        return 2
    target = sys.argv.pop(1)
    rig = OscRig() if target == "osc" else MidiRig()
    if not any(not a.startswith("-") for a in sys.argv[1:]):
        sys.argv.append(seed_corpus(target, rig))
    runs = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("-runs=")), 0)
    t0 = time.monotonic()
    calls = [0]

    def check() -> None:
        problems = rig.problems()
        if isinstance(rig, OscRig):
            problems += [f"{where}: {what}" for where, what in rig.bugs]
        if problems:
            raise AssertionError(f"invariants broken after {rig.inputs} inputs: {problems[:5]}")

    def one(data: bytes) -> None:
        calls[0] += 1
        if isinstance(rig, OscRig):
            rig.feed(data)
        else:
            for m in split_midi(data):
                rig.feed(m)
        if rig.inputs % CHECK_EVERY < 1 or (isinstance(rig, MidiRig) and rig.inputs % CHECK_EVERY < 8):
            check()
        if calls[0] == runs:  # libFuzzer ends the process without Python's exit handlers: report here
            check()
            print(json.dumps({"bench": "fuzz_atheris", "target": target, "runs": runs, "inputs": rig.inputs,
                              "seconds": round(time.monotonic() - t0, 1), "problems": []}), flush=True)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
