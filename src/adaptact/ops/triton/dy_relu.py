"""Dynamic ReLU on the Triton kernels: y = max_k (a_k x + b_k) with per-sample pieces (a, b).

The pieces are (N, C, K) for DY-ReLU-B and (N, 1, K) for DY-ReLU-A (read with a channel stride
of 0), generated from the spatial means of x by the module's hyper function. As for Meta-ACON-C
and APReLU (``generated.py``), one Function owns the chain in eager mode, for the floor
(docs/architecture.md) of 8 x-sized passes:

* forward: one read of x for its sums (``signed_sums``), the hyper function on the (N, C)
  means, then ``dy_relu_fwd`` (reads x, writes y);
* backward: ``dy_relu_param_grads`` (reads x and dy) gives the pieces' gradients, (N, C, K)
  sums of dy x and dy where each piece wins; the hyper function's backward maps them to the
  means' gradient; ``dy_relu_input_grad`` (reads x and dy, writes dx) adds that over the pool
  size to dy a_win.

What backward keeps: x and the O(N.C.K) pieces (the winning piece is recomputed). Under
torch.compile the composite route runs (the hyper function as torch ops, then ``dy_relu_fwd``
with its registered autograd), which compiles whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import autograd as AG
from .. import fallback
from . import kernels as K
from . import launch as L
from .launch import _dense, _plan_for, _readable, _strides, _unused

__all__ = ["dy_relu", "generated_dy_relu"]

Generator = Callable[[Tensor], tuple[Tensor, Tensor]]


def _pieces(a: Tensor, b: Tensor, x: Tensor) -> dict:
    """The kernels' arguments for pieces (N, C or 1, K): each read as (N, C, K) with its strides."""
    out = {}
    for name, t in (("a", a), ("b", b)):
        view = t.expand(x.shape[0], x.shape[1], t.shape[-1])
        out.update({f"{name}_ptr": view, f"{name}_sn": view.stride(0), f"{name}_sc": view.stride(1),
                    f"{name}_sk": view.stride(2)})
    return out


