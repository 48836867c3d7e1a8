"""NumPy reference vs torch port, float64: the ODE likelihood of the continuous objectives' networks (E9), and
`eval --nll ode` end to end on edm and flow models of moons trained on either side.

The two fields are independent routes to one D and its VJPs: the reference's coefficients (a, b, c, tau) with the
network's hand-written backward, the port's own objectives.denoiser differentiated by autograd. A random network's
field oscillates fast in log sigma (its time input is 250 ln sigma or 1000 t), so whole solves are compared where
the solver resolves it, rtol 1e-8, and take the same steps there (TOL["ode_cross_cont"] says why); images by the
drift of the ODE itself. Noise is drawn once in NumPy and fed to both sides.
"""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from crosscheck import close
from lab import cli
from reference import likelihood as RL
from reference import unet as RU
from tolerances import TOL
from torch_port import likelihood as TL
from torch_port import unet as TU

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tt = torch.from_numpy
CFGS = {"edm": SimpleNamespace(objective="edm", sigma_data=0.6), "flow": SimpleNamespace(objective="flow")}
MLP_KW = dict(hidden=32, num_layers=2, time_dim=16, continuous_time=True)
UNET_KW = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), attention=(False, True), groups=4,
               continuous_time=True)


def _twins(ref_cls, port_cls, kw, rng, scale=0.1):
    ref = ref_cls(**kw, dtype=np.float64)
    ref.load_params({k: v + scale * rng.standard_normal(v.shape) for k, v in ref.params.items()})
    port = port_cls(**kw, dtype=torch.float64)
    port.load_state_dict({k: tt(v) for k, v in ref.params.items()})
    return ref, port


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_E9_objective_fields_and_their_vjps_match(objective, rng):
    cfg = CFGS[objective]
    for cls, kw, shape in ((("MLP", MLP_KW, (5, 2))), ("UNet", UNET_KW, (2, 1, 4, 4))):
        ref, port = _twins(getattr(RU, cls), getattr(TU, cls), kw, rng)
        fr, fp = RL.objective_field(cfg, ref), TL.objective_field(cfg, port)
        x, P = rng.standard_normal(shape), rng.standard_normal((3,) + shape)
        for sigma in (0.002, 0.05, 1.0, 7.3, 80.0):
            (Dr, Vr), (Dp, Vp) = fr(x, sigma, P), fp(tt(x), sigma, tt(P))
            close(Dp, Dr, TOL["net64"])
            close(Vp, Vr, TOL["net64"])


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_E3_E9_objective_nll_matches(objective, rng):
    cfg = CFGS[objective]
    ref, port = _twins(RU.MLP, TU.MLP, MLP_KW, rng)
    x = rng.standard_normal((4, 2)) * 0.5
    a = RL.objective_nll(cfg, ref, x, rtol=1e-8, atol=1e-8)
    b = TL.objective_nll(cfg, port, tt(x), rtol=1e-8, atol=1e-8)
    assert (a.nfe, a.steps, a.sigma_min, a.sigma_max) == (b.nfe, b.steps, b.sigma_min, b.sigma_max)
    for name in ("nats", "bpd", "prior_nats", "x_T"):
        close(getattr(b, name), getattr(a, name), TOL["ode_cross_cont"])


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_E2_E4_E9_the_drift_of_a_unet_with_hutchinson_probes_matches(objective, rng):
    ref, port = _twins(RU.UNet, TU.UNet, UNET_KW, rng)
    x = rng.standard_normal((2, 1, 4, 4))
    P, w = RL.make_probes("hutchinson", x.shape, n_probes=2, rng=rng)
    rr = RL.pf_ode_rhs(RL.objective_field(CFGS[objective], ref), P, w, x.shape)
    rp = TL.pf_ode_rhs(TL.objective_field(CFGS[objective], port), tt(P), w, x.shape)
    y = np.concatenate([x.reshape(-1), np.zeros(2)])
    for sigma in (0.002, 0.3, 5.0, 80.0):
        close(rp(math.log(sigma), tt(y)), rr(math.log(sigma), y), TOL["net64"])


# ---- end to end: train 20 steps on moons on either side, `eval --nll ode` on both --------------------------

def _train(out, objective, backend):
    flags = ["--data", "moons", "--objective", objective, "--steps", "20", "--out", str(out), "--save-every", "0",
             "--sample-every", "0", "--no-final-samples", "--quiet"]
    assert cli.main(["train", *flags], backend=backend) == 0
    return out / "ckpt.npz"


def _eval(ckpt, js, backend, *flags):
    quick = ["--n", "20", "--sampler", "euler", "--sample-steps", "5", "--repeats", "1", "--bpd-n", "8"]
    assert cli.main(["eval", "--ckpt", str(ckpt), *quick, "--json", str(js), *flags], backend=backend) == 0
    return json.loads(js.read_text())


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_E9_eval_nll_ode_of_edm_and_flow_models_prints_bits_per_dim_on_both_sides(objective, tmp_path, capsys):
    for trained_by in ("reference", "torch"):
        ckpt = _train(tmp_path / trained_by, objective, trained_by)
        capsys.readouterr()
        res = {side: _eval(ckpt, tmp_path / f"{trained_by}_{side}.json", side, *(["--nll", "ode"] if side ==
                                                                                  "reference" else []))
               for side in ("reference", "torch")}   # the port's with --nll omitted: the ODE, its default
        out = capsys.readouterr().out
        assert out.count("ODE (probability flow, exact likelihood):") == 2 and "bits/dim)" in out
        assert "bound," not in out
        for r in res.values():
            o = r["ode"]
            assert r["nll"] == "ode" and "bound" not in r and o["divergence"] == "exact" and o["probes"] == 2
            assert (o["sigma_min"], o["sigma_max"]) == (0.002, 80.0)      # EDM's sampling range, both objectives
            assert math.isfinite(o["nats"]) and o["bits_per_dim"] == pytest.approx(o["nats"] / (2 * math.log(2)))
        # one float32 checkpoint, two implementations of its field and solver
        assert res["torch"]["ode"]["nfe"] == res["reference"]["ode"]["nfe"]
        assert res["torch"]["ode"]["nats"] == pytest.approx(res["reference"]["ode"]["nats"],
                                                            rel=TOL["ode_cross_net32"])
