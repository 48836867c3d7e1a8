"""(E9) The ODE likelihood of the continuous objectives' networks (edm, flow): the field D = a x~ + b f(c x~, tau)
and its VJP a v + c J_f^T (b v), through independent routes: central finite differences of the field's own D, and
the Gaussian oracle written as an edm F and as a flow velocity u, whose ODE likelihood has a closed form."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from reference import likelihood as L
from reference import objectives
from reference.errors import InputError
from reference.oracle import GaussianOracle
from reference.unet import MLP, UNet
from tolerances import TOL

EDM, FLOW = SimpleNamespace(objective="edm", sigma_data=0.7), SimpleNamespace(objective="flow")
MEAN, COV = np.array([0.3, -0.2]), np.array([[0.1, 0.05], [0.05, 0.2]])
# the ends of the ODE: EDM's sampling range, typed from Karras et al. 2022 (sigma_min 0.002, sigma_max 80)
S_MIN, S_MAX = 0.002, 80.0


def _random_net(net, rng, scale=0.3):
    net.load_params({k: v + scale * rng.standard_normal(v.shape) for k, v in net.params.items()})
    return net


def _fd_columns(field, x, sigma, h=1e-6):
    """dD/dx~ by central differences of the field's own D, one column per input coordinate: (d, N, d)."""
    none = np.zeros((0,) + x.shape)
    flat = x.reshape(x.shape[0], -1)
    cols = []
    for i in range(flat.shape[1]):
        e = np.zeros_like(flat)
        e[:, i] = h
        up, down = (field((flat + s * e).reshape(x.shape), sigma, none)[0] for s in (1, -1))
        cols.append(((up - down) / (2 * h)).reshape(flat.shape))
    return np.stack(cols)                                    # cols[i][n] = d D(x_n) / d x~_{n, i}


@pytest.mark.parametrize("cfg", [EDM, FLOW], ids=["edm", "flow"])
def test_E9_objective_field_vjps_are_the_finite_difference_ones_of_its_denoiser(cfg, rng):
    net = _random_net(MLP(hidden=32, num_layers=2, time_dim=16, continuous_time=True, dtype=np.float64, seed=1), rng)
    field, x = L.objective_field(cfg, net), rng.standard_normal((5, 2))
    eye = np.broadcast_to(np.eye(2)[:, None, :], (2, 5, 2))
    # D itself is the sampler's denoiser of the same network (what sample draws with)
    D = objectives.denoiser(cfg, lambda z, tau: net.forward(z, tau)[0])
    for sigma in (S_MIN, 0.05, 0.7, 3.7, S_MAX):
        x0, vjps = field(x, sigma, eye)
        np.testing.assert_allclose(x0, D(x, sigma), rtol=TOL["net64"], atol=TOL["net64"])
        cols = _fd_columns(field, x, sigma)
        # (dD/dx~)^T e_i is row i of the Jacobian: the i-th entry of every column
        np.testing.assert_allclose(vjps, np.transpose(cols, (2, 1, 0)), rtol=TOL["fd64_dir"], atol=TOL["fd64_dir"])


@pytest.mark.parametrize("cfg", [EDM, FLOW], ids=["edm", "flow"])
def test_E9_objective_field_of_a_unet_takes_any_probe_through_its_backward(cfg, rng):
    net = _random_net(UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4,
                           continuous_time=True, dtype=np.float64, seed=2), rng, scale=0.1)
    field, x = L.objective_field(cfg, net), rng.standard_normal((2, 1, 4, 4))
    v = rng.choice([-1.0, 1.0], size=(1,) + x.shape)
    cols = _fd_columns(field, x, 1.3)                          # (16, 2, 16): d D / d x~_i
    want = np.einsum("ind,nd->ni", cols, v[0].reshape(2, -1)).reshape(x.shape)   # v^T dD/dx~, per coordinate i
    np.testing.assert_allclose(field(x, 1.3, v)[1][0], want, rtol=TOL["fd64_dir"], atol=TOL["fd64_dir"])


