"""Deprecated: the datasets moved to ``lab.data`` (tooling, not math). This module re-exports it for one
release, so scripts written against ``reference.data.load`` keep running; import ``lab.data`` instead.
The one file of reference/ that imports lab."""
import warnings

from lab.data import *  # noqa: F401,F403
from lab.data import __all__  # noqa: F401

warnings.warn("reference.data moved to lab.data; import lab.data instead (this re-export will be removed)",
              DeprecationWarning, stacklevel=2)
