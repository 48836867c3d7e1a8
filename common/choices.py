"""The choice lists both sides and the CLI share: names only, no math.

Each tuple is the set of values a flag or an argument accepts; the first entry is the default where a
default exists. The meaning of each name is derived in derivations/ and computed on each side.
"""
from __future__ import annotations

from . import objective_table as _objectives

# The training objectives of the design space (derivations/design_space.md): "ddpm" is the discrete chain
# trained as before (L_simple and its relatives over integer steps; --prediction, --loss, --weighting apply);
# "edm" is Karras et al. 2022's preconditioned denoiser on the process x = x0 + sigma eps; "flow" is flow
# matching / rectified flow on x_t = (1 - t) x0 + t eps with the velocity u = eps - x0 as the network's output.
# The names and defaults are read from common/objective_table.py, the one place that states them.
OBJECTIVES = _objectives.names()
CONTINUOUS_OBJECTIVES = _objectives.names(continuous=True)

# The noise processes x_t = alpha(t) x0 + sigma(t) eps in continuous time t in [0, 1] (t = 0 data, t = 1 noise).
PROCESSES = ("vp-linear", "vp-cosine", "ve", "edm", "flow")

# How flow matching draws its t: uniform on (0, 1), or SD3's logit-normal (t = sigmoid(m + s z), z ~ N(0, 1)).
T_SAMPLINGS = ("uniform", "logit-normal")

# The defaults of each objective's settings, from the papers (Karras et al. 2022, Table 1; Esser et al. 2024).
EDM_DEFAULTS = _objectives.row("edm").defaults()
FLOW_DEFAULTS = _objectives.row("flow").defaults()

# The objectives whose weighting w(lambda) over the log-SNR is computed (Kingma & Gao 2023's form; the
# design_space page, D16): every objective of the table (the chain's L_simple and its relatives, EDM, flow
# matching, NCSN's ladder).
WEIGHTINGS = _objectives.names()

# The chain's training losses (reference/vlb.py: L_simple, L_hybrid, the bound) and a run's network variances
# (C output channels, or 2C with the variance's interpolation, V1); the rules between them: common/rules.py.
LOSSES = ("simple", "hybrid", "vlb")
TRAIN_VARIANCES = ("fixed", "learned")

# Which steps a shortened chain keeps (derivations/sampling.md A5), and the grids of noise levels the ODE samplers
# run on: for a model of the trained chain, every grid is trained steps (the spacings' levels, or Karras et al.'s
# rho = 7 spacing snapped to them, K8); a model of a continuous objective takes any level in its sigma range, on
# Karras et al.'s grid or one uniform in the process's t (CONTINUOUS_GRIDS).
SPACINGS = ("leading", "trailing", "linspace")
GRIDS = SPACINGS + ("karras",)
CONTINUOUS_GRIDS = ("karras", "linspace")
