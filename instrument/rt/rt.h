/* The audio thread's interface: command, clip and telemetry structs and the functions around them.
 *
 * Everything between the cdef markers is read by _build.py as the cffi declaration, so it stays
 * plain C that cffi parses: integer #defines, typedefs and prototypes only.
 *
 * Threads: the control side (one producer at a time: the engine's lock) calls rt_send,
 * rt_clip_set and rt_returned; the recorder's writer thread calls rt_tap_read and rt_tap_discard;
 * the audio thread (PortAudio calling rt_callback, or an offline render calling rt_process) does
 * the rest. They share only the lock-free rings inside rt_state and the telemetry struct, which
 * the audio thread writes after every block and anyone may read.
 */
#ifndef ENDLESS_RT_H
#define ENDLESS_RT_H
#include <stdint.h>

/* cdef-begin */
#define RT_VERSION 3         /* rt/mixer.py's CORE_VERSION: bump with any change below */
#define RT_MAX_SLOTS 16
#define RT_TIMINGS 8192      /* callbacks logged (a ring: 47 s of 256-frame blocks at 44.1 kHz) */

/* Opcodes of rt_cmd.op */
#define RT_GAIN 0            /* slot: fader amplitude (linear) */
#define RT_PAN 1             /* slot: -1 .. 1 */
#define RT_MUTE 2            /* slot: 0/1 */
#define RT_SOLO 3            /* slot: 0/1 */
#define RT_NEXT 4            /* slot: crossfade to the next queued clip now (mid-fade: when it ends) */
#define RT_FLUSH 5           /* slot: drop the queued clips (the playing one plays on) */
#define RT_PUSH 6            /* slot: queue clip `clip` (registered with rt_clip_set) */
#define RT_MASTER 7          /* master amplitude (linear, before autolevel) */
#define RT_XFADE 8           /* crossfade length in samples; fades in progress are re-timed */
#define RT_CURVE 9           /* 0 equal_power, 1 sin2 (fades in progress keep theirs) */
#define RT_AUTOLEVEL 10      /* 0/1 */
#define RT_MORPH_MODE 11     /* 0 off, 1 line, 2 xy */
#define RT_MORPH_POS 12
#define RT_MORPH_X 13
#define RT_MORPH_Y 14
#define RT_TAP 15            /* recorder tap: value frames to copy to the tap ring (-1: until 0) */

typedef struct {
    int64_t frame;           /* >= 0: apply at this output frame (timed ring, in frame order); -1: next block */
    int64_t glide;           /* samples over which a gain-like change glides */
    double value;
    int32_t op;
    int32_t slot;            /* -1: not a slot's */
    int32_t clip;            /* RT_PUSH: clip id */
    int32_t unused;
} rt_cmd;

typedef struct {
    int32_t started;         /* has played its first clip */
    int32_t q_count;         /* clips queued behind what plays */
    int64_t queued_frames;
    int64_t buffered_frames; /* the rest of what plays plus the queue */
    int64_t position;        /* frame within the playing (or incoming) clip */
    int64_t pushes;          /* RT_PUSH applied (queued or dropped) */
    int64_t flushes;         /* RT_FLUSH applied */
    int64_t starvations;     /* transitions with an empty queue: the clip crossfaded into itself */
    int64_t transitions;
    int64_t nexts_ignored;
    double amp;              /* fader x mute/solo x morph, before pan */
    double level;            /* RMS of the last block, after gain */
} rt_slot_info;

typedef struct {
    int64_t start_ns;        /* CLOCK_MONOTONIC when the callback began (Python: time.monotonic_ns) */
    int64_t frame;           /* the output frame its block starts at */
    uint32_t ns;             /* how long it ran */
    uint32_t status;         /* PortAudio's flags (0x4: output underflow) */
} rt_callback_info;

typedef struct {
    int64_t frame;           /* output frames produced */
    int64_t callbacks;       /* device callbacks run */
    int64_t underflows;      /* callbacks PortAudio flagged with an output underflow */
    int64_t callback_max_ns;
    int64_t clips_dropped;   /* pushes a full slot queue refused (the clip comes back) */
    int64_t commands;        /* commands applied */
    int64_t returns_lost;    /* clip ids the return ring could not take (0 by construction) */
    int64_t tap_frames;      /* frames written to the tap ring */
    int64_t tap_overflows;   /* blocks the tap ring had no room for (dropped, counted) */
    int32_t tapping;         /* the tap is on */
    int32_t nslots;
    int32_t lookahead;       /* the limiter's delay in samples */
    int32_t audio_tid;       /* Linux: the thread id of the device callback (0: none yet, or not Linux) */
    double limiter_db;       /* the limiter's gain reduction now */
    rt_slot_info slots[RT_MAX_SLOTS];
    rt_callback_info callback_log[RT_TIMINGS];  /* callback k at k % RT_TIMINGS */
} rt_telemetry;

typedef struct rt_state rt_state;

rt_state *rt_new(int nslots, int q_cap, int max_block, int stagger, int64_t xfade, int curve,
                 int64_t autolevel_glide, int lookahead, double ceiling_db, double release_db_per_sample,
                 int cmd_cap, int nclips, int64_t tap_frames);
void rt_free(rt_state *st);
const rt_telemetry *rt_info(const rt_state *st);

/* control side */
int rt_send(rt_state *st, int64_t frame, int32_t op, int32_t slot, double value, int64_t glide, int32_t clip);
void rt_clip_set(rt_state *st, int32_t id, const float *data, int64_t frames);
int rt_returned(rt_state *st, int32_t *ids, int cap);
int rt_take_command(rt_state *st, rt_cmd *out);

/* recorder */
int64_t rt_tap_read(rt_state *st, float *dst, int64_t max_frames);
void rt_tap_discard(rt_state *st);

/* audio thread */
void rt_process(rt_state *st, float *out, int64_t frames);
int rt_callback(const void *input, void *output, unsigned long frames, const void *time_info,
                unsigned long status, void *user);
/* cdef-end */

#endif
