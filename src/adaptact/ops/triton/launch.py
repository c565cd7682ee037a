"""Host side of the Triton kernels: layouts, launches, and their registration as PyTorch
operators (``torch.library.triton_op``) with autograd, so torch.compile and torch.export see
them as ops (Dynamo does not graph-break on them)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import wrap_triton

from .. import autograd as AG
from . import kernels as K

BLOCK = 1024


def _dense(x: Tensor) -> Tensor:
    """x itself when its spatial dims flatten to one stride (contiguous, channels_last), else a copy."""
    if x.ndim <= 2:
        return x
    spatial = x.shape[2:]
    strides = x.stride()[2:]
    expected = strides[-1]
    for size, stride in zip(reversed(spatial), reversed(strides)):
        if size != 1 and stride != expected:
            return x.contiguous()
        expected = stride * size
    return x


def _geometry(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """(N, C, S, stride of n, stride of c, stride of the flattened spatial index) of a dense x."""
    n, c = x.shape[:2]
    s = 1
    for size in x.shape[2:]:
        s *= size
    # the flattened spatial stride: that of the innermost spatial dim of size > 1 (1 if none)
    ss = next((st for size, st in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])) if size != 1), 1)
    return n, c, s, x.stride(0), x.stride(1), ss


def _nc(p: Tensor, x: Tensor) -> tuple[Tensor, int, int]:
    """An (N, C) view of a parameter broadcast against x, and its two strides."""
    view = p.expand(*x.shape[:2], *([1] * (x.ndim - 2)))[(...,) + (0,) * (x.ndim - 2)]
    return view, view.stride(0), view.stride(1)


def _grad_to(partial: Tensor, p: Tensor, x: Tensor) -> Tensor:
    grad = partial.sum(1).reshape(*x.shape[:2], *([1] * (x.ndim - 2)))
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


@torch.library.triton_op("adaptact::activation_bwd", mutates_args=())
def activation_bwd(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx and the float32 partial sums (N * C, blocks) of the gradients of a, b and c."""
    x, dy = _dense(x), _dense(dy)
    dx = torch.empty_like(dy)
    n, ch, s, sn, sc, ss = _geometry(x)
    _, _, _, dsn, dsc, dss = _geometry(dy)
    nb = triton_cdiv(s, BLOCK)
    ga, gb, gc = (torch.zeros(n * ch, nb, dtype=torch.float32, device=x.device) for _ in range(3))
    (a2, asn, asc), (b2, bsn, bsc), (c2, csn, csc) = _nc(a, x), _nc(b, x), _nc(c, x)
    if x.numel():
        wrap_triton(K.activation_bwd)[(n * ch, nb)](
            x, dy, dx, ga, gb, gc, a2, b2, c2, asn, asc, bsn, bsc, csn, csc, ch, s, nb,
            sn, sc, ss, dsn, dsc, dss, KIND=kind, BLOCK=BLOCK)
    return dx, ga, gb, gc


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
    return activation_fwd(x, alpha, _unused(x), _unused(x), K.APReLU)


# APReLU's pooled statistics are O(N*C) outputs of one reduction pass; the autograd Function
# already does that with torch's reductions, so the Triton path uses it as it is.
signed_spatial_mean = AG.signed_spatial_mean
