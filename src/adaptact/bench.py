"""Deprecated: the comparison moved to ``adaptact.experiments`` (``adaptact.compare``), its
networks to ``adaptact.models``, its data to ``adaptact.datasets`` and the kernel benchmark to
``adaptact.kernel_benchmark``."""

import warnings

from .experiments import compare, report

__all__ = ["compare", "report"]

warnings.warn("adaptact.bench is deprecated: use adaptact.compare and adaptact.report (adaptact.experiments)",
              DeprecationWarning, stacklevel=2)
