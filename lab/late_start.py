"""The late-start warning in the CLI's words: what starting a shortened sampler below T-1 costs, and fixes that
hold for the checkpoint at hand.

Leading spacing (and the ODE samplers' leading grid) with n steps starts at t = (n-1) floor(T/n) ~ T - T/n,
where x_t still holds signal: x_T ~ N(0, I) is then the wrong start (the prior term L8 bounds the cost in
bits/dim; the same threshold as reference.schedules.warn_late_start, whose Python-worded warning the CLI
silences and replaces with this one). The fixes this message offers:
  * more --sample-steps, the fewest whose leading start is in time;
  * a start at T-1 (--spacing trailing/linspace, --grid trailing/linspace/karras) only where the network's
    eps error is not amplified there: x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) multiplies it by
    1 / sqrt(alpha_bar_{T-1}), about 2e4 for the cosine schedule's clipped last step and 157 for linear at
    T = 1000; images clip x0_hat to [-1, 1], which bounds it. The README's Fast-sampling and Spacing sections
    have what each choice measured.
"""
from __future__ import annotations

import math

from common import sampler_table
from reference.schedules import PRIOR_BPD_WARN

LATE_START_PREFIX = "sampling starts at t="   # the start of reference.schedules.warn_late_start's message
AMPLIFY_OK = 1e3    # 1/sqrt(alpha_bar_{T-1}) up to which a start at T-1 is offered without x0 clipping


def prior_bpd(alpha_bar):
    """The bound on the prior term of a start where alpha_bar remains: -1/2 log2(1 - alpha_bar) per dim."""
    return -0.5 * math.log1p(-alpha_bar) / math.log(2.0) if alpha_bar < 1 else math.inf


