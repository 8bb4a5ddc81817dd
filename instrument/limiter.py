"""A look-ahead safety limiter: the numpy core's (the C core runs the same method in mixcore.c).

The output never exceeds the ceiling (default -1 dBFS). It is transparent below the ceiling: the
gain is exactly 1 until a peak would cross it. Attack is a linear-in-dB ramp across the
look-ahead window, so gain changes are smooth; release is a slow linear-in-dB recovery so normal
material does not pump.

How (all vectorised per block, block-size independent up to float rounding):
  need[n]  = max(0, peak_db(x[n]) - ceiling_db)            gain reduction a sample needs
  hold[n]  = max(need[n-L .. n])                            so the reduction covers the look-ahead
  env[n]   = max(hold[n], env[n-1] - release_db_per_sample) recursive release, done as a
             running maximum in a drifting frame (np.maximum.accumulate)
  gr[n]    = mean(env[n-L+1 .. n])                          attack ramp over L samples
  y[n]     = x[n-L] * 10^(-gr[n]/20)                        the signal is delayed by L
Since hold covers the L samples around a peak, gr has reached it when the peak leaves the delay.

While nothing comes near the ceiling (every sample of the block and of the delay line at or below
`quiet`, a hair under it) and nothing is reducing, the gain is exactly 1: the output is then the
delayed input, copied without the arithmetic above (bit-identical to what it would compute).
The C core (mixcore.c) runs the same method sample by sample, with the same look-ahead and release.
"""

from __future__ import annotations

import numpy as np

# 0.25 ms (11 samples at 44.1 kHz): every control reaches the output this much later, so it is kept
# short (a safety limiter that rarely works; a longer look-ahead, `--lookahead`, attacks more gently)
LOOKAHEAD_S = 0.00025
RELEASE_DB_PER_S = 20.0
QUIET = 1.0 - 1e-6  # of the ceiling: at or below, no sample needs reduction (whatever the rounding)


def lookahead_samples(sample_rate: int, lookahead_s: float = LOOKAHEAD_S) -> int:
    return max(1, int(round(lookahead_s * sample_rate)))


class Limiter:
    def __init__(self, sample_rate: int, max_block: int, channels: int = 2, ceiling_db: float = -1.0,
                 lookahead_s: float = LOOKAHEAD_S, release_db_per_s: float = RELEASE_DB_PER_S) -> None:
        self.ceiling_db = ceiling_db
        self.ceiling = 10.0 ** (ceiling_db / 20.0)
        self.quiet = self.ceiling * QUIET
        self.L = lookahead_samples(sample_rate, lookahead_s)
        self.release = release_db_per_s / sample_rate
        L, n = self.L, max_block
        self._delay = np.zeros((L + n, channels), np.float32)  # x history: L old samples + block
        self._need = np.zeros(L + n, np.float64)  # need history (L) + block
        self._win = np.lib.stride_tricks.sliding_window_view(self._need, L + 1)  # hold windows, built once
        self._env_hist = np.zeros(L + n, np.float64)  # env history (L) + block, for the mean
        self._env_last = 0.0
        self._idle = True  # gain exactly 1 and the delay line quiet: the fast path applies
        self._absL = np.empty((L, channels), np.float32)
        self._peak = np.empty(n, np.float32)
        self._h = np.empty(n, np.float64)
        self._ramp = np.arange(1, n + 1, dtype=np.float64) * self.release
        self._csum = np.empty(L + n + 1, np.float64)
        self._gain = np.empty(n, np.float64)
        self.reducing = 0.0  # current gain reduction in dB (read by the control side)

    @property
    def latency(self) -> int:
        """Delay in samples added by the look-ahead."""
        return self.L

    def process(self, x: np.ndarray) -> None:
        """Limit `x` (frames, channels) float32 in place; output is delayed by `latency` samples."""
        n, L = x.shape[0], self.L
        if n == 0:
            return
        d = self._delay
        d[L:L + n] = x
        peak = self._peak[:n]
        np.abs(x, out=x)  # x is scratch now; its content lives in d
        if x.shape[1] == 2:
            np.maximum(x[:, 0], x[:, 1], out=peak)
        else:
            np.max(x, axis=1, out=peak)
        if self._idle and float(peak.max()) <= self.quiet:
            # no need in the block or its history, no envelope: gain 1, the delayed signal unchanged
            x[:] = d[:n]
            d[:L] = d[n:n + L]
            self.reducing = 0.0
            return
        self._idle = False
        # need[n] in dB, written after the L samples of history
        need = self._need[L:L + n]
        np.maximum(peak, 1e-12, out=peak)
        np.log10(peak, out=need)
        need *= 20.0
        need -= self.ceiling_db
        np.maximum(need, 0.0, out=need)
        # hold: sliding max over the last L+1 needs (window ending at each sample)
        h = self._h[:n]
        np.max(self._win[:n], axis=1, out=h)
        # env: recursive release as a running max in a frame drifting at the release slope
        r = self._ramp[:n]
        h += r
        np.maximum.accumulate(h, out=h)
        h -= r
        np.maximum(h, self._env_last - r, out=h)
        eh = self._env_hist
        eh[L:L + n] = h
        self._env_last = float(h[-1])
        # attack: mean over the last L envelope samples (cumulative-sum difference)
        cs = self._csum[:L + n + 1]
        cs[0] = 0.0
        np.cumsum(eh[:L + n], out=cs[1:])
        g = self._gain[:n]
        np.subtract(cs[L + 1:L + n + 1], cs[1:n + 1], out=g)
        g *= -1.0 / (20.0 * L)
        np.power(10.0, g, out=g)
        self.reducing = max(0.0, -20.0 * float(np.log10(g[-1]))) if g[-1] > 0 else 0.0
        # output: the delayed signal times the gain, with a hard ceiling against rounding
        np.multiply(d[:n], g[:, None], out=x, casting="same_kind")
        np.minimum(x, self.ceiling, out=x)
        np.maximum(x, -self.ceiling, out=x)
        # shift histories
        d[:L] = d[n:n + L]
        self._need[:L] = self._need[n:n + L]
        eh[:L] = eh[n:n + L]
        # back to the fast path once the histories are zero and the delay line is quiet
        if self._env_last == 0.0 and not self._need[:L].any() and not eh[:L].any():
            self._idle = float(np.abs(d[:L], out=self._absL).max()) <= self.quiet
