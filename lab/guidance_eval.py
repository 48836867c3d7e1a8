"""The guidance sweep of ``eval --guidance 0,1,2,4``: for each scale s, samples of balanced requested
classes scored by the eval judge (the Frechet distance, or sliced Wasserstein for 2-D data, beside its floor) and
by a classifier (does it see the class that was asked for), with the classifier's accuracy on real test items
beside it as the ceiling; a trade-off picture and the JSON figures.

The classifier: for images the project's FeatureNet (lab.metrics.feature_net, the network whose features the
Frechet distance reads: trained on the dataset's train split and cached); for the labelled 2-D sets (moons,
gaussians8, checkerboard) the majority vote of the KNN_K nearest of KNN_POINTS real labelled training points,
a consistent estimate of the Bayes classifier of the data's own labels (every 2-D set's components are
separated by many noise widths, so its real-test accuracy, the ceiling, is near 100%).

s = 0 is the unconditional model (the null class): its accuracy against the requested labels is chance, 1/K,
the reference point the other scales rise from. eval.py calls, in order: ``configure(p)``, ``check(args)``
(before any work), ``check_model(trainer, args, name)`` (after loading, before sampling), ``compute(...)``,
``report(res)``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from reference.errors import InputError

from . import data as datasets
from . import metrics
from .pictures import guidance_tradeoff
from .progress import bar
from .sampling import draw, plan_for

KNN_K, KNN_POINTS = 5, 4000


class NearestNeighbours:
    """The 2-D classifier: the majority label of the ``k`` nearest labelled points (ties: the smaller label)."""

    def __init__(self, x, y, k=KNN_K):
        self.x, self.y, self.k = np.asarray(x, np.float64), np.asarray(y, np.int64), int(k)
        self.num_classes = int(self.y.max()) + 1

    def predict(self, x):
        x = np.asarray(x, np.float64)
        out = np.empty(len(x), dtype=np.int64)
        for lo in range(0, len(x), 1024):                                  # (1024, KNN_POINTS) distances at a time
            d = ((x[lo:lo + 1024, None, :] - self.x[None]) ** 2).sum(-1)
            near = self.y[np.argpartition(d, self.k - 1, axis=1)[:, :self.k]]   # (b, k)
            votes = np.apply_along_axis(np.bincount, 1, near, minlength=self.num_classes)
            out[lo:lo + 1024] = votes.argmax(1)
        return out

    def accuracy(self, x, y):
        return float(np.mean(self.predict(x) == np.asarray(y)))


def configure(p):
    p.add_argument("--guidance", default=None, metavar="LIST",
                   help="e.g. 0,1,2,4 (a class-conditional checkpoint): for each classifier-free guidance scale s, "
                        "--n samples of balanced requested classes, their quality beside its floor and the "
                        "accuracy of the dataset's classifier against the requested classes (images: the "
                        "Frechet distance's own feature classifier; 2-D data: 5 nearest labelled real points), "
                        "beside its accuracy on real test items (the ceiling); s = 0 is the unconditional model "
                        "(accuracy: chance). Writes guidance_tradeoff.png (--plot)")
    p.add_argument("--classifier", metavar="CKPT", default=None,
                   help="classifier guidance's sweep with this classifier (train --classifier on the model's "
                        "schedule and T; the model runs unconditionally): for each --classifier-scale, the same "
                        "quality and accuracy as --guidance reports. Writes classifier_tradeoff.png (--plot when "
                        "--guidance is not asked for too)")
    p.add_argument("--classifier-scale", dest="classifier_scale", default=None, metavar="LIST",
                   help="--classifier: the scales s of its gradient, e.g. 0,1,2,4 (the default); 0 is unguided")


def parse_scales(text, flag="--guidance"):
    """--guidance "0,1,2,4" -> sorted unique floats, each finite and >= 0; refused naming the flag otherwise."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"{flag} must be a comma-separated list of scales such as 0,1,2,4, got {text!r}") \
            from None
    if not values or not all(math.isfinite(v) for v in values) or values[0] < 0:
        what = "0: unguided, 1: the exact conditional for an exact classifier" if flag != "--guidance" else \
            "0: unconditional, 1: the class-conditional model"
        raise InputError(f"{flag} needs finite scales >= 0 ({what}, > 1: guided), got {text!r}")
    return values


def check_classifier(args):
    """--classifier's scales (default 0,1,2,4), or None without --classifier; refused with --nfe."""
    if args.classifier is None:
        if args.classifier_scale is not None:
            raise InputError("--classifier-scale needs --classifier CKPT, the classifier whose gradient it scales")
        return None
    if args.nfe is not None:
        raise InputError("--classifier and --nfe are two sweeps: run one at a time")
    return parse_scales(args.classifier_scale or "0,1,2,4", "--classifier-scale")


def check(args):
    """The scales, or None without --guidance; refused with --nfe (one sweep at a time)."""
    if args.guidance is None:
        return None
    if args.nfe is not None:
        raise InputError("--guidance and --nfe are two sweeps: run one at a time (--guidance uses --sampler and "
                         "--sample-steps for every scale)")
    return parse_scales(args.guidance)


def check_model(trainer, args, name):
    """The checkpoint's class count K, refused for an unconditional model or a model judged on other data."""
    k = getattr(trainer, "num_classes", None)
    if k is None:
        raise InputError(f"--guidance needs a class-conditional checkpoint (trained with train --class-cond); "
                         f"{args.ckpt} is unconditional")
    if name != trainer.cfg.data:
        raise InputError(f"--guidance asks for the classes of {trainer.cfg.data!r}, the data the model was trained "
                         f"on: judging them against --data {name!r} would mix two label sets; drop --data")
    if k < 2:
        raise InputError(f"--guidance needs at least 2 classes to tell apart; this checkpoint has {k}")
    return k


