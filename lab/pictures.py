"""The pictures a run writes, titled from the run itself: samples beside real data, the loss curve named
by the loss that was trained, sampling trajectories and inversions. Used by the training loop, ``sample`` and
``eval``."""
from __future__ import annotations

import numpy as np

from common import sampler_table

from . import data, plots
from .plots.curves import quality_vs_nfe  # noqa: F401  (eval's picture; re-exported for the commands)
from .plots.guidance import class_rows, class_scatter, guidance_tradeoff  # noqa: F401  (guidance_tradeoff: eval)
from .plots.samples import inversion_picture

PER_CLASS_IMAGES = 8   # a class-conditional run's picture: one row of 8 per class, the width of its unconditional grid
# A run's pictures sample with DDIM (eta 0) on the run's sample_steps; a model of a continuous objective has no
# chain, and takes the same step on its grid of noise levels: Euler (K7).
RUN_SAMPLER, RUN_SAMPLER_CONTINUOUS = "ddim", "euler"
_TARGET = {"eps": "eps_hat - eps", "x0": "x0_hat - x_0", "v": "v_hat - v"}
_WEIGHT = {"none": "", "snr": "SNR-weighted ", "min_snr": "min-SNR-5-weighted "}


def loss_label(cfg):
    """What the logged loss is, in symbols: e.g. "L_simple: mean ||eps_hat - eps||^2 (eps prediction)"."""
    return (f"L_simple: {_WEIGHT.get(cfg.weighting, cfg.weighting + ' ')}mean ||{_TARGET[cfg.prediction]}||^2 "
            f"({cfg.prediction} prediction)")


def sampler_label(sampler, steps, T, step=None, spacing=None, grid=None, nfe=None):
    """A picture's title part naming the sampler: e.g. "step 2800 · ddim, 50 of T=1000 steps (leading)", or
    for the ODE samplers (``grid`` given) "step 2800 · dpm++2m, 20 steps on the karras grid of T=1000", or with
    T None (a continuous objective's model) "... on the karras grid of noise levels";
    `` · NFE n`` is appended when ``nfe`` (network evaluations per sample) is given."""
    where = f"step {step} · " if step is not None else ""
    cost = f" · NFE {nfe}" if nfe is not None else ""
    if T is None:
        return f"{where}{sampler}, {steps} steps on the {grid} grid of noise levels{cost}"
    n = T if not steps or steps >= T else steps
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


def run_samples_picture(B, trainer, path, step, n_images=64, n_points=2000):
    """The picture a training run writes (samples_step*.png, samples_final.png) -> its path. DDIM with the run's
    ``sample_steps`` from default_rng(cfg.seed): the same draw as ``sample``'s. An unconditional run: n_images
    images as a grid or n_points points over real data. A class-conditional run: every class at guidance s = 1
    (the conditional model, one network call a step, what ``sample --class all`` draws): images one labelled
    row of PER_CLASS_IMAGES per class, points n_points // K per class coloured by class; the title says so."""
    from .sampling import draw, is_continuous, objective_of, plan_for

    cfg, points = trainer.cfg, len(trainer.item_shape) == 1
    k = getattr(trainer, "num_classes", None)
    sampler = RUN_SAMPLER if sampler_table.serves(RUN_SAMPLER, objective_of(cfg)) else RUN_SAMPLER_CONTINUOUS
    if is_continuous(cfg):
        p = plan_for(B, trainer, sampler, cfg.sample_steps)
        how = sampler_label(sampler, p.steps, None, step=step, grid=p.where)
    else:
        how = sampler_label(sampler, cfg.sample_steps, cfg.T, step=step)
    if not k:
        x = draw(B, trainer, n_points if points else n_images, seed=cfg.seed, sampler=sampler, steps=cfg.sample_steps)
        return samples_picture(x, path, cfg, f"{cfg.data} samples (EMA), {how}")
    per = max(1, n_points // k) if points else PER_CLASS_IMAGES
    y = np.repeat(np.arange(k, dtype=np.int64), per)
    x = draw(B, trainer, len(y), seed=cfg.seed, sampler=sampler, steps=cfg.sample_steps, y=y, guidance=1.0)
    rows = "one colour" if points else "one row"
    title = (f"{cfg.data} samples (EMA), {rows} per class (0..{k - 1}), {per} each, guidance s=1 (the conditional "
             f"model), {how}")
    return class_rows_picture(x, y, path, cfg, title)


def class_words(labels, guidance):
    """What a class-conditional draw asked for, for a title: "class 3, guidance s=2" or "classes 0..9,
    guidance s=1"; "" when ``labels`` is None (an unconditional draw)."""
    if labels is None:
        return ""
    classes = np.unique(np.asarray(labels))
    which = (f"class {int(classes[0])}" if classes.size == 1 else
             f"classes {int(classes[0])}..{int(classes[-1])}" if np.array_equal(classes, np.arange(classes[0],
                                                                                              classes[-1] + 1))
             else "classes " + ", ".join(str(int(c)) for c in classes))
    return which + ("" if guidance is None else f", guidance s={guidance:g}")


def _one_per_class(labels, limit):
    """Indices of the items a trajectory shows: the first of each class when there are several classes (so
    every class gets a row), else the first ``limit``."""
    if labels is None or np.unique(labels).size < 2:
        return np.arange(limit)
    _, first = np.unique(np.asarray(labels), return_index=True)
    return np.sort(first)


def trajectory_pictures(traj, x, stem, cfg, title, labels=None, guidance=None, sigmas=None, by_sigma=False):
    """A strip (x_t above x0_hat at ~10 steps, then the final sample x, each column captioned with its t and,
    given ``sigmas`` (the trained sigma_t of every step: the backend's score.trained_sigmas), its sigma) and a
    GIF of x_t ending on x, for images (first 8 / 16, or one per class) or 2-D points (all, over real data,
    coloured by class). traj: (t, x_t, x0_hat) NumPy triples in sampling
    order; x the samples; ``labels`` (N,) the classes drawn and ``guidance`` the scale, named in the titles
    and on the strip's rows. ``by_sigma``: traj holds (sigma, x_t, x0_hat), a continuous objective's model
    having no trained steps: each column is captioned with its step's index on the grid and its sigma."""
    if by_sigma:
        sigmas, traj = [s for s, _, _ in traj], [(i, xt, x0) for i, (_, xt, x0) in enumerate(traj)]
        title = f"{title} · columns: step on the grid, sigma"
    keep = np.unique(np.linspace(0, len(traj) - 1, min(10, len(traj))).round().astype(int))
    points = x.ndim == 2
    y = None if labels is None else np.asarray(labels)
    ref = real_points(cfg.data, len(x)) if points else None
    few = slice(None) if points else _one_per_class(y, min(8, len(x)))
    words = class_words(y, guidance)
    title = f"{title} · {words}" if words else title
    strip, gif = stem.with_name(stem.name + "_trajectory.png"), stem.with_name(stem.name + "_trajectory.gif")
    sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)[[traj[i][0] for i in keep]]
    plots.trajectory_strip([(traj[i][0], traj[i][1][few], traj[i][2][few]) for i in keep], strip,
                           reference=ref, title=title, final=x[few], sigmas=sigmas,
                           labels=None if y is None else y[few], max_rows=len(x))
    many = slice(None) if points else _one_per_class(y, min(16, len(x)))
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
