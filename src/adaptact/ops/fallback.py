"""When a Triton kernel fails under ``backend="auto"``: the autograd backend's numbers instead.

A module running the Triton path because it chose "auto" marks the autograd node of its output
with a callback (``mark``). Should a backward kernel then fail to compile or launch, the backward
calls it (the module warns once and runs "autograd" from then on) and returns the gradients of
``ops.autograd``'s Functions for the same saved inputs (``activation_grads``). Forward failures
are caught in the module itself (``nn.base.ActivationModule``). With ``backend="triton"`` nothing
is marked and failures raise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import kinds

__all__ = ["activation_grads", "handler", "kernels_or_autograd", "mark"]

KEY = "adaptact_fallback"

def mark(y: Tensor, on_failure: Callable[[BaseException], None]) -> Tensor:
    """Attach ``on_failure`` to the autograd node that produced ``y``."""
    if y.grad_fn is not None:
        metadata: dict = y.grad_fn.metadata  # type: ignore[assignment]  # a dict, typed as a method
        metadata[KEY] = on_failure
    return y


def handler(ctx) -> Callable[[BaseException], None] | None:
    """The callback ``mark`` attached to this backward's node, if any."""
    return getattr(ctx, "metadata", {}).get(KEY)


def kernels_or_autograd(ctx, gradients: Callable[..., tuple], dy: Tensor, readable: Tensor) -> tuple:
    """``gradients(ctx, readable, kernels=True)``; if the kernels fail and the forward ran under
    backend="auto", the module's callback is told and ``gradients(ctx, dy, kernels=False)`` (the
    autograd formulas on the same saved inputs) is returned instead."""
    try:
        return gradients(ctx, readable, kernels=True)
    except Exception as err:
        on_failure = handler(ctx)  # set when the forward ran under backend="auto"
        if on_failure is None:
            raise
        on_failure(err)
        return gradients(ctx, dy, kernels=False)


def activation_grads(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx and the gradients of a, b and c (in their own shapes) of the Triton activation ``kind``
    with parameters a, b, c (see ``ops.kinds``), by ops.autograd's Functions."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (x, a, b, c)]
        y = kinds.KINDS[kind].lean(*leaves)
        dx, da, db, dc = torch.autograd.grad(y, leaves, dy, allow_unused=True, materialize_grads=True)
    return dx, da, db, dc
