"""The backends of an activation defined with ``adaptact.define``: its formula ``fn(x, **params)``, in
torch operations, is all there is, and every backend derives from it.

* reference: ``fn`` itself on x and the parameters viewed against x (autograd differentiates it).
* autograd: a memory-lean Function (``ops.autograd.lean_function``) that saves x and the parameters
  alone and recomputes ``fn`` in backward, differentiated there by ``torch.func.vjp``: first-order
  gradients, as the built-ins' Functions. float16/bfloat16 are computed in float32.
* compiled: that Function traced and compiled whole by Inductor (``ops.compiled``), forward and
  backward, as the built-ins' are; x enters as an (N, C, S) or (M, C) view, or flat where every
  parameter is a single value.
* triton: no kernel is generated; "auto" runs the others.

Parameters are single values (0-D) or one value per channel ((C,), viewed on x's dim 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import autograd as AG
from . import compiled as CP
from .dispatch import resolve

__all__ = ["DefinedOp"]

Formula = Callable[..., Tensor]


def _view(p: Tensor, x: Tensor) -> Tensor:
    """A parameter (0-D, or (C,) for x's dim 1) viewed so it broadcasts against x."""
    if p.ndim == 0 or x.ndim <= 2:
        return p
    return p.reshape((-1,) + (1,) * (x.ndim - 2))


class DefinedOp:
    """The backends of one defined formula: ``op(x, *params, backend)`` with ``params`` in the order
    of ``names``, each 0-D or (C,) for x's dim 1; every backend returns ``fn``'s numbers in x's
    dtype."""

    def __init__(self, name: str, fn: Formula, names: Sequence[str]) -> None:
        self.fn, self.names = fn, tuple(names)
        self.function = AG.lean_function(f"{name}Function", self._forward, self._backward)
        function = self.function

        def traced(x: Tensor, *params: Tensor) -> Tensor:
            return AG.apply(function, x, *(_view(p, x) for p in params))

        # a code object of its own: torch.compile's graphs and recompile limit are per code object
        self.traced = CP.own_code(traced)
        self.traced.__qualname__ = f"{name} (adaptact.define)"  # what a long compile's notice names

    def formula(self, x: Tensor, *params: Tensor) -> Tensor:
        """``fn`` on x and the parameters (already viewed against x), in x's dtype."""
        y = self.fn(x, **dict(zip(self.names, params, strict=True)))
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _forward(self, x: Tensor, *params: Tensor) -> Tensor:
        return self.formula(*AG.up(x, *params)).to(x.dtype)

    def _backward(self, dy: Tensor, x: Tensor, *params_and_want) -> tuple:
        *params, want = params_and_want
        inputs = AG.up(x, *params)
        vjp = torch.func.vjp(self.formula, *inputs)[1]
        grads = vjp(dy.to(inputs[0].dtype))
        return tuple(g if w else None for g, w in zip(grads, want, strict=True))

    def reference(self, x: Tensor, *params: Tensor) -> Tensor:
        return self.formula(x, *(_view(p.to(x.dtype), x) for p in params))

    def __call__(self, x: Tensor, *params_and_backend) -> Tensor:
        *params, backend = params_and_backend
        b = resolve(backend, x, *params)
        if b == "reference":
            return self.reference(x, *params)
        if b == "compiled":
            y = CP.from_parameters(self.traced, x, *params)
            if y is not None:
                return y
        return self.traced(x, *params)
