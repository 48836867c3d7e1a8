"""THE tolerance table. Every tolerance a test uses comes from here (`from tolerances import TOL`).

Why each value:
  exact64   float64, closed form vs an exact independent route (recursion over <= 1000 steps,
            algebraic inversion): rounding grows ~ T * 2^-52 ~ 2e-13, so 1e-12 is tight but safe.
  cross64   float64 NumPy vs Torch: same math, different op order and libm (exp, log, sqrt,
            cumprod): a few hundred ulps worst case over T=1000 tables, so 1e-10.
  grid64    Bayes' rule normalised numerically on a grid (trapezoid, spacing h): the error of the
            quadrature of a smooth Gaussian is far below h^2; with the grids used, 1e-6.
  op32      float32 per operation: 2^-23 ~ 1.2e-7 relative, times accumulation in a few
            hundred-term sums, so 1e-5.
  net32     float32 whole networks (NumPy vs Torch, TF32 off): relative 1e-4.
  net64     float64 whole networks: relative 1e-8.
  fd64      central finite differences in float64 on smooth inputs: truncation O(h^2) with
            h = 1e-6 and rounding O(eps/h): relative error <= 1e-7 per layer.
  fd64_dir  a whole network's directional derivative in float64 with a fourth-order stencil, h = 1e-3:
            truncation ~h^4 ~ 1e-12, rounding ~1e-13 |f| / h; small directional derivatives need the
            slack, so 1e-6 relative.
  bf16net   a whole network under bf16 autocast vs float32, norm-wise relative: bf16 keeps 8 significant
            bits (unit roundoff 2^-9 ~ 2e-3) and a UNet rounds through ~20 convolutions and products;
            measured 0.6-1.5% on outputs and gradients over 3 seeds, so 5e-2 (a wrong cast is O(1)).
  mc_z      Monte Carlo: an estimate must lie within 5 standard errors of the truth
            (false-failure probability ~ 6e-7 per comparison at fixed seeds).
  ode64     two float64 ODE solves of the same flow in different variables (solve_ivp, DOP853, rtol = atol
            = 1e-11, or a 64-node Gauss-Legendre quadrature along such a solve): each carries ~1e-10 of
            local-error control over a few hundred steps, so 1e-7 relative (a wrong drift is O(1)).
  solve64   a whole solve NumPy vs torch in float64 (20 steps): rounding (cross64 per op) is carried
            in x~ = x sqrt(1 + sigma^2), up to sqrt(1 + 157^2) = 157 times larger than x at the first
            steps, then divided back: 1e-8 (measured 3e-15 over every sampler, grid and prediction).
  rate64    the slope of a deterministic error that is c/T + O(1/T^2) (the chain's log alpha_bar against
            the SDE's, T = 250..2000): the O(1/T) correction bends a log-log fit by under 2%, so 0.05.
  order_fit a solver's fitted log-log slope of global error against NFE over NFE 8..64 (the issue's
            range) on the mixture oracle: the range starts before the asymptotic regime (Heun with 4
            steps over sigma 157 -> 0.01 has an error of 1.7), so the fit reads 0.94-1.12 for Euler,
            2.03-2.29 for DPM-Solver++(2M) and 2.41-2.73 for Heun over the mixtures and sigma ranges
            tried; 0.6 still rejects the wrong order, which is off by 1.
  inversion_n_err n times the RMS error of DDIM inversion (N6) with n Karras steps, n = 8..64, 64 points of
            the mixture: a first-order error C / n, C measured 2.9-3.5 for the latent and 3.1-4.1 for the round
            trip over 3 draws, so 6; the denoiser read one level up (an off-by-one) gives C = 10.5-32 (latent).
  order_asym the same slope between successive NFE over 64..512 (asymptotic): measured within 0.1 of
            the order (Heun 2.09 from NFE 63 to 127, falling to 2.02), so 0.15.
  respace64 a schedule respaced onto all of its own steps against itself (V5, A4): respacing recomputes
            beta'_i = 1 - abar_i / abar_{i-1}, a cancellation that costs ~2^-52 / beta_i relative, 1.4e-12 for the
            cosine schedule's smallest beta (4e-5; linear: 4e-13), so 1e-11 on the betas and log-variances.
  ode_tight the ODE likelihood (E3) at rtol = atol = 1e-9 against a closed-form log-density, nats per example:
            measured <= 4.3e-9 on the mixture (d = 2, 32-64 points) and 4e-9 on the Gaussian flow's map and
            log-determinant (rtol 1e-10), so 1e-7: the slack of an error estimate that is not a bound.
  ode_default the same at the default rtol = atol = 1e-5: measured <= 1.8e-4 nats per example (mixture, d = 2),
            so 1e-3 (a wrong sign or a missing term is O(1)).
  ode_per_tol the RMS over examples of the ODE's -log p error (nats per example) per unit of rtol = atol, over
            1e-5..1e-9 on the mixture (E8): measured 0.7-6.2 over 8 draws (the test's seed and 0-6) of 32 and 64
            points (the error estimate is local, the error global), so 15.
  ode_per_tol_max the largest of those errors per unit of tolerance: a tail that grows with the number of
            points: measured 6.5-17.5 at 32 points, up to 29.5 (the test's seed) and 40.9 (seed 6) at 64, so 100
            (a missing term or a wrong sign is O(1) nats, 1e5 tolerances at 1e-5).
  blend     (E5) the label interpolation of a discrete-step network against the continuous field it samples,
            nats per example: the Gaussian oracle as a T = 1000 linear-schedule network differs from the
            continuous oracle (second-order interpolation error in log sigma, largest at the lowest steps, where
            sigma_{t+1} / sigma_t = 1.48) by 1.0-1.8e-4 predicting eps or v and 5.9-9.5e-4 predicting x0 (its
            output x0_hat carries the interpolation error unscaled by sigma), max over 32 points, 3 draws: 2e-3.
            This cannot tell a blend in log sigma from one in sigma; test_likelihood_sides.py pins the weights.
  ode_cross a whole ODE likelihood NumPy vs torch in float64 on the mixture oracle (a smooth field): the two solvers
            take the same steps (same tableau, norm and controller; NFE asserted equal), so only per-op rounding
            differs: measured 2e-14; 1e-9. If a step decision flipped (an error norm within ~1e-12 of 1), the
            solves would differ by up to ode_default instead.
  ode_cross_net the same through a float64 network, relative: the fields agree to 1e-15 (asserted at cross64 /
            net64 on their own), but the label interpolation (E5) puts a kink in rho at every trained level, near
            which an error norm can sit within rounding of 1, so a step decision can flip: the solves are then
            two discretisations, each within ~ode_per_tol x rtol of the exact flow. Measured on tame random
            MLPs at rtol 1e-5: equal steps give 1e-13..1e-8, flipped ones (NFE 572 vs 590) up to 8.4e-5; 1e-3.
  ode_cross_cont a whole ODE likelihood NumPy vs torch in float64 through a random network of a continuous objective
            (E9): no label kinks, but its time input 250 ln sigma (edm) or 1000 t (flow) makes the embedding's fast
            sinusoids oscillate ~250 times per unit of log sigma, which the controller under-resolves at loose
            tolerances: there a 1e-13 difference in one step time grows step by step (measured: NFE 1100 vs 1112
            and 2e-3 nats at rtol 1e-5). At rtol = atol = 1e-8 the oscillation is resolved and both take the
            same steps (NFE asserted equal): measured <= 3.4e-14 over 3 seeds and both objectives; 1e-9.
  ode_cross_net32 `eval --nll ode` of one float32 checkpoint (a 20-step edm or flow model of moons) on both sides,
            relative: the fields differ by float32 rounding, the solves at rtol 1e-5 take the same steps (NFE
            asserted equal); measured <= 1.4e-8 over 3 seeds, both objectives, trained on either side; 1e-4 as net32.
  guided_grid what a 1-D grid computation of the guided ODE's reached distribution may miss (W6, C8): the N(0, 1)
            start at sigma = 1e4 is off the exact level's marginal by sqrt(abar) |mu| = 1e-4 (measured at s = 1, where
            the truth p(x|c) is known: 5e-5 in the mean, 4e-5 in the Kolmogorov distance); DOP853 at rtol = atol =
            1e-10; trapezoid grids whose cut tails are below 1e-14. So 1e-3: the gaps at s > 1 are O(0.1-1).
  snap_cost the relative change of a solver's global error when a Karras grid is snapped to the trained
            steps (K8) of the linear T = 1000 schedule, at n = 8..64 on 32 points: measured <= 0.35% for Euler
            and 1.2-1.4% for DPM-Solver++(2M) (1.33% at the K8 test's points, n = 16) over 3 draws, so 0.1.
  invert64  a process's closed-form t(sigma~) against 200 bisection halvings, and the round trips t -> sigma~ -> t
            and x -> x~ -> x (D3): an arccos, a log1p and a square root each cost a few ulps, amplified by the
            inverse's slope (the cosine's arccos near 1): measured <= 2.2e-14 relative, so 1e-12.
  equiv64   two exact routes to one float64 number through O(10) steps of arithmetic (D4, D6, D10-D13): DDIM on the
            chain vs Euler on the flow path at equal lambda (12 steps), an objective's Bayes-optimal network through
            its denoiser vs the oracle's D, a least-squares line through exactly collinear points: measured
            <= 1e-13 absolute on values O(1), so 1e-12 (a wrong coefficient or level is O(1e-3) or more).
  ks_p      a KS test of a sampler against its closed-form CDF (D7, D14, D15): fail when p < 1e-6 (a false
            failure has probability 1e-6 at fixed seeds; a wrong mean or scale of 0.05 at 20 000 draws gives p ~ 0).
  kg64      Kingma & Gao's closed forms for the cosine process at s = 0 (D16): w goes through t(sigma~) by an arccos
            and dlambda/dt at that t: measured 5.6e-13 relative, so 1e-11.
  clf_acc   a small classifier trained 400 steps on noised mixture samples (H7) against the Bayes classifier's
            accuracy on 4000 fresh samples at t = 200, 300: measured gaps -0.003..0.007 over 5 seeds (the Monte Carlo
            error of a paired accuracy difference at 4000 samples is ~0.003), so 0.02. Accuracy barely sees
            calibration (training on clean x_0 costs only 0.005-0.018): the two below are the sharper judges.
  clf_ce    the same classifier's cross-entropy over the exact classifier's (the Bayes minimum), nats: measured
            0.0015-0.016 over 5 seeds, so 0.03 (trained on clean x_0: 0.56-1.7; blind to t: 0.02-0.08; the
            untrained, uniform classifier: 0.36-0.62).
  clf_grad  the same classifier's input gradient grad_x log p(y | x_t) against the exact one, norm-wise relative:
            measured 0.15-0.26 over 5 seeds (a learned function's derivative converges more slowly than its
            values), so 0.35 (trained on clean x_0: 3.7-8.4; blind to t: 0.48-0.54).
  chi_gauss (J3) Song & Ermon's overlap takes ||x||, x ~ N(0, s^2 I_D), as N(sqrt(D) s, s^2 / 2); the exact chi
            law's skew puts it off by O(1/sqrt(D)): measured 0.19 / sqrt(D) at the root for D = 64 .. 12288, so
            |formula - chi| <= chi_gauss / sqrt(D).
  paper_overlap (J3) CIFAR-10's (sigma_1 50, L 232) and CelebA 64's (90, 500) ladders give the same exact chi overlap
            to 0.0017 (measured): two hard-coded ladders of one rule agree within this.
  paper_levels (J3) the code's L at overlap 1/2 against the papers' L, which sit at overlap ~0.567: measured 5.2% and
            5.4% fewer; a relative shortfall within this, never more levels than theirs.
  weak_order the log-log slope of Euler-Maruyama's exact law error |Var_n - Var| against n (Q2), Gaussian data, Karras
            grids n = 16..256 over sigma 20 -> 0.02: a deterministic c/n + O(1/n^2) (no Monte Carlo); measured -1.09 (the
            successive slopes 1.23, 1.10, 1.05, 1.02 as the O(1/n^2) term fades), so 0.15 (a wrong order is off by 1).
"""
import numpy as np

