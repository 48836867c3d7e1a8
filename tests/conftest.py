"""Shared fixtures. Tolerances live in tests/tolerances.py (one table, each value with its reason)."""
import numpy as np
import pytest

from tolerances import TOL


@pytest.fixture
def tol():
    return TOL


@pytest.fixture
def rng():
    """A fresh, explicitly seeded generator per test: no global random state."""
    return np.random.default_rng(20201219)


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, restored after: the machine is shared, and for the small
    networks of these tests more threads only add contention. Used by a module through
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
