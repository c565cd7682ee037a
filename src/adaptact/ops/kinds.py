"""The activations the fused paths compute, by number: the ``kind`` of the Triton kernels and ops
(``ops/triton``) and of their autograd fallback (``ops/fallback.py``). a, b, c are the parameters:

  AReLU         y = b x (x > 0), a x (x <= 0)      a = clamp(alpha, 0.01, 0.99), b = 1 + sigmoid(beta)
  ACON_C        y = a x sigmoid(c a x) + b x        a = p1 - p2, b = p2, c = beta (ACON-A/B, Meta-ACON-C)
  ACON_C_PIXEL  ACON_C with c = sigmoid(x)          (Meta-ACON-C, pixel-wise)
  APReLU        y = x (x > 0), c x (x <= 0)        c = alpha
"""

from collections.abc import Callable

from torch import Tensor

from . import autograd as AG

AReLU, ACON_C, ACON_C_PIXEL, APReLU = range(4)

# Which of a, b, c each kind has, and so which parameter gradients it reduces.
PARAMETERS = {AReLU: "ab", ACON_C: "abc", ACON_C_PIXEL: "ab", APReLU: "c"}

# Each kind as ``ops.autograd``'s lean Function of (x, a, b, c): what runs when its kernels fail
# under backend="auto" (``ops.fallback``).
LEAN: dict[int, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    AReLU: lambda x, a, b, c: AG.arelu(x, a, b),
    ACON_C: lambda x, a, b, c: AG.acon_c(x, a + b, b, c),
    ACON_C_PIXEL: lambda x, a, b, c: AG.acon_c_pixel(x, a + b, b),
    APReLU: lambda x, a, b, c: AG.aprelu(x, c),
}
