"""Activations whose per-sample parameter is generated from their own input, fused to 8 passes.

Meta-ACON-C's beta and APReLU's alpha are ``c = generate(pool(x))``: a few Linear/BatchNorm
layers applied to global average pools of x, of (min(x, 0), max(x, 0)) for APReLU. Plain
autograd runs the activation's backward (read x and dy, write dx) and then the pooling's
backward, which materialises an x-sized gradient and adds it to dx: 3 more passes and one
more x-sized tensor. Here one Function owns the whole chain:

* forward: ``signed_sums`` (reads x), the generator on the (N, C) statistics, the activation
  (reads x, writes y);
* backward: the parameter-gradient pass (reads x and dy) gives dc; the generator's backward
  maps it to the statistics' gradient; the dx pass (reads x and dy, writes dx) adds that,
  divided by the pool size, as the pooling's gradient.

3 + 5 = 8 passes over x-sized tensors, the floor (docs/architecture.md). The generator's small graph is
built in forward and differentiated inside backward with ``torch.autograd.grad``; its
parameters come in as ``weights``, so they get their gradients through the Function as any
input does (hooks, DDP and ``torch.autograd.grad`` see nothing unusual). Every tensor the
generator uses that needs a gradient must be among ``weights``.

torch.compile does not trace into this Function's backward; ``ops.dispatch`` takes the
composite route there (pooling, generator and activation ops), which compiles whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ... import functional as AF
from .. import autograd as AG
from .. import fallback, kinds
from .launch import _dense, _grad_to, _readable, _unused

__all__ = ["generated_acon_c", "generated_activation", "generated_aprelu"]


def _view(c: Tensor, x: Tensor) -> Tensor:
    """The generated (N, C) or (N, 1) parameter, outside its graph, viewed against x."""
    return AF.channel_view(c.detach(), x, cast=False)


class _GeneratedActivation(torch.autograd.Function):
    FIXED = 7  # inputs before ``weights``

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, kind: int, signed: bool, dtype: torch.dtype,
                generate: Callable[[Tensor], Tensor], *weights: Tensor) -> Tensor:
        x = _dense(x)  # once, not in each of the four kernel launches
        neg, pos = torch.ops.adaptact.signed_sums(x)
        size = math.prod(x.shape[2:])
        stats = torch.cat((neg, pos), dim=1) if signed else neg + pos
        with torch.enable_grad():
            s = (stats / size).to(dtype).requires_grad_()
            c = generate(s)
        ctx.save_for_backward(x, a, b)
        ctx.generated = (s, c, tuple(weights))
        ctx.kind, ctx.signed, ctx.size = kind, signed, size
        return torch.ops.adaptact.activation_fwd(x, a, b, _view(c, x), kind)

    @staticmethod
    @AG._first_order
    def backward(ctx, dy: Tensor):
        return fallback.kernels_or_autograd(ctx, _GeneratedActivation._gradients, dy, _readable(dy))

    @staticmethod
    def _gradients(ctx, dy: Tensor, kernels: bool):
        """The Function's gradients: from the two Triton passes, or (``kernels=False``, after a
        failure under backend="auto") from ops.autograd's Functions on the same saved inputs."""
        x, a, b = ctx.saved_tensors
        s, c, weights = ctx.generated
        want = ctx.needs_input_grad
        want_weights = want[_GeneratedActivation.FIXED:]
        cv = _view(c, x)
        if kernels:
            ga, gb, gc = torch.ops.adaptact.activation_param_grads(x, dy, a, b, cv, ctx.kind)
            da, db = _grad_to(ga, a, x), _grad_to(gb, b, x)
        else:
            dx, da, db, gc = fallback.activation_grads(x, dy, a, b, cv, ctx.kind)
            gc = gc.reshape(gc.shape[0], -1)  # (N, C) or (N, 1), from cv's shape
        trainable = [w for w, needed in zip(weights, want_weights) if needed]
        dc = gc.sum_to_size(c.shape).to(c.dtype)
        ds, *dw = torch.autograd.grad(c, [s, *trainable], dc, retain_graph=True, allow_unused=True)
        if want[0]:
            ds = torch.zeros_like(s, dtype=torch.float32) if ds is None else ds.float() / ctx.size
            neg, pos = ds.chunk(2, dim=1) if ctx.signed else (ds, ds)
            if kernels:
                dx = torch.ops.adaptact.activation_input_grad(x, dy, a, b, cv, neg, pos, ctx.kind)
            else:
                dx = (dx + torch.where(x > 0, _view(pos, x), _view(neg, x))).to(x.dtype)
        given = iter(dw)
        weight_grads = [next(given) if needed else None for needed in want_weights]
        return (dx if want[0] else None, da if want[1] else None, db if want[2] else None,
                None, None, None, None, *weight_grads)  # None for kind ... generate


def generated_activation(x: Tensor, a: Tensor | None, b: Tensor | None, kind: int, signed: bool,
                         dtype: torch.dtype, generate: Callable[[Tensor], Tensor],
                         weights: Sequence[Tensor]) -> Tensor:
    """``activation_fwd(x, a, b, generate(stats), kind)`` with stats the spatial means of x
    (N, C), or of (min(x, 0), max(x, 0)) concatenated to (N, 2C) when ``signed``, in ``dtype``.

    ``a``/``b``: the activation's fixed parameters viewed against x (None where unused);
    ``weights``: every tensor ``generate`` uses that may need a gradient.
    """
    a = _unused(x) if a is None else a
    b = _unused(x) if b is None else b
    return _GeneratedActivation.apply(x, a, b, kind, signed, dtype, generate, *weights)


def generated_acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta_from_mean: Callable[[Tensor], Tensor],
                     weights: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """Meta-ACON-C with beta = beta_from_mean(spatial means of x); p1/p2 viewed against x."""
    return generated_activation(x, p1 - p2, p2, kinds.ACON_C, False, dtype, beta_from_mean, weights)


def generated_aprelu(x: Tensor, alpha_from_stats: Callable[[Tensor], Tensor], weights: Sequence[Tensor],
                     dtype: torch.dtype) -> Tensor:
    """APReLU with alpha = alpha_from_stats(concat(GAP(min(x, 0)), GAP(max(x, 0))))."""
    return generated_activation(x, None, None, kinds.APReLU, True, dtype, alpha_from_stats, weights)
