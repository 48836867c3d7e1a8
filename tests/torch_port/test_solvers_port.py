"""Torch-only checks of torch_port/solvers.py, score.py and the mixture oracle: no host syncs in the
sampling loops, dtypes, bf16 autocast, torch.compile.

The "meta" device has no values, so any host sync (``.item()``, ``bool(tensor)``, ``.tolist()`` of a
device tensor) raises there: every solver, the sampling and inversion entries, ``model_denoiser`` and the
mixture oracle run on meta tensors (tests/torch_port/test_port_math.py does the same for the samplers).
``torch.compile(fullgraph=True)`` of each solver loop proves the same from the other side: a graph break
(a sync, data-dependent Python control flow) is an error there. On a GPU, the CUDA test runs the loops
under ``torch.cuda.set_sync_debug_mode("error")``.
"""
import numpy as np
import pytest
import torch

from torch_port import oracle as TO
from torch_port import schedules as TS
from torch_port import solvers as TSo
from torch_port.unet import MLP
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
W, MEANS = [0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]]
COVS = [[[0.1, 0.05], [0.05, 0.2]], [[0.2, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.1]]]


def _run_everything(sched, oracle, x, data_range=None):
    """Every solver through both entries, with the oracle as a continuous D and as a trained-style model
    (every prediction, every grid)."""
    outs, grids = [], [TSo.sigma_grid(sched, 6, grid) for grid in TSo.GRIDS]
    for k, (pred, sampler) in enumerate((p, s) for p in ("eps", "x0", "v") for s in TSo.SAMPLERS):
        D = TSo.model_denoiser(sched, oracle.denoiser(sched, pred), pred, clip_x0=True)
        outs.append(TSo.sample(D, x, grids[k % 4], sampler, record=True).x)   # each grid, pred and sampler
    outs += [TSo.invert(oracle.denoise_sigma, x, g, item_shape=(2,), data_range=data_range).x for g in grids]
    outs += [TSo.sample(oracle.denoise_sigma, x, TSo.karras_sigmas(6, 0.01, 80.0), s).x for s in TSo.SAMPLERS]
    return outs


def test_solvers_and_the_mixture_oracle_never_sync_off_the_cpu():
    sched = TS.Schedule(TS.make_betas("linear", 1000), validate=False).to("meta")
    oracle = TO.GaussianMixtureOracle(W, MEANS, cov=COVS).to("meta")
    x = torch.empty((4, 2), dtype=torch.float64, device="meta")
    for out in _run_everything(sched, oracle, x, data_range=(-1, 1)):   # the range check needs values: skipped
        assert out.device.type == "meta" and out.shape == (4, 2)
    for name in ("log_prob", "responsibilities", "score", "eps_mean"):
        assert getattr(oracle, name)(x, torch.full((4,), 0.3, dtype=torch.float64, device="meta")).device.type == "meta"


def test_each_solver_loop_compiles_to_one_graph():
    """fullgraph=True turns any graph break (a host sync, control flow on tensor values) into an error."""
    g = TSo.karras_sigmas(6, 0.01, 80.0).tolist()
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def D(x, sigma):  # the exact denoiser of N(0, I) data, in torch ops only
        return x / (1.0 + sigma * sigma)

    for name, solver in TSo.SOLVERS.items():
        compiled = torch.compile(lambda x, solver=solver: solver(D, x, g), backend="eager", fullgraph=True)
        assert torch.equal(compiled(x), solver(D, x, g)), name


def _random_mlp():
    """The port's MLP with every parameter drawn from N(0, 0.05^2): its output layer starts at zero, which
    would hide a cast, and larger weights give x0 predictions of thousands that no solver could follow."""
    m = MLP(seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.05, generator=gen)
    return m


def test_float32_state_stays_float32_and_bf16_autocast_stays_within_bf16_rounding():
    sched = TS.Schedule(TS.make_betas("linear", 1000))
    D = TSo.model_denoiser(sched, _random_mlp(), "x0")  # x0 outputs: the sample is the network's, not x_T's
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    g = TSo.sigma_grid(sched, 10, "karras")
    for sampler in TSo.SAMPLERS:
        with torch.no_grad():
            full = TSo.sample(D, x_T, g, sampler).x
            with torch.autocast("cpu", dtype=torch.bfloat16):
                amp = TSo.sample(D, x_T, g, sampler).x
        assert full.dtype == amp.dtype == torch.float32 and torch.isfinite(amp).all()
        rel = float((amp - full).norm() / full.norm())
        assert 0 < rel <= TOL["bf16net"], (sampler, rel)   # measured 0.9-1.0%: autocast acted, within bf16 rounding


@pytest.mark.slow
def test_a_compiled_network_samples_the_same_as_the_eager_one():
    """torch.compile (inductor: builds C++ on the CPU, ~10 s) of the network, the loop in Python around it."""
    sched = TS.Schedule(TS.make_betas("linear", 1000))
    m = _random_mlp()
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    g = TSo.sigma_grid(sched, 10, "karras")
    with torch.no_grad():
        eager = TSo.sample(TSo.model_denoiser(sched, m, "x0"), x_T, g, "dpm++2m").x
        compiled = TSo.sample(TSo.model_denoiser(sched, torch.compile(m), "x0"), x_T, g, "dpm++2m").x
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=TOL["net32"], atol=TOL["net32"])


@pytest.mark.gpu
@cuda
def test_cuda_solvers_run_without_syncs():
    sched = TS.Schedule(TS.make_betas("linear", 1000), validate=False).to("cuda")
    oracle = TO.GaussianMixtureOracle(W, MEANS, cov=COVS).to("cuda")
    x = torch.randn(4, 2, dtype=torch.float64, device="cuda")
    grids = {grid: TSo.sigma_grid(sched, 8, grid).tolist() for grid in TSo.GRIDS}  # host data, made before
    torch.cuda.set_sync_debug_mode("error")
    try:
        for g in grids.values():
            for pred in ("eps", "v"):
                D = TSo.model_denoiser(sched, oracle.denoiser(sched, pred), pred)
                for sampler in TSo.SAMPLERS:
                    TSo.sample(D, x, g, sampler)
            TSo.invert(oracle.denoise_sigma, x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
