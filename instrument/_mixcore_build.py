"""cffi build script for `instrument._mixcore`, the mixer's compiled core (source: mixcore.c).

setup.py names it in `cffi_modules`, so `pip install -e .` compiles it (after editing mixcore.c,
run it again). Without pip:

    .venv/bin/python instrument/_mixcore_build.py      # builds in a temp dir, copies the .so here

Only what Python touches is declared here; `...;` lets the compiler fill in the rest of each struct.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
#define MC_VERSION ...
#define MC_MAX_SLOTS ...

typedef struct { ...; } mc_ramp;

typedef struct {
    int32_t q_count;
    int64_t queued_frames;
    int32_t started;
    double amp;
    double level;
    int64_t starvations, transitions, nexts_ignored;
    ...;
} mc_slot;

typedef struct {
    int32_t L;
    double reducing;
    ...;
} mc_limiter;

typedef struct {
    int32_t curve, autolevel;
    double master_amp;
    mc_slot slots[...];
    int32_t *retired;
    int32_t n_retired;
    int64_t retired_lost;
    mc_limiter lim;
    ...;
} mc_state;

mc_state *mc_new(int nslots, int q_cap, int max_block, int stagger, int64_t xfade_samples, int curve,
                 int64_t autolevel_glide, int lookahead, double ceiling_db, double release);
void mc_free(mc_state *st);
int mc_push(mc_state *st, int slot, const float *data, int64_t frames);
void mc_next(mc_state *st, int slot);
void mc_flush(mc_state *st, int slot);
void mc_set_xfade(mc_state *st, int64_t samples);
void mc_set_ramp(mc_state *st, int slot, double left, double right, int64_t samples);
int64_t mc_buffered(const mc_state *st, int slot);
int mc_render(mc_state *st, float *out, int n);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "instrument._mixcore",
    (HERE / "mixcore.c").read_text(),
    # IEEE arithmetic (no -ffast-math, no FMA contraction): block-size independence relies on every
    # product and sum being rounded the same way wherever a block starts. The two -fno-* flags
    # change no result; they let gcc vectorise the fade and peak loops.
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
                        "-std=c99"],
    libraries=["m"],
)

if __name__ == "__main__":
    import shutil
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp))
        shutil.copy2(built, HERE / built.name)
        sys.stderr.write(f"built {HERE / built.name}\n")  # a manual rebuild: python instrument/_mixcore_build.py
