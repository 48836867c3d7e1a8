"""Importance sampling of the time step for L_vlb (Nichol & Dhariwal 2021, section 3.3).

Derivations: derivations/importance_sampling.md (I*).

t is drawn with p_t proportional to sqrt(E[L_t^2]), the second moment read from the last ``history`` (10)
losses recorded at each t, mixed with a uniform 0.001 (I1); each draw's term is weighted by 1/(T p_t), so
the batch mean of w T L_t stays an unbiased estimate of the bound's sum over t (I2). Until every t holds its
10 losses, t is uniform with weight 1 (drawn exactly as without importance sampling).

improved-diffusion's LossSecondMomentResampler (resample.py), the same rule; the history is training
state: ``state_dict()`` goes into the checkpoint so that a resumed run draws the same t (bit for bit).
Conventions: t 0-based (paper step t+1), an int64 array (N,).
"""
from __future__ import annotations

import numpy as np

from .errors import InputError, check_T

HISTORY = 10            # losses kept per step (improved-diffusion's history_per_term)
UNIFORM_PROB = 1e-3     # the uniform share of p (improved-diffusion's uniform_prob): p_t >= 1e-3 / T


class ImportanceSampler:
    """p_t from a per-step history of losses (I1) and the unbiasing weights 1/(T p_t) (I2).

    ``history``: (T, HISTORY) float64, the last losses at each t in arrival order; ``counts``: (T,) int64.
    """

    def __init__(self, T, history=HISTORY, uniform_prob=UNIFORM_PROB):
        self.T = check_T(T)
        if isinstance(history, bool) or not isinstance(history, (int, np.integer)) or history < 1:
            raise InputError(f"history (losses kept per step) must be a positive integer, got {history!r}")
        if not (isinstance(uniform_prob, (int, float)) and 0.0 <= uniform_prob <= 1.0):
            raise InputError(f"uniform_prob must be a number in [0, 1], got {uniform_prob!r}")
        self.uniform_prob = float(uniform_prob)
        self.history = np.zeros((self.T, int(history)), dtype=np.float64)
        self.counts = np.zeros(self.T, dtype=np.int64)

    @property
    def warmed_up(self):
        """True once every t holds its full history (before that p is uniform)."""
        return bool(np.all(self.counts == self.history.shape[1]))

    def probabilities(self):
        """(I1) p (T,) float64: uniform until warmed up, then (1 - u) sqrt(m2_t) / sum_s sqrt(m2_s) + u / T."""
        if not self.warmed_up:
            return np.full(self.T, 1.0 / self.T)
        # (I1)  sqrt(E[L_t^2]) from the recorded losses
        root_m2 = np.sqrt(np.mean(self.history**2, axis=1))
        total = root_m2.sum()
        if not total > 0:  # every recorded loss 0: nothing to prefer
            return np.full(self.T, 1.0 / self.T)
        # (I1)  p_t = (1 - u) sqrt(m2_t) / sum_s sqrt(m2_s) + u / T
        return (1.0 - self.uniform_prob) * (root_m2 / total) + self.uniform_prob / self.T

    def weights(self, t):
        """(I2) 1 / (T p_t) for the indices t (N,): the factor that keeps w T L_t unbiased for sum_t L_t."""
        return 1.0 / (self.T * self.probabilities()[np.asarray(t)])

    def sample(self, rng, n):
        """n indices and their weights -> (t int64 (n,), w float64 (n,)) from the np.random.Generator ``rng``.

        Before warm-up: rng.integers(0, T, n) (the draw of uniform training) and w = 1.
        """
        if not self.warmed_up:
            return rng.integers(0, self.T, size=n), np.ones(n)
        p = self.probabilities()
        t = rng.choice(self.T, size=n, p=p)
        # (I2)  w = 1 / (T p_t)
        return t, 1.0 / (self.T * p[t])

    def update(self, t, losses):
        """Record the per-example losses (N,) at their indices t (N,), in order; the oldest goes when full."""
        t, losses = np.asarray(t).reshape(-1), np.asarray(losses, dtype=np.float64).reshape(-1)
        if t.shape != losses.shape:
            raise InputError(f"shape mismatch: {t.size} timesteps but {losses.size} losses")
        if not np.all(np.isfinite(losses)):
            raise InputError("importance sampling: the losses to record hold non-finite values (NaN or inf)")
        if t.size and (t.min() < 0 or t.max() >= self.T):
            raise InputError(f"t out of range: valid indices are 0..{self.T - 1}")
        k = self.history.shape[1]
        for ti, li in zip(t.tolist(), losses.tolist()):
            c = self.counts[ti]
            if c == k:  # full: shift the oldest out
                self.history[ti, :-1] = self.history[ti, 1:]
                self.history[ti, -1] = li
            else:
                self.history[ti, c] = li
                self.counts[ti] = c + 1

    # ---- training state (checkpoint rng/<key> arrays) -----------------------------------------------

    def state_dict(self):
        return {"loss_history": self.history.copy(), "loss_counts": self.counts.copy()}

    def load_state_dict(self, d):
        h, c = np.asarray(d["loss_history"], np.float64), np.asarray(d["loss_counts"], np.int64)
        if h.shape != self.history.shape or c.shape != self.counts.shape:
            raise InputError(f"importance-sampling history of shape {h.shape}, counts {c.shape}: this run keeps "
                             f"{self.history.shape} and {self.counts.shape} (T = {self.T})")
        if np.any(c < 0) or np.any(c > h.shape[1]) or not np.all(np.isfinite(h)):
            raise InputError("importance-sampling history is corrupt (counts outside 0..history or non-finite losses)")
        self.history[...], self.counts[...] = h, c
