"""Importance sampling of the time step for L_vlb, written again in torch. Mirror of reference/resample.py.

Derivations: derivations/importance_sampling.md (I*). p_t proportional to sqrt(E[L_t^2]) over the last 10
losses at each t, mixed with a uniform 0.001 (I1); weights 1/(T p_t) (I2); uniform (torch.randint, weight 1)
until every t holds its history. The history lives on the host in float64 (CPU tensors): recording a batch's
losses reads them from the device, one host sync per step, as improved-diffusion's all_gather of them does.
t is drawn on the generator's device with torch.multinomial from p.
"""
from __future__ import annotations

import numpy as np
import torch

from reference.errors import InputError, check_T

HISTORY = 10            # losses kept per step (improved-diffusion's history_per_term)
UNIFORM_PROB = 1e-3     # the uniform share of p (improved-diffusion's uniform_prob)

__all__ = ["HISTORY", "UNIFORM_PROB", "ImportanceSampler"]


class ImportanceSampler:
    """p_t from a per-step history of losses (I1) and the weights 1/(T p_t) (I2); as the reference's."""

    def __init__(self, T, history=HISTORY, uniform_prob=UNIFORM_PROB):
        self.T = check_T(T)
        if isinstance(history, bool) or not isinstance(history, (int, np.integer)) or history < 1:
            raise InputError(f"history (losses kept per step) must be a positive integer, got {history!r}")
        if not (isinstance(uniform_prob, (int, float)) and 0.0 <= uniform_prob <= 1.0):
            raise InputError(f"uniform_prob must be a number in [0, 1], got {uniform_prob!r}")
        self.uniform_prob = float(uniform_prob)
        self.history = torch.zeros((self.T, int(history)), dtype=torch.float64)
        self.counts = torch.zeros(self.T, dtype=torch.long)
        self._full = 0   # how many t hold a full history (host int: no sync to ask)

    @property
    def warmed_up(self):
        return self._full == self.T

    def probabilities(self):
        """(I1) p (T,) float64 CPU tensor: uniform until warmed up, then (1 - u) sqrt(m2_t)/sum sqrt(m2) + u/T."""
        if not self.warmed_up:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        # (I1)  sqrt(E[L_t^2]) from the recorded losses
        root_m2 = torch.sqrt(torch.mean(self.history**2, dim=1))
        total = root_m2.sum()
        if not bool(total > 0):
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        # (I1)  p_t = (1 - u) sqrt(m2_t) / sum_s sqrt(m2_s) + u / T
        return (1.0 - self.uniform_prob) * (root_m2 / total) + self.uniform_prob / self.T

    def weights(self, t):
        """(I2) 1 / (T p_t) for the indices t (N,)."""
        t = torch.as_tensor(t)
        return 1.0 / (self.T * self.probabilities().to(t.device)[t])

    def sample(self, generator, n, device=None):
        """n indices and weights -> (t LongTensor (n,), w float64 (n,)) on ``device`` (the generator's by default).

        Before warm-up: torch.randint(0, T, (n,), generator=...) (the draw of uniform training) and w = 1.
        """
        device = generator.device if device is None else torch.device(device)
        if not self.warmed_up:
            t = torch.randint(0, self.T, (n,), device=device, generator=generator)
            return t, torch.ones(n, dtype=torch.float64, device=device)
        p = self.probabilities().to(device)
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        # (I2)  w = 1 / (T p_t)
        return t, 1.0 / (self.T * p[t])

    def update(self, t, losses):
        """Record the per-example losses (N,) at their indices t (N,), in order; the oldest goes when full."""
        t = torch.as_tensor(t).detach().reshape(-1).cpu().tolist()
        losses = torch.as_tensor(losses).detach().reshape(-1).to("cpu", torch.float64)
        if len(t) != losses.numel():
            raise InputError(f"shape mismatch: {len(t)} timesteps but {losses.numel()} losses")
        if not bool(torch.isfinite(losses).all()):
            raise InputError("importance sampling: the losses to record hold non-finite values (NaN or inf)")
        if t and (min(t) < 0 or max(t) >= self.T):
            raise InputError(f"t out of range: valid indices are 0..{self.T - 1}")
        k, counts = self.history.shape[1], self.counts.tolist()
        for ti, li in zip(t, losses.tolist()):
            c = counts[ti]
            if c == k:  # full: shift the oldest out
                self.history[ti, :-1] = self.history[ti, 1:].clone()
                self.history[ti, -1] = li
            else:
                self.history[ti, c] = li
                counts[ti] = c + 1
                self._full += c + 1 == k
        self.counts = torch.tensor(counts, dtype=torch.long)

    # ---- training state (checkpoint rng/<key> arrays, NumPy) ----------------------------------------

    def state_dict(self):
        return {"loss_history": self.history.numpy().copy(), "loss_counts": self.counts.numpy().copy()}

    def load_state_dict(self, d):
        h = torch.as_tensor(np.asarray(d["loss_history"], np.float64))
        c = torch.as_tensor(np.asarray(d["loss_counts"], np.int64))
        if tuple(h.shape) != tuple(self.history.shape) or tuple(c.shape) != tuple(self.counts.shape):
            raise InputError(f"importance-sampling history of shape {tuple(h.shape)}, counts {tuple(c.shape)}: this "
                             f"run keeps {tuple(self.history.shape)} and {tuple(self.counts.shape)} (T = {self.T})")
        if bool((c < 0).any() | (c > h.shape[1]).any()) or not bool(torch.isfinite(h).all()):
            raise InputError("importance-sampling history is corrupt (counts outside 0..history or non-finite losses)")
        self.history.copy_(h)
        self.counts = c.clone()
        self._full = int((c == h.shape[1]).sum())
