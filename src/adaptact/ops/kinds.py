"""The activations the fused kernels compute, one record each: the ``kind`` number of the Triton
kernels (``ops/triton/kernels.py``), how an ``ops.autograd`` Function's parameters become the
kernels' a, b and c (``ops/triton/launch.py`` launches any kind from this), and the Function again
from a, b and c for the autograd fallback (``ops/fallback.py``). Beside the kernels, only the
generated activations' Function (``ops/triton/generated.py``) names a kind: the routes
(``ops.dispatch.Pointwise``) and the compiled entries work from the Function's name.

  AReLU         y = b x (x > 0), a x (x <= 0)      a = clamp(alpha, 0.01, 0.99), b = 1 + sigmoid(beta)
  ACON_C        y = a x sigmoid(c a x) + b x        a = p1 - p2, b = p2, c = beta (ACON-A/B, Meta-ACON-C)
  ACON_C_PIXEL  ACON_C with c = sigmoid(x)          (Meta-ACON-C, pixel-wise)
  APReLU        y = x (x > 0), c x (x <= 0)        c = alpha
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from . import autograd as AG

__all__ = ["ACON_C", "ACON_C_PIXEL", "APReLU", "AReLU", "KINDS", "Kind", "NAMED"]

AReLU, ACON_C, ACON_C_PIXEL, APReLU = range(4)

Operands = tuple["Tensor | None", "Tensor | None", "Tensor | None"]


@dataclass(frozen=True)
class Kind:
    """One activation of the kernels.

    Attributes:
        number: its ``KIND`` in the kernels.
        name: its memory-lean Function in ``ops.autograd`` (and the route's name in ``ops.dispatch``).
        parameters: which of a, b and c it has: the parameter gradients its backward kernel reduces.
        operands: the Function's parameters (viewed against x) as the kernels' (a, b, c); None for
            one it does not have.
        lean: the Function's numbers from (x, a, b, c), for when the kernels fail.
    """

    number: int
    name: str
    parameters: str
    operands: Callable[..., Operands]
    lean: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


KINDS: dict[int, Kind] = {kind.number: kind for kind in (
    Kind(AReLU, "arelu", "ab", lambda slope, gain: (slope, gain, None),
         lambda x, a, b, c: AG.arelu(x, a, b)),
    Kind(ACON_C, "acon_c", "abc", lambda p1, p2, beta: (p1 - p2, p2, beta),
         lambda x, a, b, c: AG.acon_c(x, a + b, b, c)),
    Kind(ACON_C_PIXEL, "acon_c_pixel", "ab", lambda p1, p2: (p1 - p2, p2, None),
         lambda x, a, b, c: AG.acon_c_pixel(x, a + b, b)),
    Kind(APReLU, "aprelu", "c", lambda alpha: (None, None, alpha),
         lambda x, a, b, c: AG.aprelu(x, c)),
)}

NAMED: dict[str, Kind] = {kind.name: kind for kind in KINDS.values()}
"""The kinds by their Function's name."""