class OracleAsNetwork:
    """The Gaussian oracle's exact denoiser G(x~, sigma~) = mu + Sigma (Sigma + sigma~^2 I)^{-1} (x~ - mu) written as
    the network an objective trains, with a hand-written backward. edm (Karras et al. Table 1 typed here):
    F(z, tau) = (G(x~) - c_skip x~) / c_out at x~ = z / c_in, sigma = exp(tau / 250) (c_noise = ln sigma / 4, times
    1000); flow: u(x_t, tau) = (x_t - G(x~)) / t at t = tau / 1000, x~ = x_t / (1 - t), sigma~ = t / (1 - t)."""

    def __init__(self, objective, mean, cov, sigma_data=0.7):
        self.objective, self.mean, self.cov, self.sd = objective, mean, cov, sigma_data

    def _parts(self, tau):
        """(scale of the input into x~, the map's Jacobian dout/dinput, sigma~, the affine output's pieces)."""
        tau = float(np.unique(tau)[0])
        if self.objective == "edm":
            s = math.exp(tau / 250.0)
            c_skip, c_out, c_in = self.sd**2 / (s**2 + self.sd**2), s * self.sd / math.sqrt(s**2 + self.sd**2), \
                1.0 / math.sqrt(s**2 + self.sd**2)
            to_x, lin_x, out = 1.0 / c_in, (-c_skip, 1.0), 1.0 / c_out   # F = (G - c_skip x~) / c_out
        else:
            t = tau / 1000.0
            s, to_x = t / (1.0 - t), 1.0 / (1.0 - t)
            lin_x, out = (1.0 - t, -1.0), 1.0 / t                         # u = ((1 - t) x~ - G) / t
        gain = self.cov @ np.linalg.inv(self.cov + s * s * np.eye(len(self.mean)))
        return to_x, lin_x, out, gain

    def forward(self, z, tau):
        to_x, (cx, cg), out, gain = self._parts(tau)
        xt = z * to_x
        G = self.mean + (xt - self.mean) @ gain.T
        return out * (cx * xt + cg * G), tau

    def backward(self, dout, tau):
        to_x, (cx, cg), out, gain = self._parts(tau)
        # d out / d z = out to_x (cx I + cg gain): its transpose applied to dout
        return out * to_x * (cx * dout + cg * dout @ gain), {}


def _closed_form_nats(x, mean, cov, s_min, s_max):
    """-log p of the exact Gaussian flow between s_min and s_max with the N(0, I) prior on the VP state (E3):
    x~(s) = mu + A(s)(x~(s_min) - mu), A = U diag(sqrt((lam + s^2) / (lam + s_min^2))) U^T, x_T = x~(s_max) /
    sqrt(1 + s_max^2); -log p = -log N(x_T; 0, I) - log det(d x_T / d x_0) (the change of variables, no ODE)."""
    lam, U = np.linalg.eigh(cov)
    a = np.sqrt((lam + s_max**2) / (lam + s_min**2))
    x_T = (mean + ((x - mean) @ U * a) @ U.T) / math.sqrt(1.0 + s_max**2)
    d = x.shape[1]
    logdet = np.sum(np.log(a)) - 0.5 * d * math.log1p(s_max**2)
    return 0.5 * np.sum(x_T**2, axis=1) + 0.5 * d * math.log(2 * math.pi) - logdet


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_E9_the_gaussian_oracle_as_an_objective_network_has_the_exact_nll(objective, rng):
    cfg = EDM if objective == "edm" else FLOW
    x = GaussianOracle(MEAN, cov=COV).sample(rng, 32)
    net = OracleAsNetwork(objective, MEAN, COV, sigma_data=EDM.sigma_data)
    assert objectives.sigma_range(cfg) == (S_MIN, S_MAX)
    tight = L.objective_nll(cfg, net, x, rtol=1e-9, atol=1e-9)
    assert (tight.sigma_min, tight.sigma_max) == (S_MIN, S_MAX)
    np.testing.assert_allclose(tight.nats, _closed_form_nats(x, MEAN, COV, S_MIN, S_MAX), atol=TOL["ode_tight"])
    # at the default tolerance, against the data's own density blurred by N(0, sigma_min^2 I) (G2): the ODE maps x_0
    # to x_T exactly, so the model's -log p differs from the blurred data's by the log-ratio of the exact terminal
    # law N(mu / sqrt(1 + s_max^2), (Sigma + s_max^2 I) / (1 + s_max^2)) to the prior N(0, I) at x_T, O(1 / s_max)
    r = L.objective_nll(cfg, net, x)
    blurred = GaussianOracle(MEAN, cov=COV + S_MIN**2 * np.eye(2)).nll_bpd(x) * 2 * math.log(2.0)   # nats
    end = GaussianOracle(MEAN / math.sqrt(1 + S_MAX**2), cov=(COV + S_MAX**2 * np.eye(2)) / (1 + S_MAX**2))
    prior_gap = r.prior_nats - end.nll_bpd(r.x_T) * 2 * math.log(2.0)
    np.testing.assert_allclose(r.nats, blurred + prior_gap, atol=TOL["ode_default"])
    assert np.abs(prior_gap).max() > 10 * TOL["ode_default"]     # the prior's share is not negligible here


def test_E9_objective_field_refuses_the_chain_objective():
    with pytest.raises(InputError, match="continuous objective"):
        L.objective_field(SimpleNamespace(objective="ddpm"), None)
