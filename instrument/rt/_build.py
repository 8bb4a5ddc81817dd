"""cffi build script for `instrument.rt._core`, the audio thread's compiled code (core.c, rt.h).

setup.py names it in `cffi_modules`, so `pip install -e .` compiles it (after editing core.c or
rt.h, run it again). Without pip:

    .venv/bin/python instrument/rt/_build.py      # builds in a temp dir, copies the .so here

The declarations cffi sees are rt.h's, between its cdef markers: one header for C and Python.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def cdef() -> str:
    text = (HERE / "rt.h").read_text()
    return text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]


ffibuilder = FFI()
ffibuilder.cdef(cdef())
ffibuilder.set_source(
    "instrument.rt._core",
    '#include "core.c"',
    include_dirs=[str(HERE)],
    # IEEE arithmetic (no -ffast-math, no FMA contraction): block-size independence relies on every
    # product and sum being rounded the same way wherever a block starts. The two -fno-* flags
    # change no result; they let the compiler vectorise the fade and peak loops.
    extra_compile_args=(["/O2", "/fp:precise"] if sys.platform == "win32" else
                        ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-std=c99"]),
    libraries=[] if sys.platform == "win32" else ["m"],
)

if __name__ == "__main__":
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp))
        for old in HERE.glob("_core*.so"):  # pip's build may have another name: one wins on import
            old.unlink()
        shutil.copy2(built, HERE / built.name)
        sys.stderr.write(f"built {HERE / built.name}\n")
