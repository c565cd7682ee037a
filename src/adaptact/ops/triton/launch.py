"""Host side of the Triton kernels: layouts, launches and the autograd Functions."""

from __future__ import annotations

import torch
from torch import Tensor

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
    n, c = x.shape[:2]
    s = 1
    for size in x.shape[2:]:
        s *= size
    ss = x.stride()[-1] if x.ndim > 2 else 1
    if x.ndim > 2:  # the stride of the innermost spatial dim with size > 1 (0-size dims excluded)
        ss = next((st for size, st in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])) if size != 1), 1)
    return n, c, s, x.stride(0), x.stride(1), ss


def _nc(p: Tensor | None, x: Tensor) -> tuple[Tensor, int, int]:
    """An (N, C) view of a parameter broadcast against x, and its two strides."""
    if p is None:
        p = torch.zeros((), device=x.device)
    view = p.expand(*x.shape[:2], *([1] * (x.ndim - 2)))[(...,) + (0,) * (x.ndim - 2)]
    return view, view.stride(0), view.stride(1)


def _grad_to(partial: Tensor, p: Tensor, x: Tensor) -> Tensor:
    grad = partial.sum(1).reshape(*x.shape[:2], *([1] * (x.ndim - 2)))
    return grad.sum_to_size(p.shape).reshape(p.shape).to(p.dtype)


def _forward(kind: int, x: Tensor, a: Tensor, b: Tensor | None, c: Tensor | None) -> Tensor:
    x = _dense(x)
    y = torch.empty_like(x)
    n, ch, s, sn, sc, ss = _geometry(x)
    (a2, asn, asc), (b2, bsn, bsc), (c2, csn, csc) = _nc(a, x), _nc(b, x), _nc(c, x)
    grid = (n * ch, triton_cdiv(s, BLOCK))
    if x.numel():
        K.activation_fwd[grid](x, y, a2, b2, c2, asn, asc, bsn, bsc, csn, csc, ch, s, sn, sc, ss,
                               KIND=kind, BLOCK=BLOCK)
    return y


def _backward(kind: int, x: Tensor, dy: Tensor, a: Tensor, b: Tensor | None, c: Tensor | None):
    x, dy = _dense(x), _dense(dy)
    dx = torch.empty_like(dy)
    n, ch, s, sn, sc, ss = _geometry(x)
    _, _, _, dsn, dsc, dss = _geometry(dy)
    nb = triton_cdiv(s, BLOCK)
    parts = [torch.zeros(n * ch, nb, dtype=torch.float32, device=x.device) for _ in range(3)]
    (a2, asn, asc), (b2, bsn, bsc), (c2, csn, csc) = _nc(a, x), _nc(b, x), _nc(c, x)
    if x.numel():
        K.activation_bwd[(n * ch, nb)](x, dy, dx, *parts, a2, b2, c2, asn, asc, bsn, bsc, csn, csc, ch, s, nb,
                                       sn, sc, ss, dsn, dsc, dss, KIND=kind, BLOCK=BLOCK)
    return dx, parts


def triton_cdiv(a: int, b: int) -> int:
    return max(1, -(-a // b))


class _AReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope, gain):
        ctx.save_for_backward(x, slope, gain)
        return _forward(K.AReLU, x, slope, gain, None)

    @staticmethod
    @AG._first_order
    def backward(ctx, dy):
        x, slope, gain = ctx.saved_tensors
        dx, (ga, gb, _) = _backward(K.AReLU, x, dy, slope, gain, None)
        return dx, _grad_to(ga, slope, x), _grad_to(gb, gain, x)


class _Acon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p1, p2, beta, pixel: bool):
        ctx.save_for_backward(x, p1, p2, beta)
        ctx.pixel = pixel
        return _forward(K.ACON_PIXEL if pixel else K.ACON, x, p1 - p2, p2, beta)

    @staticmethod
    @AG._first_order
    def backward(ctx, dy):
        x, p1, p2, beta = ctx.saved_tensors
        dx, (g_dp, g_x, g_beta) = _backward(K.ACON_PIXEL if ctx.pixel else K.ACON, x, dy, p1 - p2, p2, beta)
        dp1 = _grad_to(g_dp, p1, x)
        dp2 = _grad_to(g_x - g_dp, p2, x)
        dbeta = None if ctx.pixel else _grad_to(g_beta, beta, x)
        return dx, dp1, dp2, dbeta, None


class _APReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x, alpha)
        return _forward(K.APReLU, x, alpha, None, None)

    @staticmethod
    @AG._first_order
    def backward(ctx, dy):
        x, alpha = ctx.saved_tensors
        dx, (ga, _, _) = _backward(K.APReLU, x, dy, alpha, None, None)
        return dx, _grad_to(ga, alpha, x)


def arelu(x: Tensor, slope: Tensor, gain: Tensor) -> Tensor:
    return _AReLU.apply(x, slope, gain)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    return _Acon.apply(x, p1, p2, beta, False)


def acon_c_pixel(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    return _Acon.apply(x, p1, p2, torch.zeros((), dtype=p1.dtype, device=p1.device), True)


def aprelu(x: Tensor, alpha: Tensor) -> Tensor:
    return _APReLU.apply(x, alpha)


# APReLU's pooled statistics are O(N*C) outputs of one reduction pass; the autograd Function
# already does that with torch's reductions, so the Triton path uses it as it is.
signed_spatial_mean = AG.signed_spatial_mean
