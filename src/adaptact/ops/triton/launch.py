"""Host side of the Triton kernels: layouts, launches, and their registration as PyTorch
operators (``torch.library.triton_op``) with autograd, so torch.compile and torch.export see
them as ops (Dynamo does not graph-break on them)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.library import wrap_triton

from .. import autograd as AG
from . import kernels as K

BLOCK = 1024


def _dense(x: Tensor) -> Tensor:
    """x itself when it has no gaps or overlaps (so ``empty_like`` gives its outputs x's strides:
    the kernels address x, y and dx alike) and its spatial dims flatten to one stride, as for
    contiguous and channels_last tensors; else a contiguous copy."""
    return x if _gapless(x) and _spatial_flattens(x) else x.contiguous()


def _gapless(x: Tensor) -> bool:
    expected = 1
    for size, stride in sorted(((n, st) for n, st in zip(x.shape, x.stride()) if n != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _spatial_flattens(x: Tensor) -> bool:
    expected = None
    for size, stride in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])):
        if size == 1:
            continue
        if expected is not None and stride != expected:
            return False
        expected = stride * size
    return True


def _geometry(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """(N, C, S, stride of n, stride of c, stride of the flattened spatial index) of a dense x."""
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    # the flattened spatial stride: that of the innermost spatial dim of size > 1 (1 if none)
    ss = next((st for size, st in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])) if size != 1), 1)
    return n, c, s, x.stride(0), x.stride(1), ss


def _nc(p: Tensor, x: Tensor) -> tuple[Tensor, int, int]:
    """An (N, C) view of a parameter broadcast against x, and its two strides."""
    view = p.expand(*x.shape[:2], *([1] * (x.ndim - 2)))[(...,) + (0,) * (x.ndim - 2)]
    return view, view.stride(0), view.stride(1)


def _partials(x: Tensor, blocks: int) -> Tensor:
    """float32 (N * C, blocks) buffer for per-(row, block) sums; zeros when there is nothing to sum."""
    return (torch.empty if x.numel() else torch.zeros)(x.shape[0] * x.shape[1], blocks, dtype=torch.float32,
                                                      device=x.device)


def _sums(partials: Tensor, x: Tensor) -> Tensor:
    """Per-(row, block) partial sums reduced to (N, C)."""
    return partials.sum(1).reshape(x.shape[:2])


def _grad_to(grad: Tensor, p: Tensor, x: Tensor) -> Tensor:
    """An (N, C) gradient summed to the shape of the parameter view ``p`` broadcast against x."""
    grad = grad.reshape(*x.shape[:2], *([1] * (x.ndim - 2)))
    return grad.sum_to_size(p.shape).reshape(p.shape).to(p.dtype)


@torch.library.triton_op("adaptact::activation_fwd", mutates_args=())
def activation_fwd(x: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int) -> Tensor:
    """y for activation ``kind`` (see kernels.py) with parameters broadcasting against x on dims 0/1."""
    x = _dense(x)
    y = torch.empty_like(x)
    n, ch, s, sn, sc, ss = _geometry(x)
    (a2, asn, asc), (b2, bsn, bsc), (c2, csn, csc) = _nc(a, x), _nc(b, x), _nc(c, x)
    if x.numel():
        wrap_triton(K.activation_fwd)[(n * ch, triton_cdiv(s, BLOCK))](
            x, y, a2, b2, c2, asn, asc, bsn, bsc, csn, csc, ch, s, sn, sc, ss, KIND=kind, BLOCK=BLOCK)
    return y


def _backward(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int, partials: bool,
              pooled: tuple[Tensor, Tensor] | None = None, dx: bool = True):
    """One launch of the backward kernel: dx (with the pooling terms ``pooled`` = per-row values
    for x <= 0 and x > 0) and/or the (N, C) float32 sums of the gradients of a, b and c."""
    x, dy = _dense(x), _dense(dy)
    n, ch, s, sn, sc, ss = _geometry(x)
    _, _, _, dsn, dsc, dss = _geometry(dy)
    nb = triton_cdiv(s, BLOCK)
    none = _unused(x)
    out = torch.empty_like(x) if dx else none  # dx in x's layout, as the gradient of a leaf x wants
    parts = [_partials(x, nb) if partials else none for _ in range(3)]
    neg, pos = (none, none) if pooled is None else (p.float().contiguous() for p in pooled)
    (a2, asn, asc), (b2, bsn, bsc), (c2, csn, csc) = _nc(a, x), _nc(b, x), _nc(c, x)
    if x.numel():
        wrap_triton(K.activation_bwd)[(n * ch, nb)](
            x, dy, out, *parts, neg, pos, a2, b2, c2, asn, asc, bsn, bsc, csn, csc, ch, s, nb,
            sn, sc, ss, dsn, dsc, dss, KIND=kind, BLOCK=BLOCK, PARTIALS=partials, DX=dx,
            POOLED=pooled is not None)
    sums = tuple(_sums(p, x) for p in parts) if partials else None
    return out, sums


@torch.library.triton_op("adaptact::activation_bwd", mutates_args=())
def activation_bwd(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx and the (N, C) float32 gradients of a, b and c, in one pass."""
    dx, (ga, gb, gc) = _backward(x, dy, a, b, c, kind, partials=True)
    return dx, ga, gb, gc


