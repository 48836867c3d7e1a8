"""NumPy reference vs torch port, float64: every SDE sampler of reference/sde.py and torch_port/sde.py
(derivations/sde_samplers.md, Q2-Q12) on the mixture oracle's exact denoiser, with the same pre-drawn noise.

Tolerance: TOL["solve64"], a whole solve NumPy vs torch in float64 (its reason in tests/tolerances.py: per-op
rounding carried in x~ up to sqrt(1 + sigma_max^2) times x).
"""
import numpy as np
import pytest
import torch

from reference import oracle as RO
from reference import sde as RD
from reference.errors import InputError
from reference.solvers import karras_sigmas
from torch_port import oracle as TO
from torch_port import sde as TD
from crosscheck import close
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
RMIX, TMIX = RO.GaussianMixtureOracle(W, MEANS, cov=COVS), TO.GaussianMixtureOracle(W, MEANS, cov=COVS)
GRID = karras_sigmas(8, 0.02, 80.0).tolist()
SETTINGS = {"euler-maruyama": {}, "ancestral": {"eta": 0.7}, "pc": {"snr": 0.16, "corrector_steps": 2},
            "edm-sde": {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003},
            "dpm++2m-sde": {"eta": 1.0}, "langevin": {"langevin_steps": 3, "langevin_eps": 2e-4},
            "langevin-default": {"langevin_steps": 3}}   # its step the grid's 0.2 sigma_L^2 (Q13) on each side


@pytest.mark.parametrize("case", list(RD.SDE_SAMPLERS) + ["langevin-default"])
def test_Q2_to_Q13_every_sde_sampler_numpy_vs_torch_step_for_step(case):
    name = case.split("-default")[0]
    rng = np.random.default_rng(7)
    x_T = rng.standard_normal((12, 2))
    n_draws = RD.NOISE_DRAWS[name](len(GRID) - 1, SETTINGS[case])
    assert TD.NOISE_DRAWS[name](len(GRID) - 1, SETTINGS[case]) == n_draws
    Z = rng.standard_normal((n_draws, 12, 2))
    used_r, used_t = [], []
    ref = RD.sample(RMIX.denoise_sigma, x_T, GRID, name, lambda k: used_r.append(k) or Z[k], record=True,
                    **SETTINGS[case])
    port = TD.sample(TMIX.denoise_sigma, torch.from_numpy(x_T), GRID, name,
                     lambda k: used_t.append(k) or torch.from_numpy(Z[k]), record=True, **SETTINGS[case])
    assert used_r == used_t == list(range(n_draws))          # every draw consumed once, in order (NOISE_DRAWS)
    close(port.x, ref.x, TOL["solve64"])
    assert len(port.trajectory) == len(ref.trajectory)
    for (s_t, x_t, d_t), (s_r, x_r, d_r) in zip(port.trajectory, ref.trajectory):
        assert s_t == s_r
        close(x_t, x_r, TOL["solve64"])
        close(d_t, d_r, TOL["solve64"])


@pytest.mark.parametrize("side", [RD, TD])
def test_Q8_Q11_bad_settings_are_refused_by_name_on_both_sides(side):
    D = RMIX.denoise_sigma if side is RD else TMIX.denoise_sigma
    x = np.zeros((3, 2)) if side is RD else torch.zeros(3, 2, dtype=torch.float64)
    z = (lambda k: np.zeros((3, 2))) if side is RD else (lambda k: torch.zeros(3, 2, dtype=torch.float64))
    for name, kw, word in [("edm-sde", {"s_churn": -1.0}, "s_churn"), ("edm-sde", {"s_noise": 0.0}, "s_noise"),
                           ("pc", {"snr": 0.0}, "snr"), ("ancestral", {"eta": 1.5}, "eta"),
                           ("dpm++2m-sde", {"eta": -0.1}, "eta"), ("langevin", {"langevin_eps": 2e-3}, "langevin_eps"),
                           ("nope", {}, "sampler")]:
        with pytest.raises(InputError, match=word):
            side.sample(D, x, GRID, name, z, **kw)
    with pytest.raises(InputError, match="largest stable langevin_eps is 4 sigma_L"):
        side.sample(D, x, GRID, "langevin", z, langevin_eps=4 * GRID[-2] ** 2)
    bad = (lambda k: np.zeros((3, 3))) if side is RD else (lambda k: torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="noise"):
        side.sample(D, x, GRID, "euler-maruyama", bad)
