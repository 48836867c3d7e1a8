"""The shared input checks, re-exported: they live in common/errors.py (not math: written once for both sides
and lab/). ``reference.errors.InputError is common.errors.InputError``, so ``except InputError`` catches either."""
from __future__ import annotations

from common.errors import *  # noqa: F401,F403
from common.errors import (InputError, check_batched, check_betas, check_choice, check_class_cond,  # noqa: F401
                           check_finite, check_int, check_labels, check_max_norm, check_number, check_progress,
                           check_rescaled, check_run_labels, check_same_shape, check_T, check_timesteps)
