"""The activation comparison: data, models, training, sweeps, storage and reports.

``adaptact.bench.compare(model, data, activations, ...)`` is the Python entry (``comparison.py``).
"""

from .comparison import compare, report

__all__ = ["compare", "report"]
