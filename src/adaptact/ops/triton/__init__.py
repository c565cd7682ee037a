"""Fused Triton kernels behind ``backend="triton"`` (CUDA; CPU under ``TRITON_INTERPRET=1``).

``lean(name)`` computes ``adaptact.ops.autograd``'s Function ``name`` with the same arguments:
parameters arrive as views that broadcast against ``x`` on dims 0/1, and one fused kernel runs
each direction (``kernels.py``, launched for any kind of ``ops.kinds`` and registered as PyTorch
operators in ``launch.py``). Meta-ACON-C and APReLU, whose parameter is generated from a pool of
x, run as one Function that owns the generator (``generated.py``); Dynamic ReLU, whose K pieces
are generated so, has its own kernels and Function (``dy_relu.py``).
"""

from collections.abc import Callable

from torch import Tensor

from . import launch
from .dy_relu import dy_relu, generated_dy_relu
from .generated import generated_acon_c, generated_aprelu

__all__ = ["dy_relu", "generated_acon_c", "generated_aprelu", "generated_dy_relu", "lean"]


def lean(name: str) -> Callable[..., Tensor]:
    """``ops.autograd``'s Function ``name`` by its Triton kernels: Dynamic ReLU's own, or those of
    its kind (``ops.kinds``; a KeyError for a Function without a kernel)."""
    return dy_relu if name == "dy_relu" else launch.lean(name)