@torch.library.triton_op("adaptact::activation_param_grads", mutates_args=())
def activation_param_grads(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """The (N, C) float32 gradients of a, b and c alone: a pass that reads x and dy."""
    _, (ga, gb, gc) = _backward(x, dy, a, b, c, kind, partials=True, dx=False)
    return ga, gb, gc


@torch.library.triton_op("adaptact::activation_input_grad", mutates_args=())
def activation_input_grad(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, neg: Tensor, pos: Tensor,
                          kind: int) -> Tensor:
    """dx plus a pooling gradient: ``neg`` (N, C) where x <= 0, ``pos`` (N, C) where x > 0."""
    dx, _ = _backward(x, dy, a, b, c, kind, partials=False, pooled=(neg, pos))
    return dx


@torch.library.triton_op("adaptact::signed_sums", mutates_args=())
def signed_sums(x: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of min(x, 0), sum of max(x, 0)) over the spatial dims, (N, C) float32: one read of x."""
    x = _dense(x)
    n, ch, s, sn, sc, ss = _geometry(x)
    nb = triton_cdiv(s, BLOCK)
    neg, pos = _partials(x, nb), _partials(x, nb)
    if x.numel():
        wrap_triton(K.signed_sums)[(n * ch, nb)](x, neg, pos, ch, s, nb, sn, sc, ss, BLOCK=BLOCK)
    return _sums(neg, x), _sums(pos, x)


def _setup_context(ctx, inputs, output) -> None:
    x, a, b, c, kind = inputs
    ctx.save_for_backward(x, a, b, c)
    ctx.kind = kind


@AG._first_order
def _activation_backward(ctx, dy: Tensor):
    x, a, b, c = ctx.saved_tensors
    dx, ga, gb, gc = torch.ops.adaptact.activation_bwd(x, dy, a, b, c, ctx.kind)
    want = ctx.needs_input_grad
    grads = [_grad_to(g, p, x) if want[i + 1] else None for i, (g, p) in enumerate(((ga, a), (gb, b), (gc, c)))]
    return (dx if want[0] else None, *grads, None)


activation_fwd.register_autograd(_activation_backward, setup_context=_setup_context)


def triton_cdiv(a: int, b: int) -> int:
    return max(1, -(-a // b))


def _unused(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32, device=x.device)


def arelu(x: Tensor, slope: Tensor, gain: Tensor) -> Tensor:
    return activation_fwd(x, slope, gain, _unused(x), K.AReLU)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    return activation_fwd(x, p1 - p2, p2, beta, K.ACON)


def acon_c_pixel(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    return activation_fwd(x, p1 - p2, p2, _unused(x), K.ACON_PIXEL)


def aprelu(x: Tensor, alpha: Tensor) -> Tensor:
    return activation_fwd(x, _unused(x), _unused(x), alpha, K.APReLU)
