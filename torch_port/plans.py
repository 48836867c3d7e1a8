"""The network plans, re-exported: they live in common/plans.py (not math: one plan, walked by each side's
unet.py in its own way). The names unet.py and the tests call stay importable from here."""
from __future__ import annotations

from common.plans import (DOWNSAMPLE_PADDINGS, Step, check_num_classes, check_unet_args,  # noqa: F401
                          conv_padding, mlp_plan, state_dict_order, time_plan, unet_plan)

__all__ = ["DOWNSAMPLE_PADDINGS", "Step", "check_num_classes", "check_unet_args", "conv_padding", "mlp_plan",
           "state_dict_order", "time_plan", "unet_plan"]
