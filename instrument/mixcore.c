/* The mixer's audio-thread core: one call renders a whole (sub-)block.
 *
 * The same state machine as the numpy path in mixer.py (_NumpyMixer), moved into C so that a
 * block costs one call instead of ~20 numpy calls per slot: slot queues of clip ids, crossfades
 * (anchor/rate/fade_k/fade_total/curve), starvation (a clip crossfades into its own start), the
 * deferred `next`, the staggered fade-in start, per-slot and master linear gain ramps, slot levels,
 * and the look-ahead limiter. Python (mixer._CMixer) keeps the command rings, applies commands
 * through the small mc_* functions below, holds the references to the clip arrays whose pointers
 * live here, and hands retired clips back to the control side.
 *
 * Audio-thread rules: mc_new allocates everything; nothing else allocates, locks, or does I/O.
 *
 * Block-size independence: every ramp and fade value is a function of integer sample counts
 * since the ramp or fade began (never accumulated across blocks), and the limiter runs sample by
 * sample on state that does not depend on where a block starts, so rendering block by block
 * equals rendering the whole buffer, bit for bit. Build with -ffp-contract=off so that a*b+c
 * stays two roundings everywhere, and without -ffast-math (-fno-trapping-math and
 * -fno-math-errno change no result). Against the numpy core the output agrees to float rounding
 * (the fade gains come from a different sin/cos; the limiter's envelope runs per sample).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MC_VERSION 2  /* mixer.py's _CORE_VERSION: bump with any change to the API below */
#define MC_MAX_SLOTS 16
#define MC_HALF_PI 1.5707963267948966

/* A per-channel linear glide from `start` to `target` over S samples; k samples done. */
typedef struct {
    double start[2], target[2], delta[2];
    int64_t S, k;
} mc_ramp;

typedef struct {
    int32_t *queue;               /* ring of clip ids, q_cap long */
    int32_t q_head, q_count;
    int64_t queued_frames;
    int32_t cur, inc;             /* clip ids; -1: none */
    int64_t cur_pos, inc_pos;
    int32_t fading, started, next_pending, fade_curve;
    double anchor, rate;          /* fade phase at sample fade_k (1-based): anchor + rate * k */
    int64_t fade_k, fade_total;
    mc_ramp ramp;
    double amp;                   /* fader x mute/solo x morph, before pan (set by Python) */
    double level;                 /* RMS of the last block, after gain */
    int64_t starvations, transitions, nexts_ignored;
} mc_slot;

typedef struct {
    int32_t L;                    /* look-ahead (and delay) in samples */
    double ceiling_db, ceiling, release, gscale, reducing, env_last;
    float ceil_f, quiet_f;        /* |x| <= quiet_f: needs no reduction, and passes the clip */
    float *delay;                 /* (L + max_block) x 2: L frames of history, then the block */
    double *need;                 /* ring of the last L + 1 needs (dB) */
    double *env;                  /* ring of the last L envelope values (dB) */
    int32_t npos, epos;
    int64_t quiet_run, env_zero_run;  /* trailing samples that were quiet / had env == 0 */
} mc_limiter;

#define MC_CHUNK 256   /* fade samples per rotation chunk */
#define MC_TABLES 4    /* rotation tables kept (one per fade rate in use) */

typedef struct {
    double rate;
    uint64_t used;
    double c[MC_CHUNK], s[MC_CHUNK];  /* cos and sin of p * rate * pi/2 */
} mc_rot;

typedef struct {
    int32_t nslots, q_cap, max_block, stagger, curve, autolevel;
    int64_t xfade_samples, autolevel_glide;
    double master_amp;            /* the master fader's amplitude (before autolevel) */
    mc_ramp master;
    mc_slot slots[MC_MAX_SLOTS];
    int32_t nclips;               /* clip ids 0..nclips-1 */
    const float **clip_data;      /* (frames, 2) float32, C-contiguous; Python keeps them alive */
    int64_t *clip_frames;
    int32_t *free_ids;
    int32_t n_free;
    int32_t *retired;             /* ids the audio thread is done with; Python drains after each call */
    int32_t n_retired, retired_cap;
    int64_t retired_lost;         /* ids freed without being reported (the list was full) */
    float *sbuf;                  /* one slot's block */
    double *gin, *gout;           /* crossfade gains of one sub-block */
    int32_t *queues;
    mc_rot rot[MC_TABLES];
    uint64_t rot_clock;
    mc_limiter lim;
} mc_state;

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
    return (u < 1.0 ? u : 1.0) * MC_HALF_PI;
}

