"""An exact oracle as a network trained on discrete steps (import as `from oracle_net import AffineNet`): shared
by tests/derivations/test_likelihood.py and benchmarks/bench_page_figures.py."""
import numpy as np


class AffineNet:
    """An oracle for Gaussian data as a network trained on discrete steps: out = fn(x, t) is affine in x at
    every step, so its Jacobian is read off at the basis vectors and its backward is exact."""

    def __init__(self, fn, T, d):
        ts = np.arange(T)
        self.fn, self.b = fn, fn(np.zeros((T, d)), ts)
        self.J = np.stack([fn(np.tile(np.eye(d)[i], (T, 1)), ts) - self.b for i in range(d)], axis=1)

    def forward(self, x, t):
        return self.fn(x, t), t

    def backward(self, dout, t):
        return np.einsum("nio,no->ni", self.J[t], dout), {}
