"""adaptact: attention-based and adaptive activation functions for PyTorch.

    >>> import adaptact
    >>> act = adaptact.create("acon_c", channels=64)
    >>> adaptact.available("adaptive")[:5]
    ['acon_a', 'acon_b', 'acon_c', 'aprelu', 'arelu']
"""

from importlib.metadata import PackageNotFoundError, version

from . import functional
from .convert import replace_activations
from .nn import (
    APL,
    PAU,
    SLAF,
    AconA,
    AconB,
    AconC,
    APReLU,
    AReLU,
    CReLU,
    DyReLU,
    FReLU,
    Maxout,
    MetaAconC,
    Mixture,
    Swish,
)
from .huggingface import install as _install_transformers_names
from .optim import param_groups
from .registry import ActivationSpec, available, create, get, get_act_layer, spec
from .user_activations import define

try:
    __version__ = version("adaptact")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

__all__ = [
    "APL",
    "PAU",
    "SLAF",
    "APReLU",
    "AReLU",
    "AconA",
    "AconB",
    "AconC",
    "ActivationSpec",
    "CReLU",
    "DyReLU",
    "FReLU",
    "Maxout",
    "MetaAconC",
    "Mixture",
    "Swish",
    "available",
    "compare",
    "create",
    "define",
    "functional",
    "get",
    "get_act_layer",
    "param_groups",
    "replace_activations",
    "report",
    "spec",
]

_install_transformers_names()


def __getattr__(name: str):
    """``compare`` and ``report`` (``adaptact.experiments``) load on first use: the comparison's
    modules (SQLite store, executors, reports) stay out of ``import adaptact``."""
    if name in ("compare", "report"):
        from . import experiments

        return getattr(experiments, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