TOL = {
    "exact64": 1e-12,
    "cross64": 1e-10,
    "grid64": 1e-6,
    "op32": 1e-5,
    "net32": 1e-4,
    "net64": 1e-8,
    "fd64": 1e-7,
    "fd64_dir": 1e-6,
    "bf16net": 5e-2,
    "mc_z": 5.0,
    "ode64": 1e-7,
    "solve64": 1e-8,
    "rate64": 0.05,
    "order_fit": 0.6,
    "order_asym": 0.15,
    "snap_cost": 0.1,
    "guided_grid": 1e-3,
    "ode_tight": 1e-7,
    "ode_default": 1e-3,
    "ode_per_tol": 15.0,
    "ode_per_tol_max": 100.0,
    "inversion_n_err": 6.0,
    "blend": 2e-3,
    "ode_cross": 1e-9,
    "ode_cross_net": 1e-3,
    "ode_cross_cont": 1e-9,
    "ode_cross_net32": 1e-4,
    "respace64": 1e-11,
    "invert64": 1e-12,
    "equiv64": 1e-12,
    "ks_p": 1e-6,
    "kg64": 1e-11,
    "clf_acc": 0.02,
    "clf_ce": 0.03,
    "clf_grad": 0.35,
    "weak_order": 0.15,
    "chi_gauss": 0.25,
    "paper_overlap": 0.005,
    "paper_levels": 0.1,
}


def mc_close(estimate, truth, std_err, z=TOL["mc_z"]):
    """True when every Monte Carlo estimate lies within z standard errors of the truth."""
    estimate, truth, std_err = map(np.asarray, (estimate, truth, std_err))
    return bool(np.all(np.abs(estimate - truth) <= z * std_err))
