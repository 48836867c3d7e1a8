"""Fixtures of the reliability tests."""
import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op torch thread in this process, as in the subprocesses (OMP_NUM_THREADS=1): the machine
    is shared, and on tiny models more threads only add contention."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
