"""Data-parallel training (DDP, gloo on the CPU) gives the single-process step on the whole batch.

Two processes (this file run as a script with RANK and WORLD_SIZE set; they meet through a file store)
each take one train_step of a DDP-wrapped float64 model on their half of one batch (explicit x0,
t and eps slices). DDP averages the two half-batch gradients, which is the gradient of the
full-batch mean loss (L4 is a mean over equal halves), so after the step:
  - both ranks hold bitwise EQUAL parameters, EMA and Adam moments (one all-reduced gradient,
    the same deterministic AdamW on each rank);
  - they equal a single-process train_step on the full batch within TOL["cross64"] (float64; the
    only difference is the order of the gradient sum: (g_a/2 + g_b/2) vs (sum over the batch)/N).
The last test runs `torchrun --nproc_per_node=2 -m torch_port train` end to end (10-20 s) and loads
its checkpoint (no ``module.`` keys) on the reference side.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tolerances import TOL  # noqa: E402

MODELS = {
    "unet": dict(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=(False, True),
                 groups=4),
    "mlp": dict(hidden=32, num_layers=2, time_dim=16),
}
SHAPES = {"unet": (8, 1, 8, 8), "mlp": (8, 2)}
T, LR, EMA_DECAY = 1000, 1e-2, 0.9


def _batch(name):
    """The full batch, identical in every process: x0, t, eps (float64, seeded)."""
    rng = np.random.default_rng(7)
    shape = SHAPES[name]
    return (rng.uniform(-1, 1, shape), rng.integers(0, T, shape[0]), rng.standard_normal(shape))


def _setup(name):
    """A float64 model with random (nonzero) final layer, its AdamW, EMA and schedule (same in every process)."""
    from torch_port import optim, unet
    from torch_port.schedules import Schedule, make_betas

    model = (unet.UNet if name == "unet" else unet.MLP)(**MODELS[name], dtype=torch.float64, seed=3)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return (model, optim.AdamW(model, lr=LR, weight_decay=0.01), optim.EMA(model, decay=EMA_DECAY),
            Schedule(make_betas("cosine", T)))


def _one_step(name, model, opt, ema, sched, sl):
    from torch_port.train import train_step

    x0, t, eps = (torch.from_numpy(a[sl]) for a in _batch(name))
    train_step(model, opt, ema, sched, x0, t, eps, "eps", lr=LR, grad_clip=1.0)
    return {**{"p/" + k: v.detach().numpy() for k, v in opt._named_params().items()},
            **{"ema/" + k: v.numpy() for k, v in ema.params.items()},
            **{k: v.numpy() for k, v in opt.flat_state_dict().items()}}


def _worker(out_dir):
    """One rank: DDP step on this rank's contiguous half of the batch; writes its state to out_dir.

    The ranks meet through a file store in out_dir (no TCP port to pick: nothing can take it between
    choosing and binding). After both ranks have written their results and destroyed the process group,
    the worker leaves through os._exit(0): the interpreter's teardown, where a gloo thread left joinable can
    abort the process ("terminate called without an active exception", seen once in CI), is not what this
    file tests. A rank that fails before that exits non-zero.
    """
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out_dir, "store"), rank=rank,
                            world_size=world)
    for name in MODELS:
        model, opt, ema, sched = _setup(name)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        b = SHAPES[name][0] // world
        np.savez(os.path.join(out_dir, f"{name}_rank{rank}.npz"),
                 **_one_step(name, ddp, opt, ema, sched, slice(rank * b, (rank + 1) * b)))
        del ddp
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for `tolerances` in the workers
    env = dict(os.environ, WORLD_SIZE="2", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, __file__, str(out)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"a DDP worker failed:\n{log}"
    return {name: [dict(np.load(out / f"{name}_rank{r}.npz")) for r in range(2)] for name in MODELS}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", sorted(MODELS))
def test_O1_O2_ddp_ranks_hold_equal_parameters_after_a_step(ddp_results, name):
    r0, r1 = ddp_results[name]
    assert r0.keys() == r1.keys()
    for k in r0:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_L4_O1_O2_ddp_step_on_halves_equals_single_process_step_on_full_batch(ddp_results, name):
    model, opt, ema, sched = _setup(name)
    single = _one_step(name, model, opt, ema, sched, slice(None))
    before = {"p/" + k: v.detach().numpy() for k, v in _setup(name)[0].named_parameters()}
    r0 = ddp_results[name][0]
    assert r0.keys() == single.keys()
    for k, a in single.items():
        b = r0[k]
        np.testing.assert_allclose(b, a, rtol=TOL["cross64"], atol=TOL["cross64"] * max(np.max(np.abs(a)), 1e-300),
                                   err_msg=k)
        if k in before:  # the step did move every parameter (the comparison is not vacuous)
            assert not np.array_equal(a, before[k]), k


# ---- torchrun end to end ----------------------------------------------------------------------------

def test_torchrun_two_processes_train_and_the_reference_loads_the_checkpoint(tmp_path):
    """`torchrun --nproc_per_node=2 -m torch_port train` on the CPU: rank 0 writes one checkpoint whose keys
    are the reference's parameter names (no ``module.``), and the reference's sample command loads it.
    (10-20 s on a shared 2-core machine: two processes importing torch, gloo, the final pictures.)"""
    from lab import checkpoint
    from lab.backend import Backend
    from lab.sampling import draw, load_trainer
    from reference.unet import MLP

    out = tmp_path / "run"
    # torch.distributed.run is what the torchrun script runs; through sys.executable it needs no PATH
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "torch_port", "train", "--data", "moons",
           "--out", str(out), "--steps", "20", "--batch-size", "64", "--log-every", "5", "--save-every", "10",
           "--sample-steps", "5", "--device", "cpu", "--quiet", "--hidden", "32", "--num-layers", "2"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.perf_counter() - t0 < 300
    assert res.stdout.count("trained 20 steps") == 1  # rank 0 alone reports
    ck = checkpoint.load(out / "ckpt.npz")
    assert ck.step == 20
    want = set(MLP(hidden=32, num_layers=2).params)
    assert set(ck.params) == want and set(ck.ema) == want
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck.opt_state)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20]  # one writer: no duplicated lines
    trainer, _ = load_trainer(Backend("reference"), out / "ckpt.npz")
    x = draw(Backend("reference"), trainer, 16, seed=0, steps=5)
    assert x.shape == (16, 2) and np.all(np.isfinite(x))


if __name__ == "__main__":
    _worker(sys.argv[1])
