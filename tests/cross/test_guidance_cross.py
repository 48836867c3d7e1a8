"""Classifier-free guidance, NumPy reference vs torch port in float64 (derivations/guidance.md, W1-W5): the
conditional mixture oracle, one guided pass of a random conditional network, every guided sampler step by step
(DDPM, DDIM, and the ODE solvers through model_denoiser), a conditional training step, and the refusals.

Tolerances: TOL["cross64"] per function and per step of every sampler (measured within it for the ODE solvers too,
whose state x~ = x sqrt(1 + sigma^2) is up to 157 times x); TOL["net64"] for a whole training step (two
whole-network routes, as test_train_cross.py).
"""
import warnings

import numpy as np
import pytest
from crosscheck import close, schedule_pair
from tolerances import TOL, mc_close

torch = pytest.importorskip("torch")

from reference import guidance as RG  # noqa: E402
from reference import oracle as RO  # noqa: E402
from reference import samplers as RS  # noqa: E402
from reference import solvers as RSo  # noqa: E402
from reference import train as RT  # noqa: E402
from reference import unet as RU  # noqa: E402
from reference.errors import InputError  # noqa: E402
from reference.schedules import PriorMismatchWarning, make_betas  # noqa: E402
from torch_port import guidance as TG  # noqa: E402
from torch_port import oracle as TO  # noqa: E402
from torch_port import samplers as TS  # noqa: E402
from torch_port import solvers as TSo  # noqa: E402
from torch_port import train as TT  # noqa: E402
from torch_port import unet as TU  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
tt = torch.from_numpy
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]
MLP_KW = dict(hidden=32, num_layers=2, time_dim=16, num_classes=3)


@pytest.fixture(scope="module")
def scheds():
    return schedule_pair(make_betas("linear", 1000))


@pytest.fixture
def nets(rng):
    """Reference and port conditional MLPs (float64) with the same random parameters, the class table too."""
    ref = RU.MLP(**MLP_KW, dtype=np.float64)
    ref.load_params({k: rng.uniform(-0.3, 0.3, v.shape) for k, v in ref.params.items()})
    port = TU.MLP(**MLP_KW, dtype=torch.float64)
    port.load_state_dict({k: tt(v.copy()) for k, v in ref.params.items()})
    return (lambda x, t, y: ref.forward(x, t, y)[0]), (lambda x, t, y: port(x, t, y)), ref, port


def test_W5_the_conditional_oracle_matches(scheds):
    ro, to = RO.GaussianMixtureOracle(W, MEANS, cov=COVS), TO.GaussianMixtureOracle(W, MEANS, cov=COVS)
    x, y = np.random.default_rng(0).standard_normal((6, 2)), np.array([0, 1, 2, 3, 2, 0])  # 3: the null class
    for a in (0.9, 0.3, 0.01):
        for name in ("x0_mean", "eps_mean", "score", "log_prob"):
            close(getattr(to, name)(tt(x), a, tt(y)), getattr(ro, name)(x, a, y))
    ref, port = scheds
    t = np.array([0, 3, 400, 700, 990, 999])
    for pred in ("eps", "x0", "v"):
        close(to.denoiser(port, pred)(tt(x), tt(t), tt(y)), ro.denoiser(ref, pred)(x, t, y))


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0])
def test_W2_one_guided_pass_matches_and_the_port_runs_one_batched_forward(nets, rng, s):
    ref_model, port_model, _, _ = nets
    calls = []
    counted = lambda x, t, y: calls.append(tuple(x.shape)) or port_model(x, t, y)  # noqa: E731
    x, t, y = rng.standard_normal((5, 2)), rng.integers(0, 1000, 5), np.array([0, 2, 2, 1, 0])
    close(TG.guided(counted, tt(y), s, 3)(tt(x), tt(t)), RG.guided(ref_model, y, s, 3)(x, t))
    assert calls == [(5, 2) if s in (0.0, 1.0) else (10, 2)]


def _chain(S, G, sched, model, x_T, noises, sampler, eta, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PriorMismatchWarning)
        return S.sample_loop(sched, G.guided(model, y, 2.5, 3), x_T, noises, sampler, steps=20, spacing="trailing",
                             eta=eta, record=True)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_W2_W4_guided_chains_agree_step_by_step(nets, scheds, rng, sampler, eta):
    ref_model, port_model, _, _ = nets
    ref, port = scheds
    x_T, y = rng.standard_normal((8, 2)), np.arange(8) % 3
    noises = [rng.standard_normal((8, 2)) for _ in range(20)]
    r = _chain(RS, RG, ref, ref_model, x_T, noises, sampler, eta, y)
    p = _chain(TS, TG, port, port_model, tt(x_T), [tt(n) for n in noises], sampler, eta, tt(y))
    close(p.x, r.x)
    for (t_r, x_r, x0_r), (t_p, x_p, x0_p) in zip(r.trajectory, p.trajectory):
        assert t_r == t_p
        close(x_p, x_r)
        close(x0_p, x0_r)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm++2m"])
