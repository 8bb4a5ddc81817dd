/* The audio thread: the device callback, the command rings, the mixer, the limiter, the tap.
 *
 * PortAudio calls rt_callback on its own thread (sounddevice hands it the function pointer, as
 * python-rtmixer does): no Python runs there and the GIL is never taken. An offline render calls
 * rt_process, the same function the callback calls, so live and offline output are bit-identical.
 *
 * What runs here: slot queues of clip ids, crossfades (anchor/rate/fade_k/fade_total/curve,
 * re-timed when the crossfade length changes mid-fade), starvation (a clip crossfades into its own
 * start, never silence), the deferred `next`, the staggered fade-in start, the gain law (fader,
 * pan, mute/solo, morph line/xy, autolevel) as per-slot and master linear ramps, slot levels, the
 * look-ahead limiter, and the recorder's tap.
 *
 * Rules: rt_new allocates everything and touches every page of it (no page fault later); nothing
 * after it allocates, locks, logs or does I/O. The
 * control side talks to the audio thread only through single-producer/single-consumer rings of
 * plain structs (commands, timed commands, returned clip ids, tapped frames) whose positions are
 * published with release stores and read with acquire loads, and reads the telemetry struct the
 * audio thread rewrites after every block.
 *
 * Block-size independence: every ramp and fade value is a function of integer sample counts since
 * the ramp or fade began (never accumulated across blocks), and the limiter runs sample by sample
 * on state that does not depend on where a block starts, so rendering block by block equals
 * rendering the whole buffer, bit for bit. Build with -ffp-contract=off so that a*b+c stays two
 * roundings everywhere, and without -ffast-math (-fno-trapping-math and -fno-math-errno change no
 * result).
 *
 * The limiter (limit() below): the output never exceeds the ceiling and is transparent below it.
 *   need[n] = max(0, peak_db(x[n]) - ceiling_db)       the reduction a sample needs
 *   hold[n] = max(need[n-L .. n])                      so it covers the look-ahead
 *   env[n]  = max(hold[n], env[n-1] - release)         linear-in-dB release
 *   gr[n]   = mean(env[n-L+1 .. n])                    attack: a ramp over the look-ahead
 *   y[n]    = x[n-L] * 10^(-gr[n]/20), clamped to the ceiling (the signal is delayed by L)
 * While nothing comes near the ceiling for L samples and nothing is reducing, the gain is exactly
 * 1 and the block is copied (what the per-sample loop would compute).
 */
#if !defined(_WIN32) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE  /* clock_gettime, syscall */
#endif
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "rt.h"

#define RT_HALF_PI 1.5707963267948966
#define RT_QUARTER_PI 0.7853981633974483
#define RT_SQRT2 1.4142135623730951
#define RT_MAX_CMDS_PER_BLOCK 256
#define RT_PA_OUTPUT_UNDERFLOW 0x4ul  /* paOutputUnderflow */

/* -- lock-free SPSC positions: they only grow; an item lives at pos % cap ------------------------ */
typedef struct {
    int64_t w, r, cap;
} rt_pos;