/* Crossfade gains come from rotations: a fade's samples are cut into chunks of MC_CHUNK on a grid
 * fixed by the fade itself (not by blocks); sin/cos of a chunk's first phase come from the full
 * series and each later sample rotates them by p steps of the fade's rate, read from a table that
 * every fade at that rate shares. Every value depends only on the sample's index in its fade, hence
 * block-size independence, at a few flops per sample. */
static const mc_rot *rotation(mc_state *st, double rate) {
    mc_rot *lru = &st->rot[0];
    for (int i = 0; i < MC_TABLES; i++) {
        mc_rot *r = &st->rot[i];
        if (r->rate == rate) {
            r->used = ++st->rot_clock;
            return r;
        }
        if (r->used < lru->used) lru = r;
    }
    /* a rate not seen lately (an xfade change, a short clip): one table, MC_CHUNK series */
    lru->rate = rate;
    lru->used = ++st->rot_clock;
    const double step = rate * MC_HALF_PI;
    for (int p = 0; p < MC_CHUNK; p++) {
        const double a = (double)p * step;
        qsincos(a < MC_HALF_PI ? a : MC_HALF_PI, &lru->s[p], &lru->c[p]);  /* past pi/2: never read */
    }
    return lru;
}

/* gi = sin(theta), go = cos(theta) for the fade's samples m0+1 .. m0+k. */
static void fade_gains(mc_state *st, double *restrict gi, double *restrict go, int64_t m0, int k, double rate,
                       double anchor) {
    const mc_rot *R = rotation(st, rate);
    double s1, c1;
    qsincos(MC_HALF_PI, &s1, &c1);
    int j = 0;
    while (j < k) {
        const int64_t m = m0 + j + 1, p0 = (m - 1) % MC_CHUNK;
        const int e = (int)mn(k, j + (MC_CHUNK - p0));
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
static void ramp_init(mc_ramp *r, double v) {
    r->start[0] = r->start[1] = r->target[0] = r->target[1] = v;
    r->delta[0] = r->delta[1] = 0.0;
    r->S = 1;
    r->k = 1;
}

static double ramp_now(const mc_ramp *r, int c) {
    double f = (double)r->k / (double)r->S;
    if (f > 1.0) f = 1.0;
    return r->start[c] + r->delta[c] * f;
}

/* Centre pan gives 1.0000000000000002: snap it, so unity gain is a no-op. */
static double snap1(double v) { return fabs(v - 1.0) < 1e-9 ? 1.0 : v; }

static void ramp_set(mc_ramp *r, double left, double right, int64_t samples) {
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
static const float *ramp_apply(mc_ramp *r, const float *x, float *y, int n) {
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
static int64_t nominal_fade(const mc_state *st, int64_t frames) {
    return mx(1, mn(st->xfade_samples, frames / 2));
}

static int32_t pop(mc_state *st, mc_slot *s) {
    if (s->q_count == 0) return -1;
    const int32_t id = s->queue[s->q_head];
    s->q_head = (s->q_head + 1) % st->q_cap;
    s->q_count--;
    s->queued_frames -= st->clip_frames[id];
    return id;
}

static void retire(mc_state *st, int32_t id) {
    st->clip_data[id] = NULL;
    st->free_ids[st->n_free++] = id;
    if (st->n_retired < st->retired_cap)
        st->retired[st->n_retired++] = id;
    else
        st->retired_lost++;
}

static void begin_fade(mc_state *st, mc_slot *s, int64_t samples) {
    s->fading = 1;
    s->anchor = 0.0;
    s->rate = 1.0 / (double)samples;
    s->fade_k = 0;
    s->fade_total = samples;
    s->fade_curve = st->curve;
}

static int transition(mc_state *st, mc_slot *s, int forced) {
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

/* The master's autolevel target, as Python's _update_gains computes it, after a slot starts. */
static void autolevel(mc_state *st) {
    double power = 0.0;
    for (int i = 0; i < st->nslots; i++) {
        const mc_slot *s = &st->slots[i];
        if (!s->started) continue;
        const double a = s->amp < 1.0 ? s->amp : 1.0;
        power += a * a;
    }
    double m = st->master_amp;
    if (st->autolevel) m /= sqrt(power > 1.0 ? power : 1.0);
    ramp_set(&st->master, m, m, st->autolevel_glide);
}

static void start_slot(mc_state *st, int i) {
    mc_slot *s = &st->slots[i];
    const int32_t clip = pop(st, s);
    const int64_t frames = st->clip_frames[clip], f = nominal_fade(st, frames);
    int64_t offset = 0;
    if (st->stagger) offset = (int64_t)((double)i / (double)st->nslots * (double)mx(0, frames - 2 * f));
    s->cur = -1;
    s->inc = clip;
    s->inc_pos = offset;
    begin_fade(st, s, f);
    s->started = 1;
    autolevel(st);
}

/* -- rendering ----------------------------------------------------------------------------------- */
static int render_fade(mc_state *st, mc_slot *s, float *out, int done, int n) {
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
static const float *render_slot(mc_state *st, mc_slot *s, int n) {
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

/* -- limiter (see limiter.py for the method) ----------------------------------------------------- */
static void limit(mc_limiter *lm, float *out, int n) {
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

/* -- API ----------------------------------------------------------------------------------------- */
void mc_free(mc_state *st) {
    if (st == NULL) return;
    free(st->clip_data);
    free(st->clip_frames);
    free(st->free_ids);
    free(st->retired);
    free(st->sbuf);
    free(st->gin);
    free(st->gout);
    free(st->queues);
    free(st->lim.delay);
    free(st->lim.need);
    free(st->lim.env);
    free(st);
}

mc_state *mc_new(int nslots, int q_cap, int max_block, int stagger, int64_t xfade_samples, int curve,
                 int64_t autolevel_glide, int lookahead, double ceiling_db, double release) {
    if (nslots < 1 || nslots > MC_MAX_SLOTS || q_cap < 0 || max_block < 1 || lookahead < 1) return NULL;
    mc_state *st = calloc(1, sizeof(mc_state));
    if (st == NULL) return NULL;
    st->nslots = nslots;
    st->q_cap = q_cap;
    st->max_block = max_block;
    st->stagger = stagger;
    st->xfade_samples = xfade_samples;
    st->curve = curve;
    st->autolevel = 1;
    st->autolevel_glide = autolevel_glide;
    st->master_amp = 1.0;
    ramp_init(&st->master, 1.0);
    st->nclips = nslots * (q_cap + 2);  /* a slot holds at most its queue, `cur` and `inc` */
    st->retired_cap = st->nclips;
    st->clip_data = calloc((size_t)st->nclips, sizeof(float *));
    st->clip_frames = calloc((size_t)st->nclips, sizeof(int64_t));
    st->free_ids = calloc((size_t)st->nclips, sizeof(int32_t));
    st->retired = calloc((size_t)st->retired_cap, sizeof(int32_t));
    st->sbuf = calloc((size_t)max_block * 2, sizeof(float));
    st->gin = calloc((size_t)max_block, sizeof(double));
    st->gout = calloc((size_t)max_block, sizeof(double));
    st->queues = calloc((size_t)nslots * (q_cap > 0 ? q_cap : 1), sizeof(int32_t));
    mc_limiter *lm = &st->lim;
    lm->L = lookahead;
    lm->delay = calloc((size_t)(lookahead + max_block) * 2, sizeof(float));
    lm->need = calloc((size_t)lookahead + 1, sizeof(double));
    lm->env = calloc((size_t)lookahead, sizeof(double));
    if (!st->clip_data || !st->clip_frames || !st->free_ids || !st->retired || !st->sbuf || !st->gin
        || !st->gout || !st->queues || !lm->delay || !lm->need || !lm->env) {
        mc_free(st);
        return NULL;
    }
    for (int32_t i = 0; i < st->nclips; i++) st->free_ids[i] = st->nclips - 1 - i;
    st->n_free = st->nclips;
    for (int i = 0; i < nslots; i++) {
        mc_slot *s = &st->slots[i];
        s->queue = st->queues + (size_t)i * q_cap;
        s->cur = s->inc = -1;
        s->amp = 1.0;
        s->rate = 1.0;
        s->fade_total = 1;
        ramp_init(&s->ramp, 1.0);
    }
    lm->ceiling_db = ceiling_db;
    lm->ceiling = pow(10.0, ceiling_db / 20.0);
    lm->ceil_f = (float)lm->ceiling;
    lm->quiet_f = (float)(lm->ceiling * (1.0 - 1e-6));
    lm->release = release;
    lm->gscale = -1.0 / (20.0 * lookahead);
    lm->quiet_run = lookahead;  /* the history starts as silence */
    lm->env_zero_run = lookahead;
    return st;
}

/* Queue a clip; returns its id, or -1 when the slot's queue is full (nothing changed). */
int mc_push(mc_state *st, int slot, const float *data, int64_t frames) {
    mc_slot *s = &st->slots[slot];
    if (s->q_count == st->q_cap || st->n_free == 0) return -1;
    const int32_t id = st->free_ids[--st->n_free];
    st->clip_data[id] = data;
    st->clip_frames[id] = frames;
    s->queue[(s->q_head + s->q_count) % st->q_cap] = id;
    s->q_count++;
    s->queued_frames += frames;
    return id;
}

void mc_next(mc_state *st, int slot) {
    mc_slot *s = &st->slots[slot];
    if (s->fading && s->cur >= 0)
        s->next_pending = 1;  /* mid-fade: runs when the fade ends */
    else if (s->cur < 0 || !transition(st, s, 1))
        s->nexts_ignored++;
}

void mc_flush(mc_state *st, int slot) {
    mc_slot *s = &st->slots[slot];
    int32_t id;
    while ((id = pop(st, s)) >= 0) retire(st, id);
}

/* A new crossfade length; fades in progress continue from their phase at the new rate, finishing
 * before either clip ends. */
void mc_set_xfade(mc_state *st, int64_t samples) {
    st->xfade_samples = samples;
    for (int i = 0; i < st->nslots; i++) {
        mc_slot *s = &st->slots[i];
        if (!s->fading) continue;
        const double p = s->anchor + s->rate * (double)s->fade_k;
        if (p >= 1.0) continue;
        int64_t limit = st->clip_frames[s->inc] - s->inc_pos;
        if (s->cur >= 0) limit = mn(limit, st->clip_frames[s->cur] - s->cur_pos);
        limit = mx(1, limit);
        double rate = 1.0 / (double)samples;
        if ((1.0 - p) / rate > (double)limit) rate = (1.0 - p) / (double)limit;
        s->anchor = p;
        s->rate = rate;
        s->fade_k = 0;
        s->fade_total = mx(1, mn(limit, (int64_t)ceil((1.0 - p) / rate - 1e-9)));
    }
}

/* Glide a slot's stereo gain (slot -1: the master's) to (left, right) over `samples`. */
void mc_set_ramp(mc_state *st, int slot, double left, double right, int64_t samples) {
    ramp_set(slot < 0 ? &st->master : &st->slots[slot].ramp, left, right, samples);
}

/* Frames of audio ready for a slot: the rest of what plays now plus its queue. */
int64_t mc_buffered(const mc_state *st, int slot) {
    const mc_slot *s = &st->slots[slot];
    const int32_t playing = s->fading ? s->inc : s->cur;
    const int64_t pos = s->fading ? s->inc_pos : s->cur_pos;
    return (playing >= 0 ? st->clip_frames[playing] - pos : 0) + s->queued_frames;
}

/* Render the next n frames of the mix into out (n x 2 float32). Returns how many clip ids wait in
 * `retired` for Python to take back. */
int mc_render(mc_state *st, float *out, int n) {
    while (n > st->max_block) {  /* the caller splits already; this only keeps buffers in bounds */
        mc_render(st, out, st->max_block);
        out += 2 * (ptrdiff_t)st->max_block;
        n -= st->max_block;
    }
    if (n <= 0) return st->n_retired;
    for (int i = 0; i < st->nslots; i++)
        if (!st->slots[i].started && st->slots[i].q_count) start_slot(st, i);
    float *mix = st->lim.delay + 2 * st->lim.L;
    memset(mix, 0, (size_t)n * 2 * sizeof(float));
    for (int i = 0; i < st->nslots; i++) {
        mc_slot *s = &st->slots[i];
        if (!s->started) {
            s->level = 0.0;
            continue;
        }
        const float *x = render_slot(st, s, n);
        s->level = accumulate(mix, ramp_apply(&s->ramp, x, st->sbuf, n), n);
    }
    ramp_apply(&st->master, mix, mix, n);
    limit(&st->lim, out, n);
    return st->n_retired;
}
