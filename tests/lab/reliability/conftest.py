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


def pytest_collection_modifyitems(items):
    """These runs use tiny T and 2-5 picture-sampling steps on purpose (speed), so leading spacing starts
    where signal is left and the sampler rightly warns; that warning is not what these tests are about
    (tests/reference/test_samplers.py checks it)."""
    for item in items:
        if "reliability" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::reference.schedules.PriorMismatchWarning"))
