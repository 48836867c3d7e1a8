"""Thread counts for small models: a 2-D MLP's matrices (batch x 128) are too small for a second BLAS or
torch thread to pay, and on a busy 2-core machine the second thread made a training step several times slower
(benchmarks/README.md has the figures).
``one_thread(small)`` runs its block on one thread (NumPy's BLAS through threadpoolctl when installed, and
torch's intra-op pool) when ``small``, and restores the counts after; otherwise it does nothing."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def one_thread(small=True):
    if not small:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # threadpoolctl comes with scikit-learn (the [data] extra); without it, no limit
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1))
        import sys
        torch = sys.modules.get("torch")  # only a torch already in use: the reference side never imports it
        if torch is not None:
            n = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, n)
        yield


def is_small(item_shape):
    """Point data: the MLP, whose steps are too small for more than one thread."""
    return len(tuple(item_shape)) == 1