def test_W4_guided_ode_solvers_agree_step_by_step(nets, scheds, rng, sampler):
    ref_model, port_model, _, _ = nets
    ref, port = scheds
    x_T, y = rng.standard_normal((8, 2)), np.arange(8) % 3
    r = RSo.sample(RSo.model_denoiser(ref, RG.guided(ref_model, y, 2.5, 3), "v"), x_T,
                   RSo.sigma_grid(ref, 12, "karras"), sampler, record=True)
    p = TSo.sample(TSo.model_denoiser(port, TG.guided(port_model, tt(y), 2.5, 3), "v"), tt(x_T),
                   TSo.sigma_grid(port, 12, "karras"), sampler, record=True)
    close(p.x, r.x)
    for (s_r, x_r, x0_r), (s_p, x_p, x0_p) in zip(r.trajectory, p.trajectory):
        close(s_p, s_r)  # each side's table of trained sigmas, equal to an ulp
        close(x_p, x_r)
        close(x0_p, x0_r)


def test_W1_a_conditional_training_step_agrees(nets, scheds, rng):
    """train_step with the same t, eps and labels (the null class among them), three steps in a row."""
    _, _, ref_net, port_net = nets
    ref, port = scheds
    from reference import optim as ROp
    from torch_port import optim as TOp
    r_opt, r_ema = ROp.AdamW(ref_net.params, lr=3e-3), ROp.EMA(ref_net.params, decay=0.9)
    p_opt, p_ema = TOp.AdamW(port_net, lr=3e-3), TOp.EMA(port_net, decay=0.9)
    for _ in range(3):
        x0, eps = rng.standard_normal((16, 2)), rng.standard_normal((16, 2))
        t, y = rng.integers(0, 1000, 16), rng.integers(0, 4, 16)
        lr, gr = RT.train_step(ref_net, r_opt, r_ema, ref, x0, t, eps, y=y)
        lp, gp = TT.train_step(port_net, p_opt, p_ema, port, tt(x0), tt(t), tt(eps), y=tt(y))
        close(float(lp), lr, TOL["net64"])
        close(float(gp), gr, TOL["net64"])
    sd = port_net.state_dict()
    for k, v in ref_net.params.items():
        close(sd[k], v, TOL["net64"])


def test_both_sides_refuse_the_same_guidance_inputs(nets):
    ref_model, port_model, _, _ = nets
    for args in [(np.array([0, 3]), 2.0, 3), (np.array([-1]), 2.0, 3), (1, -0.5, 3), (1, float("nan"), 3),
                 (1, True, 3), (1, 2.0, None), (np.array([0.5]), 2.0, 3)]:
        with pytest.raises(InputError) as r:
            RG.guided(ref_model, *args)
        with pytest.raises(InputError) as p:
            TG.guided(port_model, *args)
        assert str(p.value) == str(r.value)
    assert "class 3 is out of range: the model has 3 classes, 0..2" in str(
        pytest.raises(InputError, RG.guided, ref_model, 3, 2.0, 3).value)
    assert "unconditional" in str(pytest.raises(InputError, RG.guided, ref_model, 1, 2.0, None).value)
    assert "guidance scale must be a finite number >= 0" in str(pytest.raises(InputError, RG.guided, ref_model, 1,
                                                                                -1, 3).value)


def test_W1_the_ports_label_dropout_is_p_uncond_and_comes_after_t_and_eps():
    """The port's Trainer (per-step generator): 20 steps of 256 labels at p_uncond = 0.3, the share dropped within
    5 standard errors; t and eps are the unconditional run's at every step (the drop is drawn after them)."""
    from lab.config import make_config
    kw = dict(batch_size=256, model=dict(hidden=16, num_layers=1))
    cond = TT.Trainer(make_config("moons", class_cond=True, p_uncond=0.3, **dict(kw, model=dict(kw["model"],
                                                                                                num_classes=2))),
                      (2,), device="cpu")
    plain = TT.Trainer(make_config("moons", **kw), (2,), device="cpu")
    seen = {}
    for name, tr in (("cond", cond), ("plain", plain)):
        forward, seen[name] = tr.net.forward, []
        tr.net.forward = lambda x, t, *y, f=forward, out=seen[name]: out.append((t.clone(), y)) or f(x, t, *y)
    data = np.random.default_rng(4)
    for step in range(20):
        x0, y = tt(data.standard_normal((256, 2)).astype(np.float32)), tt(data.integers(0, 2, 256))
        cond.step(x0, step, y=y)
        plain.step(x0, step)
        got = seen["cond"][-1][1][0]
        kept = got != 2
        assert torch.equal(got[kept], y[kept]) and torch.equal(seen["cond"][-1][0], seen["plain"][-1][0])
    dropped = np.mean([float((y[0] == 2).double().mean()) for _, y in seen["cond"]])
    assert mc_close(dropped, 0.3, np.sqrt(0.3 * 0.7 / (20 * 256)))