def leading_start(T, n):
    """The first step leading spacing with n of T steps keeps: (n - 1) floor(T / n) (A5)."""
    return (n - 1) * (T // n)


def is_late(alpha_bar, t, T):
    return t < T - 1 and prior_bpd(float(alpha_bar[t])) > PRIOR_BPD_WARN


def steps_that_start_in_time(alpha_bar, T, n):
    """The smallest n' > n whose leading start is not late (T always is: it starts at T-1). Not every larger
    n' is: for n' > T/2 floor(T/n') = 1 and the start is n' - 1 (600 steps of 1000 start at t = 599)."""
    return next(k for k in range(n + 1, T + 1) if not is_late(alpha_bar, leading_start(T, k), T))


def amplification(alpha_bar, prediction="eps"):
    """How many times x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) multiplies an eps-model's error at
    T-1: 1 / sqrt(alpha_bar_{T-1}) (inf at zero terminal SNR). An x0- or v-model's x0_hat does not divide by
    sqrt(abar) (v: x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat), so 1."""
    if prediction != "eps":
        return 1.0
    a = float(alpha_bar[-1])
    return 1.0 / math.sqrt(a) if a > 0 else math.inf


def default_grid(alpha_bar, images, prediction="eps", sampler=None):
    """The ODE samplers' grid when --grid is omitted: trailing, except where a start at T-1 is harmful or
    impossible: leading for an unclipped (2-D) eps-model on a schedule whose last step amplifies its error more
    than AMPLIFY_OK-fold (the cosine's clipped step), and at zero terminal SNR (sigma_{T-1} = inf). Heun starts on
    the leading grid wherever sigma_{T-1} > AMPLIFY_OK, whatever the model: its trapezoid correction adds
    (sigma_1 - sigma_0) / (2 sigma_1) (x0_hat_0 - x0_hat_1) to its first step, a large multiple of the change of
    x0_hat from the cosine's sigma_{T-1} ~ 2e4 to the trailing grid's next level (derivations/solvers.md, Heun;
    the README's quality-against-NFE table has each grid's figures). Euler-Maruyama and the predictor-corrector
    start there too: their first step's noise sqrt(sigma_{T-1}^2 - sigma_1^2) is about sigma_{T-1} (the table's
    noise_of_the_step; derivations/sde_samplers.md, Q2, Q6)."""
    if float(alpha_bar[-1]) == 0:
        return "leading"
    r = None if sampler is None else sampler_table.row(sampler)
    # heun and edm-sde evaluate ahead; euler-maruyama and pc draw noise of about sigma_{T-1} in their first step
    if r is not None and (r.evaluates_ahead or r.noise_of_the_step) and amplification(alpha_bar, "eps") > AMPLIFY_OK:
        return "leading"
    return "trailing" if images or amplification(alpha_bar, prediction) <= AMPLIFY_OK else "leading"


def guided_grid(alpha_bar):
    """The grid of a classifier-guided ODE or SDE sampler when --grid is omitted: leading wherever a start at T-1
    amplifies more than AMPLIFY_OK-fold, else None (default_grid's). Classifier guidance's term (H4)
    s sigma^2 grad_x~ log p(y | x~) = s (1 - abar) / sqrt(abar) grad_{x_t} log p(y | x_t) multiplies the classifier's
    gradient at T-1 by about 1 / sqrt(abar_{T-1}) (2e4 on the clipped cosine). The exact gradient there is of
    order sqrt(abar) and the product stays small. A trained classifier's gradient at pure noise is not that
    small, and the first step carries its error, amplified, into every sample (derivations/classifier_guidance.md,
    H4). Classifier-free guidance has no such term: eps_c - eps_u vanishes at pure noise."""
    return "leading" if amplification(alpha_bar, "eps") > AMPLIFY_OK else None


def late_start_message(plan, alpha_bar, images, prediction="eps"):
    """The CLI's warning for a sampler plan (lab.sampling.Plan) that starts late, or None when it does not.
    ``alpha_bar``: the schedule's (T,) float64 table; ``images``: x0_hat is clipped to [-1, 1]; ``prediction``
    what the network predicts (eps-models amplify their error at T-1, x0- and v-models do not)."""
    T, t = plan.T, plan.t_start
    if T is None or not is_late(alpha_bar, t, T):   # T None: a continuous objective's model, no chain to start late
        return None
    a, last = float(alpha_bar[t]), float(alpha_bar[-1])
    n0 = steps_that_start_in_time(alpha_bar, T, plan.steps)
    how = "the leading grid" if plan.ode else "leading spacing"
    flag = "--grid" if plan.ode else "--spacing"
    amp = amplification(alpha_bar, prediction)
    msg = (f"--sample-steps {plan.steps} with {how} starts sampling at t={t}, not T-1={T - 1}: x_t there still "
           f"holds signal (alpha_bar = {a:.3g}), so starting from pure noise N(0, I) costs up to "
           f"{prior_bpd(a):.2g} bits/dim. Fix: --sample-steps {n0} (the start is then t={leading_start(T, n0)})")
    ends = "trailing or linspace" + (" or karras" if plan.ode else "")
    if last == 0 and plan.ode:
        return msg + ". (The ODE grids cannot start at T-1 here: zero terminal SNR, sigma_{T-1} = inf.)"
    if prediction != "eps":
        return msg + (f", or {flag} {ends}, which start at T-1: this {prediction}-model's x0_hat does not divide "
                      "by sqrt(alpha_bar) there.")
    if images:
        return msg + (f", or {flag} {ends}, which start at T-1: this model's x0_hat is clipped to [-1, 1] there.")
    if amp <= AMPLIFY_OK:
        return msg + (f", or {flag} {ends}, which start at T-1, where this schedule's alpha_bar = "
                      f"{last:.2g} amplifies the network's eps error {amp:.0f}-fold in x0_hat.")
    return msg + (f". Not {flag} {ends}: they start at T-1, where this schedule's alpha_bar = "
                  f"{last:.2g} multiplies the network's eps error by {amp:.2g} in x0_hat.")


def amplified_start_message(plan, alpha_bar, images, prediction="eps"):
    """The CLI's warning for a shortened sampler that starts at T-1 where an unclipped eps-model's error is
    amplified more than AMPLIFY_OK-fold (2-D data on the cosine schedule), or None. All T steps (ddpm, ddim)
    are not warned about: their first step is small, and ddpm's moves x_t by only sqrt(abar_{T-2}) beta/(1 - abar)."""
    T, t = plan.T, plan.t_start
    if T is None:
        return None
    amp = amplification(alpha_bar, prediction)
    if images or t != T - 1 or plan.steps >= T or amp <= AMPLIFY_OK:
        return None
    n = plan.steps if not is_late(alpha_bar, leading_start(T, plan.steps), T) else \
        steps_that_start_in_time(alpha_bar, T, plan.steps)
    fix = f"{'--grid' if plan.ode else '--spacing'} leading --sample-steps {n}"
    return (f"{'--grid' if plan.ode else '--spacing'} {plan.where} starts at T-1={T - 1}, where this schedule's "
            f"alpha_bar = {float(alpha_bar[-1]):.2g} multiplies the network's eps error by {amp:.2g} in x0_hat, "
            f"which is not clipped for 2-D data. Use {fix}, which starts below the clipped last step.")
