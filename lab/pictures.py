"""The pictures a run writes, titled from the run itself: samples beside real data, the loss curve named
by the loss that was trained, sampling trajectories and inversions. Used by the training loop, ``sample`` and
``eval``."""
from __future__ import annotations

import numpy as np

from . import data, plots
from .plots.curves import quality_vs_nfe  # noqa: F401  (eval's picture; re-exported for the commands)
from .plots.guidance import class_rows, class_scatter, guidance_tradeoff  # noqa: F401  (guidance_tradeoff: eval)
from .plots.samples import inversion_picture

_TARGET = {"eps": "eps_hat - eps", "x0": "x0_hat - x_0", "v": "v_hat - v"}
_WEIGHT = {"none": "", "snr": "SNR-weighted ", "min_snr": "min-SNR-5-weighted "}


def loss_label(cfg):
    """What the logged loss is, in symbols: e.g. "L_simple: mean ||eps_hat - eps||^2 (eps prediction)"."""
    return (f"L_simple: {_WEIGHT.get(cfg.weighting, cfg.weighting + ' ')}mean ||{_TARGET[cfg.prediction]}||^2 "
            f"({cfg.prediction} prediction)")


def sampler_label(sampler, steps, T, step=None, spacing=None, grid=None, nfe=None):
    """A picture's title part naming the sampler: e.g. "step 2800 · ddim, 50 of T=1000 steps (leading)", or
    for the ODE samplers (``grid`` given) "step 2800 · dpm++2m, 20 steps on the karras grid of T=1000";
    `` · NFE n`` is appended when ``nfe`` (network evaluations per sample) is given."""
    n = T if not steps or steps >= T else steps
    where = f"step {step} · " if step is not None else ""
    cost = f" · NFE {nfe}" if nfe is not None else ""
    if grid:
        return f"{where}{sampler}, {n} steps on the {grid} grid of T={T}{cost}"
    how = f" ({spacing})" if spacing and n < T else ""
    return f"{where}{sampler}, {n} of T={T} steps{how}{cost}"


def real_points(name, n, seed=0):
    """Fresh real 2-D points to draw under samples (the test split, so not what was trained on)."""
    return data.load(name, n=min(n, data.DEFAULT_N_POINTS["test"]), seed=seed, split="test")


def samples_picture(x, path, cfg, title):
    """A grid (images) or a scatter over real data (2-D points) of the samples x, titled."""
    if x.ndim == 2:
        return plots.scatter_2d(x, path, reference=real_points(cfg.data, len(x)), title=title)
    return plots.image_grid(x, path, title=title)


def trajectory_pictures(traj, x, stem, cfg, title):
    """A strip (x_t above x0_hat at ~10 steps) and a GIF of x_t, for images (first 8 / 16) or 2-D points
    (all, over real data). traj: (t, x_t, x0_hat) NumPy triples in sampling order; x the samples."""
    keep = np.unique(np.linspace(0, len(traj) - 1, min(10, len(traj))).round().astype(int))
    points = x.ndim == 2
    ref = real_points(cfg.data, len(x)) if points else None
    few = slice(None) if points else slice(0, 8)
    strip, gif = stem.with_name(stem.name + "_trajectory.png"), stem.with_name(stem.name + "_trajectory.gif")
    plots.trajectory_strip([(traj[i][0], traj[i][1][few], traj[i][2][few]) for i in keep], strip,
                           reference=ref, title=title)
    many = slice(None) if points else slice(0, 16)
    frames = [(t, xt[many]) for t, xt, _ in traj[:: max(1, len(traj) // 50)]] + [(-1, x[many])]
    plots.trajectory_gif(frames, gif, reference=ref)
    return [strip, gif]


def inversion_pictures(x0, latents, recon, path, title):
    """data | reconstruction (images: two grids; 2-D: data, latents and reconstruction panels), titled."""
    return inversion_picture(x0, latents, recon, path, title=title)


def class_rows_picture(x, labels, path, cfg, title):
    """Class-major samples of every class: images one labelled row per class; 2-D points coloured by class over
    real data."""
    if x.ndim == 2:
        return class_scatter(x, labels, path, reference=real_points(cfg.data, len(x)), title=title)
    return class_rows(x, labels, path, title=title)