def classifier(name, cfg, seed=0):
    """(classifier with .accuracy(x, y), its accuracy on real test items, a description)."""
    if name in datasets.POINT_SETS:
        x, y = datasets.load(name, n=KNN_POINTS, seed=seed + 303, split="train", return_labels=True)
        clf = NearestNeighbours(x, y)
        xt, yt = datasets.load(name, n=2000, seed=seed + 404, split="test", return_labels=True)
        return clf, clf.accuracy(xt, yt), f"{KNN_K} nearest of {KNN_POINTS} labelled real points"
    kw = {"data_dir": cfg.data_dir, "image_size": cfg.image_size}
    x_tr, y_tr = datasets.load(name, split="train", return_labels=True, **kw)
    net = metrics.feature_net(name, x_tr, y_tr)
    x_te, y_te = datasets.load(name, split="test", return_labels=True, **kw)
    return net, net.accuracy(x_te, y_te), f"the feature classifier (FeatureNet), {len(x_te)} real test items"


def balanced(n, k):
    """n requested classes, balanced: 0, 1, ..., K-1, 0, 1, ... (each class n // K or n // K + 1 times)."""
    return np.arange(n, dtype=np.int64) % k


def compute(B, trainer, judge, n, args, name, scales, k, res, plot=None, grad_fn=None):
    """res gains "guidance" (classifier-free; or "classifier_guidance" with ``grad_fn``, a classifier's chain
    gradient, lab.classifier_sampling): one row per scale (value, values, ratio_to_floor, accuracy, accuracies,
    nfe, seconds_per_sample), the ceiling, chance and the picture's path."""
    cfg, images = trainer.cfg, len(trainer.item_shape) == 3
    clf, ceiling, what = classifier(name, cfg, args.seed)
    p = plan_for(B, trainer, args.sampler, args.sample_steps, args.spacing or "leading", args.grid, clip_x0=images)
    y = balanced(n, k)
    rows, key = [], "guidance" if grad_fn is None else "classifier_guidance"
    for i, s in enumerate(scales):
        values, accs, seconds = [], [], 0.0
        for r in range(args.repeats):
            t0 = time.perf_counter()
            kw = dict(progress=bar(f"{key.replace('_', ' ')} s={s:g}, draw {r + 1}/{args.repeats}"),
                      warn=i == 0 and r == 0)
            if grad_fn is None:
                x = draw(B, trainer, n, args.seed + r, args.sampler, p.steps, args.spacing or "leading",
                         grid=args.grid, y=y, guidance=s, **kw)
            else:
                from .classifier_sampling import guided_draw
                x = guided_draw(B, trainer, n, grad_fn, y, s, args.seed + r, args.sampler, p.steps,
                                args.spacing or "leading", grid=args.grid, **kw)
            seconds += time.perf_counter() - t0
            values.append(judge.score(x))
            accs.append(clf.accuracy(x, y))
        value = float(np.mean(values))
        rows.append({"scale": s, "value": value, "values": values, "ratio_to_floor": value / judge.floor,
                     "spread": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                     "accuracy": float(np.mean(accs)), "accuracies": accs,
                     "accuracy_spread": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                     "nfe": p.nfe * (1 if s in (0.0, 1.0) or grad_fn is not None else 2),
                     "seconds_per_sample": seconds / args.repeats / n})
    plot = Path(plot) if plot else Path(args.ckpt).parent / f"{'guidance' if grad_fn is None else 'classifier'}" \
                                                            "_tradeoff.png"
    spread = args.repeats > 1
    guidance_tradeoff([r["scale"] for r in rows], [r["ratio_to_floor"] for r in rows],
                      [r["accuracy"] for r in rows], plot, ceiling=ceiling, chance=1.0 / k,
                      metric=judge.metric.split(" (")[0],
                      ratio_spread=[r["spread"] / judge.floor for r in rows] if spread else None,
                      accuracy_spread=[r["accuracy_spread"] for r in rows] if spread else None,
                      title=f"{name}, step {res['step']}: {n} samples of balanced classes, {args.sampler} "
                            f"{p.steps} steps, mean of {args.repeats} draw(s)"
                            + ("" if grad_fn is None else "; classifier guidance (the scale of the classifier's "
                                                          "gradient)"))
    res[key] = {"scales": list(scales), "rows": rows, "classes": k, "ceiling": ceiling, "chance": 1.0 / k,
                       "classifier": what, "sampler": args.sampler, "steps": p.steps, "where": p.where,
                       "plot": str(plot)}


def report(res, key="guidance"):
    g, floor = res[key], res["floor"]
    kind = "classifier-free guidance" if key == "guidance" else "classifier guidance"
    print(f"  {kind}: {res['n']} samples of {g['classes']} balanced classes ({g['sampler']}, "
          f"{g['steps']} steps, {g['where']}; mean of {res['repeats']} draw(s)); {res['metric']} floor {floor:.4g}")
    print(f"    {'s':>5s} {'value':>8s} {'/floor':>7s} {'accuracy':>9s} {'NFE':>5s} {'ms/sample':>10s}")
    for r in g["rows"]:
        print(f"    {r['scale']:5g} {r['value']:8.4g} {r['ratio_to_floor']:7.2f} {100 * r['accuracy']:8.1f}% "
              f"{r['nfe']:5d} {1e3 * r['seconds_per_sample']:10.3g}")
    print(f"  accuracy on real test items (the ceiling): {100 * g['ceiling']:.1f}% ({g['classifier']}); "
          f"chance {100 * g['chance']:.3g}%")
    print(f"  picture: {g['plot']}")
