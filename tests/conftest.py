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
