"""Helpers shared by the NumPy-vs-torch cross-tests (import as `from crosscheck import close, schedule_pair`)."""
import warnings

import numpy as np
import torch

from reference import schedules as RS
from tolerances import TOL
from torch_port import schedules as TS


def close(got, want, tol=TOL["cross64"]):
    """got (tensor or array) equals want to tol, relative and absolute (float64 NumPy vs torch)."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def schedule_pair(betas):
    """The reference's and the port's Schedule built from the same betas (prior warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RS.PriorMismatchWarning)
        return RS.Schedule(betas), TS.Schedule(torch.as_tensor(betas))
