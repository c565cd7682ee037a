"""The activation comparison: the request (``request``), training one run (``train``), sweeps
over runs (``sweep``, ``executors``), the results database (``store``), reports with statistics
(``report``, ``stats``) and figures (``figures``).

``adaptact.compare(model, data, *, activations=..., ...)`` is the Python entry
(``comparison.py``); ``adaptact compare`` the command line's.
"""

from .comparison import compare, report, run
from .request import CompareRequest

__all__ = ["CompareRequest", "compare", "report", "run"]