static inline int64_t ld_acq(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void st_rel(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* A per-channel linear glide from `start` to `target` over S samples; k samples done. */
typedef struct {
    double start[2], target[2], delta[2];
    int64_t S, k;
} rt_ramp;

typedef struct {
    int32_t *queue;               /* ring of clip ids, q_cap long (audio thread only) */
    int32_t q_head, q_count;
    int64_t queued_frames;
    int32_t cur, inc;             /* clip ids; -1: none */
    int64_t cur_pos, inc_pos;
    int32_t fading, started, next_pending, fade_curve;
    double anchor, rate;          /* fade phase at sample fade_k (1-based): anchor + rate * k */
    int64_t fade_k, fade_total;
    rt_ramp ramp;
    double gain, pan;             /* the fader's amplitude; -1 .. 1 */
    int32_t mute, solo;
    double amp;                   /* gain x mute/solo x morph, before pan */
    double level;                 /* RMS of the last block, after gain */
    int64_t starvations, transitions, nexts_ignored, pushes, flushes;
} rt_slot;

typedef struct {
    int32_t L;                    /* look-ahead (and delay) in samples */
    double ceiling_db, ceiling, release, gscale, reducing, env_last;
    float ceil_f, quiet_f;        /* |x| <= quiet_f: needs no reduction, and passes the clip */
    float *delay;                 /* (L + max_block) x 2: L frames of history, then the block */
    double *need;                 /* ring of the last L + 1 needs (dB) */
    double *env;                  /* ring of the last L envelope values (dB) */
    int32_t npos, epos;
    int64_t quiet_run, env_zero_run;  /* trailing samples that were quiet / had env == 0 */
} rt_limiter;

#define RT_CHUNK 256   /* fade samples per rotation chunk */
#define RT_TABLES 4    /* rotation tables kept (one per fade rate in use) */

typedef struct {
    double rate;
    uint64_t used;
    double c[RT_CHUNK], s[RT_CHUNK];  /* cos and sin of p * rate * pi/2 */
} rt_rot;

struct rt_state {
    rt_telemetry tel;             /* written by the audio thread after every block */
    int32_t nslots, q_cap, max_block, stagger, curve, autolevel, morph_mode;
    int64_t xfade_samples, autolevel_glide;
    double master_amp;            /* the master fader's amplitude (before autolevel) */
    double morph_pos, morph_x, morph_y;
    rt_ramp master;
    rt_slot slots[RT_MAX_SLOTS];
    int32_t nclips;               /* clip ids 0..nclips-1, handed out by the control side */
    const float **clip_data;      /* (frames, 2) float32 rows; the control side keeps them alive */
    int64_t *clip_frames;
    rt_cmd *cmds, *timed;         /* command rings: next block, and timed (frame order) */
    rt_pos cmd, tim;
    int32_t *rets;                /* ring of clip ids the audio thread is done with */
    rt_pos ret;
    float *tap;                   /* ring of tapped frames (x 2) for the recorder */
    rt_pos tp;
    int64_t tap_left;             /* frames still to tap; -1: until told to stop */
    float *sbuf;                  /* one slot's block */
    double *gin, *gout;           /* crossfade gains of one sub-block */
    int32_t *queues;
    rt_rot rot[RT_TABLES];
    uint64_t rot_clock;
    rt_limiter lim;
};

/* -- helpers ------------------------------------------------------------------------------------- */
static inline int64_t mn(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t mx(int64_t a, int64_t b) { return a > b ? a : b; }

/* sin and cos on [0, pi/2] from their Taylor series (to x^21 and x^22: truncation < 1e-18). */
static inline void qsincos(double x, double *s, double *c) {
    const double z = x * x;
    *s = x * (1.0 + z * (-0.16666666666666666 + z * (0.008333333333333333 + z * (-0.0001984126984126984
         + z * (2.7557319223985893e-06 + z * (-2.505210838544172e-08 + z * (1.6059043836821613e-10
         + z * (-7.647163731819816e-13 + z * (2.8114572543455206e-15 + z * (-8.22063524662433e-18
         + z * 1.9572941063391263e-20))))))))));
    *c = 1.0 + z * (-0.5 + z * (0.041666666666666664 + z * (-0.001388888888888889 + z * (2.48015873015873e-05
         + z * (-2.755731922398589e-07 + z * (2.08767569878681e-09 + z * (-1.1470745597729725e-11
         + z * (4.779477332387385e-14 + z * (-1.5619206968586225e-16 + z * (4.110317623312165e-19
         + z * -8.896791392450574e-22))))))))));
}

/* A fade's phase at its sample m (1-based), as the numpy core computes it. */
static inline double fade_theta(double m, double rate, double anchor) {
    const double u = m * rate + anchor;
    return (u < 1.0 ? u : 1.0) * RT_HALF_PI;
}

/* Crossfade gains come from rotations: a fade's samples are cut into chunks of RT_CHUNK on a grid
 * fixed by the fade itself (not by blocks); sin/cos of a chunk's first phase come from the full
 * series and each later sample rotates them by p steps of the fade's rate, read from a table that
 * every fade at that rate shares. Every value depends only on the sample's index in its fade, hence
 * block-size independence, at a few flops per sample. */
static const rt_rot *rotation(rt_state *st, double rate) {
    rt_rot *lru = &st->rot[0];
    for (int i = 0; i < RT_TABLES; i++) {
        rt_rot *r = &st->rot[i];
        if (r->rate == rate) {
            r->used = ++st->rot_clock;
            return r;
        }
        if (r->used < lru->used) lru = r;
    }
    /* a rate not seen lately (an xfade change, a short clip): one table, RT_CHUNK series */
    lru->rate = rate;
    lru->used = ++st->rot_clock;
    const double step = rate * RT_HALF_PI;
    for (int p = 0; p < RT_CHUNK; p++) {
        const double a = (double)p * step;
        qsincos(a < RT_HALF_PI ? a : RT_HALF_PI, &lru->s[p], &lru->c[p]);  /* past pi/2: never read */
    }
    return lru;
}

/* gi = sin(theta), go = cos(theta) for the fade's samples m0+1 .. m0+k. */
static void fade_gains(rt_state *st, double *restrict gi, double *restrict go, int64_t m0, int k, double rate,
                       double anchor) {
    const rt_rot *R = rotation(st, rate);
    double s1, c1;
    qsincos(RT_HALF_PI, &s1, &c1);
    int j = 0;
    while (j < k) {
        const int64_t m = m0 + j + 1, p0 = (m - 1) % RT_CHUNK;
        const int e = (int)mn(k, j + (RT_CHUNK - p0));
        double sb, cb;
        qsincos(fade_theta((double)(m - p0), rate, anchor), &sb, &cb);
        const double *rc = R->c + p0 - j, *rs = R->s + p0 - j;
        for (int i = j; i < e; i++) {
            gi[i] = sb * rc[i] + cb * rs[i];
            go[i] = cb * rc[i] - sb * rs[i];
        }
        /* the phase stops at pi/2 (u >= 1): the fade's last samples, a suffix since u only grows */
        for (int i = e - 1; i >= j && (double)(m0 + i + 1) * rate + anchor >= 1.0; i--) {
            gi[i] = s1;
            go[i] = c1;
        }
        j = e;
    }
}

/* o = x * gi (+ c * go): one stereo row per gain, rounded as numpy does (double product, then
 * float, then the float sum). Indexes are ptrdiff_t in loops over interleaved rows: Python builds
 * extensions with -fwrapv, under which gcc cannot vectorise 2 * j with an int j. */
static void fade_rows(float *restrict o, const float *restrict x, const double *restrict gi, ptrdiff_t k) {
    for (ptrdiff_t j = 0; j < k; j++) {
        o[2 * j] = (float)((double)x[2 * j] * gi[j]);
        o[2 * j + 1] = (float)((double)x[2 * j + 1] * gi[j]);
    }
}

static void crossfade_rows(float *restrict o, const float *restrict x, const double *restrict gi,
                           const float *restrict c, const double *restrict go, ptrdiff_t k) {
    for (ptrdiff_t j = 0; j < k; j++) {
        o[2 * j] = (float)((double)x[2 * j] * gi[j]) + (float)((double)c[2 * j] * go[j]);
        o[2 * j + 1] = (float)((double)x[2 * j + 1] * gi[j]) + (float)((double)c[2 * j + 1] * go[j]);
    }
}

/* -- ramps --------------------------------------------------------------------------------------- */
static void ramp_init(rt_ramp *r, double v) {
    r->start[0] = r->start[1] = r->target[0] = r->target[1] = v;
    r->delta[0] = r->delta[1] = 0.0;
    r->S = 1;
    r->k = 1;
}

static double ramp_now(const rt_ramp *r, int c) {
    double f = (double)r->k / (double)r->S;
    if (f > 1.0) f = 1.0;
    return r->start[c] + r->delta[c] * f;
}

/* Centre pan gives 1.0000000000000002: snap it, so unity gain is a no-op. */
static double snap1(double v) { return fabs(v - 1.0) < 1e-9 ? 1.0 : v; }

static void ramp_set(rt_ramp *r, double left, double right, int64_t samples) {
    left = snap1(left);
    right = snap1(right);
    if (left == r->target[0] && right == r->target[1]) return;  /* there, or on the way: keep the glide */
    const double a = ramp_now(r, 0), b = ramp_now(r, 1);
    r->start[0] = a;
    r->start[1] = b;
    r->target[0] = left;
    r->target[1] = right;
    r->delta[0] = left - a;
    r->delta[1] = right - b;
    r->S = samples > 1 ? samples : 1;
    r->k = 0;
}

/* y = x times the ramp over the next n samples (y may be x); returns x itself when the gain is 1. */
static const float *ramp_apply(rt_ramp *r, const float *x, float *y, int n) {
    int j = 0;
    if (r->k >= r->S) {
        if (r->target[0] == 1.0 && r->target[1] == 1.0) return x;
    } else {
        const int m = (int)mn(n, r->S - r->k);
        const double base = (double)(r->k + 1), S = (double)r->S;
        const double s0 = r->start[0], s1 = r->start[1], d0 = r->delta[0], d1 = r->delta[1];
        for (; j < m; j++) {
            const double f = ((double)j + base) / S;
            const ptrdiff_t i = 2 * (ptrdiff_t)j;
            y[i] = (float)((double)x[i] * (f * d0 + s0));
            y[i + 1] = (float)((double)x[i + 1] * (f * d1 + s1));
        }
        r->k += m;
    }
    if (j < n) {
        const double t0 = r->target[0], t1 = r->target[1];
        if (t0 == 1.0 && t1 == 1.0) {
            if (y != x) memcpy(y + 2 * j, x + 2 * j, (size_t)(n - j) * 2 * sizeof(float));
        } else {
            for (ptrdiff_t i = 2 * (ptrdiff_t)j; i < 2 * (ptrdiff_t)n; i += 2) {
                y[i] = (float)((double)x[i] * t0);
                y[i + 1] = (float)((double)x[i + 1] * t1);
            }
        }
    }
    return y;
}

/* mix += y; returns the RMS of y (partial sums in 8 lanes so the loop vectorises). */
static double accumulate(float *restrict mix, const float *restrict y, int n) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    const ptrdiff_t m = 2 * (ptrdiff_t)n;
    ptrdiff_t i = 0;
    for (; i + 8 <= m; i += 8) {
        for (int l = 0; l < 8; l++) {
            const float v = y[i + l];
            mix[i + l] += v;
            acc[l] += v * v;
        }
    }
    double sum = 0.0;
    for (; i < m; i++) {
        const float v = y[i];
        mix[i] += v;
        sum += (double)v * v;
    }
    for (int l = 0; l < 8; l++) sum += acc[l];
    return sqrt(sum / (2.0 * n));
}

/* -- clips and queues ---------------------------------------------------------------------------- */
static int64_t nominal_fade(const rt_state *st, int64_t frames) {
    return mx(1, mn(st->xfade_samples, frames / 2));
}

static int32_t pop(rt_state *st, rt_slot *s) {
    if (s->q_count == 0) return -1;
    const int32_t id = s->queue[s->q_head];
    s->q_head = (s->q_head + 1) % st->q_cap;
    s->q_count--;
    s->queued_frames -= st->clip_frames[id];
    return id;
}

/* The audio thread is done with a clip: its id goes back to the control side, which owns the
 * buffer. The return ring holds every id there is, so it cannot be full. */
static void retire(rt_state *st, int32_t id) {
    const int64_t w = st->ret.w, r = ld_acq(&st->ret.r);
    if (w - r >= st->ret.cap) {
        st->tel.returns_lost++;
        return;
    }
    st->rets[w % st->ret.cap] = id;
    st_rel(&st->ret.w, w + 1);
}

static void begin_fade(rt_state *st, rt_slot *s, int64_t samples) {
    s->fading = 1;
    s->anchor = 0.0;
    s->rate = 1.0 / (double)samples;
    s->fade_k = 0;
    s->fade_total = samples;
    s->fade_curve = st->curve;
}

static int transition(rt_state *st, rt_slot *s, int forced) {
    const int32_t cur = s->cur;
    int32_t nxt = pop(st, s);
    if (nxt < 0) {
        if (forced) return 0;
        nxt = cur;  /* starved: crossfade the clip into its own start, never silence */
        s->starvations++;
    }
    const int64_t rem = st->clip_frames[cur] - s->cur_pos;
    const int64_t f = mx(1, mn(mn(st->xfade_samples, st->clip_frames[nxt] / 2), rem));
    s->inc = nxt;
    s->inc_pos = 0;
    begin_fade(st, s, f);
    s->transitions++;
    return 1;
}

/* The gain law: each slot's amplitude is its fader times its morph weight (0 when muted, or when
 * another slot is soloed), panned with a constant-power law; the master's is its fader divided by
 * the root of the summed power of the slots playing (autolevel), so the level holds as slots come
 * and go. Every gain glides to its new value over `samples`; `only` >= 0 re-pans just that slot. */
static double morph_weight(const rt_state *st, int i) {
    const int n = st->nslots;
    if (st->morph_mode == 1 && n > 1) {
        double d = fabs(st->morph_pos - (double)i / (double)(n - 1)) * (double)(n - 1);
        return cos((d < 1.0 ? d : 1.0) * RT_HALF_PI);
    }
    if (st->morph_mode == 2 && i < 4) {
        const double x = st->morph_x, y = st->morph_y;
        const double b[4] = {(1 - x) * (1 - y), x * (1 - y), (1 - x) * y, x * y};
        return sqrt(b[i]);
    }
    return 1.0;
}

static void update_gains(rt_state *st, int64_t samples, int only) {
    int any_solo = 0;
    for (int i = 0; i < st->nslots; i++) any_solo |= st->slots[i].solo;
    double power = 0.0;
    for (int i = 0; i < st->nslots; i++) {
        rt_slot *s = &st->slots[i];
        double amp = s->gain * morph_weight(st, i);
        if (s->mute || (any_solo && !s->solo)) amp = 0.0;
        s->amp = amp;
        if (s->started) power += (amp < 1.0 ? amp : 1.0) * (amp < 1.0 ? amp : 1.0);
        if (only < 0 || only == i) {
            const double th = (s->pan + 1.0) * RT_QUARTER_PI;
            ramp_set(&s->ramp, amp * RT_SQRT2 * cos(th), amp * RT_SQRT2 * sin(th), samples);
        }
    }
    double m = st->master_amp;
    if (st->autolevel) m /= sqrt(power > 1.0 ? power : 1.0);
    ramp_set(&st->master, m, m, samples);
}

static void start_slot(rt_state *st, int i) {
    rt_slot *s = &st->slots[i];
    const int32_t clip = pop(st, s);
    const int64_t frames = st->clip_frames[clip], f = nominal_fade(st, frames);
    int64_t offset = 0;
    if (st->stagger) offset = (int64_t)((double)i / (double)st->nslots * (double)mx(0, frames - 2 * f));
    s->cur = -1;
    s->inc = clip;
    s->inc_pos = offset;
    begin_fade(st, s, f);
    s->started = 1;
    update_gains(st, st->autolevel_glide, -1);  /* slots' targets stay: only the master moves */
}

/* -- rendering ----------------------------------------------------------------------------------- */
static int render_fade(rt_state *st, rt_slot *s, float *out, int done, int n) {
    const int k = (int)mn(n - done, s->fade_total - s->fade_k);
    double *restrict gi = st->gin, *restrict go = st->gout;
    fade_gains(st, gi, go, s->fade_k, k, s->rate, s->anchor);
    if (s->fade_curve == 1) {  /* sin2 */
        for (int j = 0; j < k; j++) {
            gi[j] *= gi[j];
            go[j] *= go[j];
        }
    }
    float *o = out + 2 * done;
    const int32_t cur = s->cur;
    const float *x = st->clip_data[s->inc] + 2 * s->inc_pos;
    /* clips are long enough by construction; the clamps only keep a degenerate one in bounds */
    const int kin = (int)mx(0, mn(k, st->clip_frames[s->inc] - s->inc_pos));
    const int kc = cur < 0 ? 0 : (int)mx(0, mn(k, st->clip_frames[cur] - s->cur_pos));
    if (cur >= 0 && kin == k && kc == k) {
        crossfade_rows(o, x, gi, st->clip_data[cur] + 2 * s->cur_pos, go, k);
    } else {
        fade_rows(o, x, gi, kin);
        if (kin < k) memset(o + 2 * kin, 0, (size_t)(k - kin) * 2 * sizeof(float));
        if (cur >= 0) {
            const float *c = st->clip_data[cur] + 2 * s->cur_pos;
            for (int j = 0; j < kc; j++) {
                o[2 * j] += (float)((double)c[2 * j] * go[j]);
                o[2 * j + 1] += (float)((double)c[2 * j + 1] * go[j]);
            }
        }
    }
    if (cur >= 0) s->cur_pos += k;
    s->inc_pos += k;
    s->fade_k += k;
    if (s->fade_k >= s->fade_total) {
        const int32_t inc = s->inc;
        if (cur >= 0 && cur != inc) retire(st, cur);
        s->cur = inc;
        s->cur_pos = s->inc_pos;
        s->inc = -1;
        s->fading = 0;
        if (s->next_pending) {
            s->next_pending = 0;
            if (!transition(st, s, 1)) s->nexts_ignored++;
        }
    }
    return k;
}

/* The slot's next n frames: a pointer into the playing clip when they are a plain stretch of it,
 * else rendered into sbuf. */
static const float *render_slot(rt_state *st, rt_slot *s, int n) {
    if (!s->fading) {
        const int64_t frames = st->clip_frames[s->cur];
        if (frames - s->cur_pos - nominal_fade(st, frames) >= n) {
            const float *p = st->clip_data[s->cur] + 2 * s->cur_pos;
            s->cur_pos += n;
            return p;
        }
    }
    float *o = st->sbuf;
    int done = 0;
    while (done < n) {
        if (s->fading) {
            done += render_fade(st, s, o, done, n);
            continue;
        }
        const int64_t frames = st->clip_frames[s->cur];
        const int64_t until = frames - s->cur_pos - nominal_fade(st, frames);
        if (until <= 0) {
            transition(st, s, 0);
            continue;
        }
        const int k = (int)mn(n - done, until);
        memcpy(o + 2 * done, st->clip_data[s->cur] + 2 * s->cur_pos, (size_t)k * 2 * sizeof(float));
        s->cur_pos += k;
        done += k;
    }
    return o;
}

/* -- limiter (the method is in the header comment) ------------------------------------- */
static void limit(rt_limiter *lm, float *out, int n) {
    const int L = lm->L;
    float *d = lm->delay;
    const float *x = d + 2 * L;
    float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, peak = 0.f;
    const ptrdiff_t m = 2 * (ptrdiff_t)n;
    ptrdiff_t i = 0;
    for (; i + 8 <= m; i += 8) {  /* in lanes, so it vectorises */
        for (int l = 0; l < 8; l++) {
            const float a = fabsf(x[i + l]);
            lane[l] = a > lane[l] ? a : lane[l];
        }
    }
    for (; i < m; i++) peak = fabsf(x[i]) > peak ? fabsf(x[i]) : peak;
    for (int l = 0; l < 8; l++) peak = lane[l] > peak ? lane[l] : peak;
    if (peak <= lm->quiet_f && lm->quiet_run >= L && lm->env_zero_run >= L) {
        /* Nothing near the ceiling for L samples and no envelope: the gain is exactly 1 and the
         * output is the delayed input, which is what the per-sample loop computes here too. */
        memcpy(out, d, (size_t)n * 2 * sizeof(float));
        memset(lm->need, 0, (size_t)(L + 1) * sizeof(double));
        memset(lm->env, 0, (size_t)L * sizeof(double));
        lm->npos = (int32_t)((lm->npos + n) % (L + 1));
        lm->epos = (int32_t)((lm->epos + n) % L);
        lm->quiet_run += n;
        lm->env_zero_run += n;
        lm->env_last = 0.0;
        lm->reducing = 0.0;
    } else {
        double g = 1.0;
        for (int j = 0; j < n; j++) {
            const float al = fabsf(x[2 * j]), ar = fabsf(x[2 * j + 1]);
            const float pk = al > ar ? al : ar;
            double need = 0.0;
            if (pk > lm->quiet_f) {
                need = 20.0 * log10(pk > 1e-12f ? (double)pk : 1e-12) - lm->ceiling_db;
                if (!(need > 0.0)) need = 0.0;
                lm->quiet_run = 0;
            } else {
                lm->quiet_run++;
            }
            lm->need[lm->npos] = need;
            if (++lm->npos == L + 1) lm->npos = 0;
            double hold = 0.0;
            for (int i = 0; i <= L; i++) hold = lm->need[i] > hold ? lm->need[i] : hold;
            double env = lm->env_last - lm->release;
            if (hold > env) env = hold;
            lm->env[lm->epos] = env;
            if (++lm->epos == L) lm->epos = 0;
            lm->env_last = env;
            lm->env_zero_run = env == 0.0 ? lm->env_zero_run + 1 : 0;
            double sum = 0.0;
            for (int i = 0; i < L; i++) sum += lm->env[i];
            g = sum == 0.0 ? 1.0 : pow(10.0, sum * lm->gscale);
            float yl = (float)((double)d[2 * j] * g), yr = (float)((double)d[2 * j + 1] * g);
            yl = yl > lm->ceil_f ? lm->ceil_f : (yl < -lm->ceil_f ? -lm->ceil_f : yl);
            yr = yr > lm->ceil_f ? lm->ceil_f : (yr < -lm->ceil_f ? -lm->ceil_f : yr);
            out[2 * j] = yl;
            out[2 * j + 1] = yr;
        }
        lm->reducing = g > 0.0 && g < 1.0 ? -20.0 * log10(g) : 0.0;
    }
    memmove(d, d + 2 * n, (size_t)L * 2 * sizeof(float));
}

/* -- commands ------------------------------------------------------------------------------------ */
static void push_clip(rt_state *st, rt_slot *s, int32_t id) {
    s->pushes++;
    if (id < 0 || id >= st->nclips) return;  /* the facade never sends one: nothing to give back */
    if (s->q_count == st->q_cap) {
        st->tel.clips_dropped++;
        retire(st, id);
        return;
    }
    s->queue[(s->q_head + s->q_count) % st->q_cap] = id;
    s->q_count++;
    s->queued_frames += st->clip_frames[id];
}

static void next_clip(rt_state *st, rt_slot *s) {
    if (s->fading && s->cur >= 0)
        s->next_pending = 1;  /* mid-fade: runs when the fade ends */
    else if (s->cur < 0 || !transition(st, s, 1))
        s->nexts_ignored++;
}

static void flush(rt_state *st, rt_slot *s) {
    int32_t id;
    s->flushes++;
    while ((id = pop(st, s)) >= 0) retire(st, id);
}

/* A new crossfade length; fades in progress continue from their phase at the new rate, finishing
 * before either clip ends. */
static void set_xfade(rt_state *st, int64_t samples) {
    st->xfade_samples = samples;
    for (int i = 0; i < st->nslots; i++) {
        rt_slot *s = &st->slots[i];
        if (!s->fading) continue;
        const double p = s->anchor + s->rate * (double)s->fade_k;
        if (p >= 1.0) continue;
        int64_t lim = st->clip_frames[s->inc] - s->inc_pos;
        if (s->cur >= 0) lim = mn(lim, st->clip_frames[s->cur] - s->cur_pos);
        lim = mx(1, lim);
        double rate = 1.0 / (double)samples;
        if ((1.0 - p) / rate > (double)lim) rate = (1.0 - p) / (double)lim;
        s->anchor = p;
        s->rate = rate;
        s->fade_k = 0;
        s->fade_total = mx(1, mn(lim, (int64_t)ceil((1.0 - p) / rate - 1e-9)));
    }
}

static void apply(rt_state *st, const rt_cmd *c) {
    rt_slot *s = c->slot >= 0 && c->slot < st->nslots ? &st->slots[c->slot] : NULL;
    const double v = c->value;
    st->tel.commands++;
    switch (c->op) {
    case RT_GAIN: if (s) { s->gain = v; update_gains(st, c->glide, -1); } break;
    case RT_PAN: if (s) { s->pan = v; update_gains(st, c->glide, c->slot); } break;
    case RT_MUTE: if (s) { s->mute = v != 0.0; update_gains(st, c->glide, -1); } break;
    case RT_SOLO: if (s) { s->solo = v != 0.0; update_gains(st, c->glide, -1); } break;
    case RT_NEXT: if (s) next_clip(st, s); break;
    case RT_FLUSH: if (s) flush(st, s); break;
    case RT_PUSH: if (s) push_clip(st, s, c->clip); else if (c->clip >= 0) retire(st, c->clip); break;
    case RT_MASTER: st->master_amp = v; update_gains(st, c->glide, -1); break;
    case RT_XFADE: set_xfade(st, mx(1, (int64_t)v)); break;
    case RT_CURVE: st->curve = (int32_t)v; break;  /* fades in progress keep their curve */
    case RT_AUTOLEVEL: st->autolevel = v != 0.0; update_gains(st, c->glide, -1); break;
    case RT_MORPH_MODE: st->morph_mode = (int32_t)v; update_gains(st, c->glide, -1); break;
    case RT_MORPH_POS: st->morph_pos = v; update_gains(st, c->glide, -1); break;
    case RT_MORPH_X: st->morph_x = v; update_gains(st, c->glide, -1); break;
    case RT_MORPH_Y: st->morph_y = v; update_gains(st, c->glide, -1); break;
    case RT_TAP:
        st->tap_left = v < 0.0 ? -1 : (int64_t)v;
        st->tel.tapping = st->tap_left != 0;
        break;
    default: break;
    }
}

/* -- rendering a sub-block (n <= max_block) ------------------------------------------------------ */
static void render(rt_state *st, float *out, int n) {
    for (int i = 0; i < st->nslots; i++)
        if (!st->slots[i].started && st->slots[i].q_count) start_slot(st, i);
    float *mix = st->lim.delay + 2 * st->lim.L;
    memset(mix, 0, (size_t)n * 2 * sizeof(float));
    for (int i = 0; i < st->nslots; i++) {
        rt_slot *s = &st->slots[i];
        if (!s->started) {
            s->level = 0.0;
            continue;
        }
        const float *x = render_slot(st, s, n);
        s->level = accumulate(mix, ramp_apply(&s->ramp, x, st->sbuf, n), n);
    }
    ramp_apply(&st->master, mix, mix, n);
    limit(&st->lim, out, n);
    st->tel.frame += n;
}

static void tap(rt_state *st, const float *out, int64_t n) {
    if (st->tap_left == 0) return;
    const int64_t k = st->tap_left < 0 ? n : mn(n, st->tap_left);
    const int64_t w = st->tp.w, r = ld_acq(&st->tp.r), cap = st->tp.cap;
    if (cap - (w - r) < k) {
        st->tel.tap_overflows++;  /* the writer thread fell behind: this block is lost, and counted */
    } else {
        const int64_t at = w % cap, first = mn(k, cap - at);
        memcpy(st->tap + 2 * at, out, (size_t)first * 2 * sizeof(float));
        if (k > first) memcpy(st->tap, out + 2 * first, (size_t)(k - first) * 2 * sizeof(float));
        st_rel(&st->tp.w, w + k);
        st->tel.tap_frames += k;
    }
    if (st->tap_left > 0) st->tap_left -= k;
    st->tel.tapping = st->tap_left != 0;
}

static void publish(rt_state *st) {
    rt_telemetry *t = &st->tel;
    for (int i = 0; i < st->nslots; i++) {
        const rt_slot *s = &st->slots[i];
        rt_slot_info *o = &t->slots[i];
        const int32_t playing = s->fading ? s->inc : s->cur;
        const int64_t pos = s->fading ? s->inc_pos : s->cur_pos;
        o->started = s->started;
        o->q_count = s->q_count;
        o->queued_frames = s->queued_frames;
        o->buffered_frames = (playing >= 0 ? st->clip_frames[playing] - pos : 0) + s->queued_frames;
        o->position = playing >= 0 ? pos : 0;
        o->pushes = s->pushes;
        o->flushes = s->flushes;
        o->starvations = s->starvations;
        o->transitions = s->transitions;
        o->nexts_ignored = s->nexts_ignored;
        o->amp = s->amp;
        o->level = s->level;
    }
    t->limiter_db = st->lim.reducing;
}

/* The next `frames` frames of output into out (frames x 2 float32, interleaved): apply the commands
 * waiting, then render, splitting at timed commands (each lands on its exact frame) and at
 * max_block; tap; publish the telemetry. The device callback and offline renders both call this. */
void rt_process(rt_state *st, float *out, int64_t frames) {
    rt_cmd c;
    for (int i = 0; i < RT_MAX_CMDS_PER_BLOCK; i++) {
        const int64_t r = st->cmd.r;
        if (r == ld_acq(&st->cmd.w)) break;
        c = st->cmds[r % st->cmd.cap];
        st_rel(&st->cmd.r, r + 1);
        apply(st, &c);
    }
    int64_t pos = 0;
    while (pos < frames) {
        const int64_t end = mn(frames, pos + st->max_block);
        const int64_t r = st->tim.r;
        if (r != ld_acq(&st->tim.w)) {
            const rt_cmd *t = &st->timed[r % st->tim.cap];
            if (t->frame < st->tel.frame + (end - pos)) {
                const int64_t at = pos + mx(0, t->frame - st->tel.frame);
                if (at > pos) {
                    render(st, out + 2 * pos, (int)(at - pos));
                    pos = at;
                }
                c = *t;
                st_rel(&st->tim.r, r + 1);
                apply(st, &c);
                continue;
            }
        }
        render(st, out + 2 * pos, (int)(end - pos));
        pos = end;
    }
    tap(st, out, frames);
    publish(st);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* PortAudio's stream callback (PaStreamCallback): float32, 2 channels, interleaved. */
int rt_callback(const void *input, void *output, unsigned long frames, const void *time_info,
                unsigned long status, void *user) {
    (void)input;
    (void)time_info;
    rt_state *st = (rt_state *)user;
    const int64_t t0 = now_ns(), frame = st->tel.frame;
#ifdef __linux__
    if (st->tel.audio_tid == 0) st->tel.audio_tid = (int32_t)syscall(SYS_gettid);  /* once: for diagnostics */
#endif
    if (status & RT_PA_OUTPUT_UNDERFLOW) st->tel.underflows++;
    rt_process(st, (float *)output, (int64_t)frames);
    const int64_t dt = now_ns() - t0;
    rt_callback_info *log = &st->tel.callback_log[st->tel.callbacks % RT_TIMINGS];
    log->start_ns = t0;
    log->frame = frame;
    log->ns = (uint32_t)(dt < 0xffffffffLL ? dt : 0xffffffffLL);
    log->status = (uint32_t)status;
    if (dt > st->tel.callback_max_ns) st->tel.callback_max_ns = dt;
    __atomic_store_n(&st->tel.callbacks, st->tel.callbacks + 1, __ATOMIC_RELEASE);  /* after its entry */
    return 0;  /* paContinue */
}

/* -- control side -------------------------------------------------------------------------------- */
/* Queue a command: 1, or 0 when its ring is full (nothing queued: the caller retries or reports). */
int rt_send(rt_state *st, int64_t frame, int32_t op, int32_t slot, double value, int64_t glide, int32_t clip) {
    rt_pos *p = frame >= 0 ? &st->tim : &st->cmd;
    rt_cmd *ring = frame >= 0 ? st->timed : st->cmds;
    const int64_t w = p->w;
    if (w - ld_acq(&p->r) >= p->cap) return 0;
    rt_cmd *c = &ring[w % p->cap];
    c->frame = frame;
    c->glide = glide;
    c->value = value;
    c->op = op;
    c->slot = slot;
    c->clip = clip;
    c->unused = 0;
    st_rel(&p->w, w + 1);
    return 1;
}

/* Register a clip's buffer under an id the control side owns until rt_returned gives it back. */
void rt_clip_set(rt_state *st, int32_t id, const float *data, int64_t frames) {
    if (id < 0 || id >= st->nclips) return;
    st->clip_data[id] = data;
    st->clip_frames[id] = frames;  /* published by the RT_PUSH command's release store */
}

/* Clip ids the audio thread is done with (at most cap): their buffers may be freed now. */
int rt_returned(rt_state *st, int32_t *ids, int cap) {
    const int64_t w = ld_acq(&st->ret.w);
    int64_t r = st->ret.r;
    int n = 0;
    while (r < w && n < cap) ids[n++] = st->rets[r++ % st->ret.cap];
    st_rel(&st->ret.r, r);
    return n;
}

/* Take the oldest waiting next-block command instead of the audio thread (tests look at what was
 * sent; only while no stream runs). 0: none. */
int rt_take_command(rt_state *st, rt_cmd *out) {
    const int64_t r = st->cmd.r;
    if (r == ld_acq(&st->cmd.w)) return 0;
    *out = st->cmds[r % st->cmd.cap];
    st_rel(&st->cmd.r, r + 1);
    return 1;
}

/* -- recorder ------------------------------------------------------------------------------------ */
/* Copy up to max_frames tapped frames to dst (x 2 floats); returns how many. */
int64_t rt_tap_read(rt_state *st, float *dst, int64_t max_frames) {
    const int64_t w = ld_acq(&st->tp.w), r = st->tp.r, cap = st->tp.cap;
    const int64_t n = mn(w - r, max_frames);
    if (n <= 0) return 0;
    const int64_t at = r % cap, first = mn(n, cap - at);
    memcpy(dst, st->tap + 2 * at, (size_t)first * 2 * sizeof(float));
    if (n > first) memcpy(dst + 2 * first, st->tap, (size_t)(n - first) * 2 * sizeof(float));
    st_rel(&st->tp.r, r + n);
    return n;
}

/* Drop whatever waits in the tap ring (a new recording starts clean). */
void rt_tap_discard(rt_state *st) { st_rel(&st->tp.r, ld_acq(&st->tp.w)); }

/* -- life ---------------------------------------------------------------------------------------- */
/* Write a byte on every page, so the kernel maps them now and the audio thread never takes a page
 * fault on first use (calloc may hand out pages not yet mapped; volatile keeps the stores). */
static void prefault(void *p, size_t bytes) {
    volatile char *c = (volatile char *)p;
    for (size_t i = 0; i < bytes; i += 4096) c[i] = 0;
    if (bytes) c[bytes - 1] = 0;
}

void rt_free(rt_state *st) {
    if (st == NULL) return;
    free(st->clip_data);
    free(st->clip_frames);
    free(st->cmds);
    free(st->timed);
    free(st->rets);
    free(st->tap);
    free(st->sbuf);
    free(st->gin);
    free(st->gout);
    free(st->queues);
    free(st->lim.delay);
    free(st->lim.need);
    free(st->lim.env);
    free(st);
}

const rt_telemetry *rt_info(const rt_state *st) { return &st->tel; }

rt_state *rt_new(int nslots, int q_cap, int max_block, int stagger, int64_t xfade, int curve,
                 int64_t autolevel_glide, int lookahead, double ceiling_db, double release_db_per_sample,
                 int cmd_cap, int nclips, int64_t tap_frames) {
    if (nslots < 1 || nslots > RT_MAX_SLOTS || q_cap < 1 || max_block < 1 || lookahead < 1 || cmd_cap < 1
        || nclips < 1 || tap_frames < 1 || xfade < 1)
        return NULL;
    rt_state *st = calloc(1, sizeof(rt_state));
    if (st == NULL) return NULL;
    st->nslots = nslots;
    st->q_cap = q_cap;
    st->max_block = max_block;
    st->stagger = stagger;
    st->xfade_samples = xfade;
    st->curve = curve;
    st->autolevel = 1;
    st->autolevel_glide = autolevel_glide;
    st->master_amp = 1.0;
    st->morph_x = st->morph_y = 0.5;
    ramp_init(&st->master, 1.0);
    st->nclips = nclips;
    st->clip_data = calloc((size_t)nclips, sizeof(float *));
    st->clip_frames = calloc((size_t)nclips, sizeof(int64_t));
    st->cmds = calloc((size_t)cmd_cap, sizeof(rt_cmd));
    st->timed = calloc((size_t)cmd_cap, sizeof(rt_cmd));
    st->cmd.cap = st->tim.cap = cmd_cap;
    st->rets = calloc((size_t)nclips, sizeof(int32_t));
    st->ret.cap = nclips;  /* every id fits: the way back is never full */
    st->tap = calloc((size_t)tap_frames * 2, sizeof(float));
    st->tp.cap = tap_frames;
    st->sbuf = calloc((size_t)max_block * 2, sizeof(float));
    st->gin = calloc((size_t)max_block, sizeof(double));
    st->gout = calloc((size_t)max_block, sizeof(double));
    st->queues = calloc((size_t)nslots * (size_t)q_cap, sizeof(int32_t));
    rt_limiter *lm = &st->lim;
    lm->L = lookahead;
    lm->delay = calloc((size_t)(lookahead + max_block) * 2, sizeof(float));
    lm->need = calloc((size_t)lookahead + 1, sizeof(double));
    lm->env = calloc((size_t)lookahead, sizeof(double));
    if (!st->clip_data || !st->clip_frames || !st->cmds || !st->timed || !st->rets || !st->tap || !st->sbuf
        || !st->gin || !st->gout || !st->queues || !lm->delay || !lm->need || !lm->env) {
        rt_free(st);
        return NULL;
    }
    prefault(st, sizeof(rt_state));
    prefault(st->clip_data, (size_t)nclips * sizeof(float *));
    prefault(st->clip_frames, (size_t)nclips * sizeof(int64_t));
    prefault(st->cmds, (size_t)cmd_cap * sizeof(rt_cmd));
    prefault(st->timed, (size_t)cmd_cap * sizeof(rt_cmd));
    prefault(st->rets, (size_t)nclips * sizeof(int32_t));
    prefault(st->tap, (size_t)tap_frames * 2 * sizeof(float));
    prefault(st->sbuf, (size_t)max_block * 2 * sizeof(float));
    prefault(st->gin, (size_t)max_block * sizeof(double));
    prefault(st->gout, (size_t)max_block * sizeof(double));
    prefault(st->queues, (size_t)nslots * (size_t)q_cap * sizeof(int32_t));
    prefault(lm->delay, (size_t)(lookahead + max_block) * 2 * sizeof(float));
    prefault(lm->need, ((size_t)lookahead + 1) * sizeof(double));
    prefault(lm->env, (size_t)lookahead * sizeof(double));
    for (int i = 0; i < nslots; i++) {
        rt_slot *s = &st->slots[i];
        s->queue = st->queues + (size_t)i * (size_t)q_cap;
        s->cur = s->inc = -1;
        s->gain = s->amp = 1.0;
        s->rate = 1.0;
        s->fade_total = 1;
        ramp_init(&s->ramp, 1.0);
    }
    lm->ceiling_db = ceiling_db;
    lm->ceiling = pow(10.0, ceiling_db / 20.0);
    lm->ceil_f = (float)lm->ceiling;
    lm->quiet_f = (float)(lm->ceiling * (1.0 - 1e-6));
    lm->release = release_db_per_sample;
    lm->gscale = -1.0 / (20.0 * lookahead);
    lm->quiet_run = lookahead;  /* the history starts as silence */
    lm->env_zero_run = lookahead;
    st->tel.nslots = nslots;
    st->tel.lookahead = lookahead;
    publish(st);
    return st;
}
