"""The backends of an activation defined with ``adaptact.define``: its formula ``fn(x, **params)``, in
torch operations, is all there is, and every backend derives from it.

* reference: ``fn`` itself on x and the parameters viewed against x (autograd differentiates it).
* autograd: a memory-lean Function (``ops.autograd.lean_function``) that saves x and the parameters
  alone and recomputes ``fn`` in backward, differentiated there by autograd: first-order gradients,
  as the built-ins' Functions. float16/bfloat16 are computed in float32.
* compiled: ``fn`` compiled by Inductor (``ops.compiled``), forward and backward: for a pointwise
  formula its partitioner keeps x and the parameters alone and recomputes the rest in backward (a
  test measures it). x enters as an (N, C, S) or (M, C) view.
* inside a user's ``torch.compile``: ``fn``, compiled with the rest of their graph.
* triton: no kernel is generated; "auto" runs the others.

Parameters are single values (0-D) or one value per channel ((C,), viewed on x's dim 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import functional as AF
from . import autograd as AG
from . import compiled as CP
from .dispatch import resolve

__all__ = ["DefinedOp"]

Formula = Callable[..., Tensor]


class DefinedOp:
    """The backends of one defined formula: ``op(x, *params, backend=...)`` with ``params`` in the order
    of ``names``, each 0-D or (C,) for x's dim 1; every backend returns ``fn``'s numbers in x's
    dtype."""

    def __init__(self, name: str, fn: Formula, names: Sequence[str]) -> None:
        self.fn, self.names = fn, tuple(names)
        self.function = AG.lean_function(f"{name}Function", self._forward, self._backward)

        def traced(x: Tensor, *params: Tensor) -> Tensor:
            return self.formula(x, *(AF.channel_view(p, x) for p in params))

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
        """The formula again, from the saved x and parameters, differentiated by autograd."""
        *params, want = params_and_want
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(w) for t, w in zip(AG.up(x, *params), want, strict=True)]
            y = self.formula(*inputs)
            asked = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(y, asked, dy.to(y.dtype), allow_unused=True,
                                             materialize_grads=True))
        return tuple(next(grads) if w else None for w in want)

    def __call__(self, x: Tensor, *params: Tensor, backend: str = "auto") -> Tensor:
        if torch.compiler.is_compiling():  # in a user's torch.compile: the formula, compiled with the rest
            return self.traced(x, *params)
        b = resolve(backend, x, *params)
        if b == "reference":
            return self.traced(x, *params)
        if b == "compiled":  # Inductor's partitioner recomputes the pointwise formula: x alone is kept
            y = CP.from_parameters(self.traced, x, *params)
            if y is not None:
                return y
        return AG.apply(self.function, x, *(AF.channel_view(p, x, cast=False) for p in params))