@torch.library.triton_op("adaptact::dy_relu_fwd", mutates_args=())
def dy_relu_fwd(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """max_k (a_k x + b_k) for pieces ``a``, ``b`` of shape (N, C or 1, K)."""
    x = _dense(x)
    y = torch.empty_like(x)
    if x.numel():
        sn, sc, ss = _strides(x)
        L._launch(K.dy_relu_fwd, _plan_for(x), x_ptr=x, y_ptr=y, **_pieces(a, b, x), x_sn=sn, x_sc=sc,
                  x_ss=ss, K=a.shape[-1])
    return y


def _backward(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, grads: bool, pool: Tensor | None = None,
              dx: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """One launch of the backward kernel: dx (plus ``pool`` (N, C) everywhere, the gradient of a
    spatial mean) and/or the float32 gradients of the pieces, (N, C, K) each."""
    x, dy = _dense(x), _readable(dy)
    p = _plan_for(x, dy)
    k = a.shape[-1]
    none = _unused(x)
    out = torch.empty_like(x) if dx else none
    nb_s = p.blocks[2]
    alloc = torch.empty if p.programs else torch.zeros
    ga, gb = ((alloc((nb_s, p.n, p.c, k), dtype=torch.float32, device=x.device) for _ in "ab") if grads
              else (none, none))
    pooled = pool is not None
    pool = pool.float().contiguous() if pool is not None else none
    if x.numel():
        sn, sc, ss = _strides(x)
        dsn, dsc, dss = _strides(dy)
        L._launch(K.dy_relu_bwd, p, x_ptr=x, dy_ptr=dy, dx_ptr=out, ga_ptr=ga, gb_ptr=gb, pool_ptr=pool,
                **_pieces(a, b, x), x_sn=sn, x_sc=sc, x_ss=ss, dy_sn=dsn, dy_sc=dsc, dy_ss=dss, K=k,
                GRADS=grads, DX=dx, POOLED=pooled)
    if grads:
        ga, gb = ga.sum(0), gb.sum(0)
    return out, ga, gb


@torch.library.triton_op("adaptact::dy_relu_bwd", mutates_args=())
def dy_relu_bwd(x: Tensor, dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dx and the float32 gradients of the pieces, (N, C, K) each, in one pass."""
    return _backward(x, dy, a, b, grads=True)


@torch.library.triton_op("adaptact::dy_relu_param_grads", mutates_args=())
def dy_relu_param_grads(x: Tensor, dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The float32 gradients of the pieces alone, (N, C, K) each: a pass that reads x and dy."""
    _, ga, gb = _backward(x, dy, a, b, grads=True, dx=False)
    return ga, gb


@torch.library.triton_op("adaptact::dy_relu_input_grad", mutates_args=())
def dy_relu_input_grad(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, pool: Tensor) -> Tensor:
    """dy a_win plus ``pool`` (N, C), the gradient of a spatial mean, everywhere."""
    dx, _, _ = _backward(x, dy, a, b, grads=False, pool=pool)
    return dx


def _to(grad: Tensor, piece: Tensor) -> Tensor:
    """An (N, C, K) float32 gradient summed to the piece's shape and dtype."""
    return grad.sum_to_size(piece.shape).to(piece.dtype)


def _lean_grads(x: Tensor, dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dx and the pieces' gradients by ``ops.autograd`` (after a kernel failure under "auto")."""
    view = (a.shape[0], a.shape[1]) + (1,) * (x.ndim - 2) + (a.shape[-1],)
    dx, da, db = AG.dy_relu_backward(dy, x, a.reshape(view), b.reshape(view), (True, True, True))
    return dx.to(x.dtype), da.reshape(a.shape), db.reshape(b.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, a, b = inputs
    ctx.save_for_backward(x, a, b)


@AG._first_order
def _dy_relu_backward(ctx, dy: Tensor):
    x, a, b = ctx.saved_tensors
    want = ctx.needs_input_grad
    try:
        dx, ga, gb = torch.ops.adaptact.dy_relu_bwd(x, dy, a, b)
    except Exception as err:
        on_failure = fallback.handler(ctx)  # set when the forward ran under backend="auto"
        if on_failure is None:
            raise
        on_failure(err)
        dx, ga, gb = _lean_grads(x, dy, a, b)
    return dx if want[0] else None, _to(ga, a) if want[1] else None, _to(gb, b) if want[2] else None


dy_relu_fwd.register_autograd(_dy_relu_backward, setup_context=_setup_context)


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Dynamic ReLU with given pieces (N, C or 1, K): the composite route's activation op."""
    return dy_relu_fwd(x, a, b)


class _GeneratedDyReLU(torch.autograd.Function):
    FIXED = 3  # inputs before ``weights``

    @staticmethod
    def forward(ctx, x: Tensor, dtype: torch.dtype, generate: Generator, *weights: Tensor) -> Tensor:
        x = _dense(x)  # once, not in each of the three kernel launches
        neg, pos = torch.ops.adaptact.signed_sums(x)
        size = math.prod(x.shape[2:])
        with torch.enable_grad():
            s = ((neg + pos) / size).to(dtype).requires_grad_()
            a, b = generate(s)
        ctx.save_for_backward(x)
        ctx.generated = (s, a, b, tuple(weights))
        ctx.size = size
        return torch.ops.adaptact.dy_relu_fwd(x, a.detach(), b.detach())

    @staticmethod
    @AG._first_order
    def backward(ctx, dy: Tensor):
        return fallback.kernels_or_autograd(ctx, _GeneratedDyReLU._gradients, dy, _readable(dy))

    @staticmethod
    def _gradients(ctx, dy: Tensor, kernels: bool):
        """The two Triton passes around the hyper function's backward, or (``kernels=False``)
        ``ops.autograd``'s formulas on the same saved inputs."""
        (x,) = ctx.saved_tensors
        s, a, b, weights = ctx.generated
        want = ctx.needs_input_grad
        want_weights = want[_GeneratedDyReLU.FIXED:]
        pa, pb = a.detach(), b.detach()
        if kernels:
            ga, gb = torch.ops.adaptact.dy_relu_param_grads(x, dy, pa, pb)
        else:
            dx, ga, gb = _lean_grads(x, dy, pa, pb)
        trainable = [w for w, needed in zip(weights, want_weights) if needed]
        ds, *dw = torch.autograd.grad((a, b), [s, *trainable], (_to(ga, a), _to(gb, b)), retain_graph=True,
                                      allow_unused=True)
        if want[0]:
            pool = torch.zeros_like(s, dtype=torch.float32) if ds is None else ds.float() / ctx.size
            if kernels:
                dx = torch.ops.adaptact.dy_relu_input_grad(x, dy, pa, pb, pool)
            else:
                view = pool.reshape(*pool.shape, *([1] * (x.ndim - 2)))
                dx = (dx + view).to(x.dtype)
        given = iter(dw)
        weight_grads = [next(given) if needed else None for needed in want_weights]
        return (dx if want[0] else None, None, None, *weight_grads)  # None for dtype, generate


def generated_dy_relu(x: Tensor, coefficients_from_mean: Generator, weights: Sequence[Tensor],
                      dtype: torch.dtype) -> Tensor:
    """Dynamic ReLU with (a, b) = coefficients_from_mean(spatial means of x, (N, C) in ``dtype``);
    ``weights``: every tensor the hyper function uses that may need a gradient."""
    return _GeneratedDyReLU.apply(x, dtype, coefficients_from_mean, *weights)
