"""Memory-lean autograd Functions behind the adaptive activations (every device).

Each Function saves only its input (plus the small per-(N, C) tensors Meta-ACON and APReLU
already have) and recomputes what backward needs, instead of the 2-3 full-size intermediates
the plain composition in ``adaptact.functional`` keeps alive. Parameter gradients are reduced
to the parameters' broadcast shapes in backward. The numbers equal ``adaptact.functional``.

Parameters arrive already viewed for broadcasting against ``x`` (``functional.channel_view``),
so autograd maps their gradients back to the parameters' own shapes. float16 and bfloat16
inputs are computed in float32 (temporaries only; the saved input stays in its dtype), so
parameter gradients accumulate in float32. A second backward through them (``create_graph=True``)
is refused with an error rather than silently missing terms: use ``backend="reference"`` for
higher-order gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..functional import GOLU_FLOOR

__all__ = ["acon_c", "acon_c_pixel", "apply", "aprelu", "arelu", "dy_relu", "frelu_max", "golu",
           "lean_function", "polynorm", "signed_mean_function", "signed_spatial_mean", "up", "xielu"]


_LOW = (torch.float16, torch.bfloat16)


def _first_order(backward):
    """Refuse ``create_graph=True``: these backward formulas are not themselves differentiated."""

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError("adaptact's fused backends compute first-order gradients only (a backward "
                               "with create_graph=True was asked for); use backend='reference' for higher "
                               "orders")
        return backward(ctx, *grads)

    return checked


def up(*tensors: Tensor) -> tuple[Tensor, ...]:
    """float16/bfloat16 tensors as float32 for computing; others as they are."""
    return tuple(t.float() if t.dtype in _LOW else t for t in tensors)


def _cast(grads, likes):
    return tuple(None if g is None else g.to(like.dtype) for g, like in zip(grads, likes))


def _positive_part(dy: Tensor, x: Tensor) -> Tensor:
    """dy where x > 0, else 0 (one pass; torch's own relu backward)."""
    return torch.ops.aten.threshold_backward(dy, x, 0)


def lean_function(name: str, forward: Callable[..., Tensor], backward: Callable[..., tuple]) -> type:
    """A Function that saves only its inputs (x and the small parameter views) and computes with
    ``forward(x, *params) -> y`` and ``backward(dy, x, *params, want) -> (dx, *dparams)``, ``want``
    saying which gradients autograd asks for; the gradients come back in the inputs' dtypes.
    ``ops.compiled`` compiles these Functions whole."""

    def forward_(ctx, x: Tensor, *params: Tensor) -> Tensor:
        ctx.save_for_backward(x, *params)
        return forward(x, *params)

    @_first_order
    def backward_(ctx, dy: Tensor):
        saved = ctx.saved_tensors
        return _cast(backward(dy, *saved, tuple(ctx.needs_input_grad)), saved)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward_),
                                                    "backward": staticmethod(backward_),
                                                    "body": staticmethod(forward)})


def signed_mean_function(name: str, forward: Callable[..., tuple[Tensor, Tensor]],
                         backward: Callable[..., Tensor]) -> type:
    """``lean_function`` for the pooling of APReLU: ``forward(x, dtype) -> (neg, pos)`` and
    ``backward(dneg, dpos, x) -> dx``."""

    def forward_(ctx, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x)
        return forward(x, dtype)

    @_first_order
    def backward_(ctx, dneg: Tensor, dpos: Tensor):
        (x,) = ctx.saved_tensors
        return backward(dneg, dpos, x).to(x.dtype), None

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward_),
                                                    "backward": staticmethod(backward_),
                                                    "body": staticmethod(forward)})


def apply(function: Any, *args):
    """``function.apply(*args)`` (a ``lean_function``), or its forward body alone when autograd
    records nothing: no Function to build, and dynamo cannot trace every Function applied to
    tensors that need no gradient (it raised on Dynamic ReLU's)."""
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    return function.body(*args)


# --- the bodies: plain tensor code (traced as it is by ops.compiled) ---------------------------


def arelu_forward(x: Tensor, slope: Tensor, gain: Tensor) -> Tensor:
    xc, sc, gc = up(x, slope, gain)
    return (sc * xc).addcmul_(torch.relu(xc), gc - sc).to(x.dtype)


def arelu_backward(dy: Tensor, x: Tensor, slope: Tensor, gain: Tensor, want: tuple[bool, ...]):
    x, slope, gain, dy = up(x, slope, gain, dy)
    on_pos = _positive_part(dy, x)
    on_neg = _positive_part(dy, x.neg())  # relu'(0) = 0 on both sides, as in the reference
    dx = dslope = dgain = None
    if want[2]:
        dgain = (on_pos * x).sum_to_size(gain.shape)
    if want[1]:
        dslope = (on_neg * x).sum_to_size(slope.shape)
    if want[0]:
        dx = on_pos.mul_(gain).addcmul_(on_neg, slope)
    return dx, dslope, dgain


def _acon_forward(x: Tensor, dp: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    d = dp * x
    s = torch.mul(beta, d).sigmoid_()
    return d.mul_(s).addcmul_(p2, x)


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """``t.sum_to_size(shape)``, summing the spatial dims first where ``shape`` has none: traced,
    every reduction then runs over the innermost dims of (N, C, S), so Inductor computes them
    all, and the elementwise outputs, in one loop over the inputs (a reduction over (N, S) per
    channel gets a loop of its own, fed by x-sized intermediates)."""
    if t.ndim > 2 and len(shape) == t.ndim and all(n == 1 for n in shape[2:]):
        t = t.sum(dim=tuple(range(2, t.ndim)), keepdim=True)
    return t.sum_to_size(shape)


def _product(a: Tensor, b: Tensor, into: Tensor) -> Tensor:
    """a * b, written into the spent buffer ``into`` where it is contiguous (dynamo traces ``out=``
    only into contiguous tensors; channels-last x viewed channels first gets a new tensor)."""
    return torch.mul(a, b, out=into) if into.is_contiguous() else a * b


def _acon_backward(dy: Tensor, x: Tensor, dp: Tensor, p2: Tensor, beta: Tensor, want: tuple[bool, ...]):
    """Gradients of (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x for x, p1, p2 and beta, with
    g = s + u s (1 - s) (u = beta d, s = sigmoid(u)) the derivative of d sigmoid(beta d) / beta.

    The one formulation of ACON-C's derivative: run eagerly by the autograd backend (in x-sized
    buffers reused in place) and traced by ``ops.compiled`` (Inductor functionalises the in-place
    ops and, the spatial sums coming first, computes every gradient in one loop over x and dy)."""
    want_x, want_p1, want_p2, want_beta = want
    d = dp * x
    u = beta * d
    s = torch.sigmoid(u)
    t = torch.ops.aten.sigmoid_backward(dy, s)  # dy s (1 - s)
    g = s.mul_(dy).addcmul_(u, t)  # dy * g, in s's buffer
    dbeta = dp1 = dp2 = dx = None
    if want_beta:
        dbeta = _sum_to(t.mul_(d).mul_(d), beta.shape)
    if want_p1 or want_p2:
        on_p1 = _sum_to(_product(g, x, into=u), dp.shape)  # into u's and d's buffers
        dp1 = on_p1 if want_p1 else None
        if want_p2:
            dp2 = _sum_to(_product(dy, x, into=d), p2.shape) - on_p1
    if want_x:
        dx = g.mul_(dp).addcmul_(dy, p2)
    return dx, dp1, dp2, dbeta


def acon_c_forward(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    xc, p1c, p2c, bc = up(x, p1, p2, beta)
    return _acon_forward(xc, p1c - p2c, p2c, bc).to(x.dtype)


def acon_c_backward(dy: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, want: tuple[bool, ...]):
    x, p1, p2, beta, dy = up(x, p1, p2, beta, dy)
    return _acon_backward(dy, x, p1 - p2, p2, beta, want)


def acon_c_pixel_forward(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """Meta-ACON-C with pixel-wise beta = sigmoid(x)."""
    xc, p1c, p2c = up(x, p1, p2)
    return _acon_forward(xc, p1c - p2c, p2c, torch.sigmoid(xc)).to(x.dtype)


def acon_c_pixel_backward(dy: Tensor, x: Tensor, p1: Tensor, p2: Tensor, want: tuple[bool, ...]):
    """The beta = sigmoid(x) path folds into dx."""
    x, p1, p2, dy = up(x, p1, p2, dy)
    beta = torch.sigmoid(x)
    dx, dp1, dp2, dbeta = _acon_backward(dy, x, p1 - p2, p2, beta, (want[0], want[1], want[2], want[0]))
    if want[0]:
        dx = dx.add_(torch.ops.aten.sigmoid_backward(dbeta, beta))
    return dx, dp1, dp2


def aprelu_forward(x: Tensor, alpha: Tensor) -> Tensor:
    xc, ac = up(x, alpha)
    return torch.relu(xc).addcmul_(ac, torch.clamp(xc, max=0)).to(x.dtype)


def aprelu_backward(dy: Tensor, x: Tensor, alpha: Tensor, want: tuple[bool, ...]):
    x, alpha, dy = up(x, alpha, dy)
    on_pos = _positive_part(dy, x)
    on_neg = dy - on_pos  # relu'(0) = 0 and d min(x, 0)/dx = 1 at 0, as torch's ops
    dx = dalpha = None
    if want[1]:
        dalpha = (on_neg * x).sum_to_size(alpha.shape)
    if want[0]:
        dx = on_neg.mul_(alpha).add_(on_pos)
    return dx, dalpha


def signed_mean_forward(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(mean of min(x, 0), mean of max(x, 0)) over the spatial dims, in ``dtype``."""
    dims = tuple(range(2, x.ndim))
    neg, pos = torch.clamp(x, max=0), torch.relu(x)
    if not dims:
        return neg.to(dtype), pos.to(dtype)  # (N, C): nothing to pool
    return neg.mean(dims, dtype=dtype), pos.mean(dims, dtype=dtype)


def signed_mean_backward(dneg: Tensor, dpos: Tensor, x: Tensor) -> Tensor:
    (xc,) = up(x)
    count = 1
    for size in xc.shape[2:]:
        count *= size
    view = dneg.shape + (1,) * (xc.ndim - 2)
    dneg = (dneg / count).to(xc.dtype).reshape(view)
    jump = (dpos / count).to(xc.dtype).reshape(view) - dneg
    # torch's clamp(max=0) passes the gradient at 0, relu does not: 0 goes to the negative side
    return _positive_part(jump.expand_as(xc), xc).add_(dneg)


def dy_relu_forward(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """max_k (a_k x + b_k); ``a``, ``b`` broadcast against x.unsqueeze(-1): (N, C or 1, 1..., K).
    The pieces unrolled (as in ``_pieces``): eagerly no (x, K)-sized tensor, traced one loop."""
    xc, ac, bc = up(x, a, b)
    y = ac[..., 0] * xc + bc[..., 0]
    for k in range(1, ac.shape[-1]):
        y = torch.maximum(y, ac[..., k] * xc + bc[..., k])
    return y.to(x.dtype)


def _pieces(x: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """max_k (a_k x + b_k), the slope of the winning piece and its index (the first of equal
    pieces), the K pieces unrolled: traced, Inductor makes one loop over x of them (with K as a
    dim of their own it vectorises along K, a dim of 2, and stores the index x-sized)."""
    y, slope = a[..., 0] * x + b[..., 0], a[..., 0]
    win = torch.zeros((), dtype=x.dtype, device=x.device)  # float: Inductor's int8 masks are slow on CPU
    for k in range(1, a.shape[-1]):
        v = a[..., k] * x + b[..., k]
        take = v > y
        y, slope = torch.where(take, v, y), torch.where(take, a[..., k], slope)
        win = torch.where(take, k, win)
    return y, slope, win


def dy_relu_backward(dy: Tensor, x: Tensor, a: Tensor, b: Tensor, want: tuple[bool, ...]):
    """The winning piece k* of each element, recomputed (``_pieces``): dx = dy a_k*, and dy x (dy)
    summed into a_k (b_k) where k* = k. Ties go to the first piece (the reference splits them; they
    have measure zero for inputs in general position). The one formulation of the derivative: run
    eagerly by the autograd backend and traced by ``ops.compiled`` (dx and the pieces' spatial sums
    out of one loop over x and dy)."""
    x, a, b, dy = up(x, a, b, dy)
    _, slope, win = _pieces(x, a, b)
    dx = dy * slope if want[0] else None
    da = db = None
    if want[1]:
        da = torch.stack([_sum_to(torch.where(win == k, dy * x, 0.0), a[..., k].shape)
                          for k in range(a.shape[-1])], dim=-1)
    if want[2]:
        db = torch.stack([_sum_to(torch.where(win == k, dy, 0.0), b[..., k].shape)
                          for k in range(b.shape[-1])], dim=-1)
    return dx, da, db


class _FReLUMax(torch.autograd.Function):
    """max(x, t) keeping one byte per element for backward (which side won, ties split evenly as
    torch.maximum does) instead of t."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor) -> Tensor:
        ctx.save_for_backward(torch.sign(x - t).to(torch.int8))
        return torch.maximum(x, t)

    @staticmethod
    @_first_order
    def backward(ctx, dy: Tensor):
        (side,) = ctx.saved_tensors
        share = (side.to(dy.dtype) + 1) / 2  # 1 where x won, 0 where t won, 1/2 at ties
        dx = dy * share
        return dx, dy - dx


# --- elementwise activations of language models: x saved alone instead of 3-5 intermediates ----------


def golu_forward(x: Tensor) -> Tensor:
    (xc,) = up(x)
    return (xc * torch.exp(-torch.exp(-xc.clamp(min=GOLU_FLOOR)))).to(x.dtype)


def golu_backward(dy: Tensor, x: Tensor, want: tuple[bool, ...]):
    x, dy = up(x, dy)
    inner = torch.exp(-x.clamp(min=GOLU_FLOOR))
    # d/dx x exp(-exp(-x)) = g (1 + x exp(-x)); below the floor the clamp passes no gradient
    slope = torch.where(x >= GOLU_FLOOR, x * inner, 0.0)
    return (dy * torch.exp(-inner) * (1 + slope),)


def _xielu_terms(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor):
    a_p = torch.nn.functional.softplus(alpha_p)
    a_n = beta + torch.nn.functional.softplus(alpha_n)
    low = torch.minimum(x, eps)
    return a_p, a_n, low, torch.expm1(low) - x


def xielu_forward(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor) -> Tensor:
    xc, *params = up(x, alpha_p, alpha_n, beta, eps)
    a_p, a_n, _, bend = _xielu_terms(xc, *params)
    b = params[2]
    return torch.where(xc > 0, a_p * xc * xc + b * xc, a_n * bend + b * xc).to(x.dtype)


def xielu_backward(dy: Tensor, x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor,
                   want: tuple[bool, ...]):
    x, ap, an, b, e, dy = up(x, alpha_p, alpha_n, beta, eps, dy)
    a_p, a_n, low, bend = _xielu_terms(x, ap, an, b, e)
    pos = x > 0
    # torch.minimum's gradient: to the smaller input, half to each at a tie
    to_x = (x < e).to(x.dtype) + 0.5 * (x == e).to(x.dtype)
    grads: list[Tensor | None] = [None] * 5
    if want[0]:
        grads[0] = dy * torch.where(pos, 2 * a_p * x + b, a_n * (torch.exp(low) * to_x - 1) + b)
    if want[1]:
        grads[1] = (torch.where(pos, dy * x * x, 0.0).sum() * torch.sigmoid(ap)).sum_to_size(alpha_p.shape)
    if want[2] or want[3]:
        on_bend = torch.where(pos, 0.0, dy * bend).sum()
        if want[2]:
            grads[2] = (on_bend * torch.sigmoid(an)).sum_to_size(alpha_n.shape)
        if want[3]:
            grads[3] = (on_bend + (dy * x).sum()).sum_to_size(beta.shape)
    if want[4]:
        grads[4] = torch.where(pos, 0.0, dy * a_n * torch.exp(low) * (1 - to_x)).sum().sum_to_size(eps.shape)
    return tuple(grads)


POLYNORM_POWERS = (3, 2, 1)  # PolyNorm's weight[i] scales n(x ** POLYNORM_POWERS[i]), as its official code


def polynorm_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """PolyNorm over x's last dim: sum_i weight[i] n(x^p_i) + bias, n(u) = u rsqrt(mean(u^2) + eps)."""
    xc, w, b = up(x, weight, bias)
    y = b
    for i, power in enumerate(POLYNORM_POWERS):
        u = xc ** power
        y = y + w[i] * (u * torch.rsqrt(u.square().mean(-1, keepdim=True) + eps))
    return y.to(x.dtype)


def polynorm_backward(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, eps: float,
                      want: tuple[bool, ...]):
    """RMS normalisation's backward per power: with r = rsqrt(mean(u^2) + eps) and n = u r,
    du = r (g - n mean(g n)) for the incoming g; then through u = x^p."""
    x, w, dy = up(x, weight, dy)
    dx = torch.zeros_like(x) if want[0] else None
    dweight = []
    for i, power in enumerate(POLYNORM_POWERS):
        u = x ** power
        r = torch.rsqrt(u.square().mean(-1, keepdim=True) + eps)
        n = u * r
        if want[1]:
            dweight.append((dy * n).sum())
        if dx is not None:
            g = dy * w[i]
            du = r * (g - n * (g * n).mean(-1, keepdim=True))
            dx += du if power == 1 else du * (power * x ** (power - 1))
    return (dx, torch.stack(dweight) if want[1] else None,
            dy.sum().reshape(bias.shape) if want[2] else None)


class _PolyNorm(torch.autograd.Function):
    """PolyNorm over the last dim saving x alone (and the four parameters)."""

    body = staticmethod(polynorm_forward)

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.eps = eps
        return polynorm_forward(x, weight, bias, eps)

    @staticmethod
    @_first_order
    def backward(ctx, dy: Tensor):
        x, weight, bias = ctx.saved_tensors
        grads = polynorm_backward(dy, x, weight, bias, ctx.eps, tuple(ctx.needs_input_grad))
        return (*_cast(grads, (x, weight, bias)), None)


_GoLU = lean_function("GoLUFunction", golu_forward, golu_backward)
_XIELU = lean_function("XIELUFunction", xielu_forward, xielu_backward)
_AReLU = lean_function("AReLUFunction", arelu_forward, arelu_backward)
_AconC = lean_function("AconCFunction", acon_c_forward, acon_c_backward)
_AconCPixel = lean_function("AconCPixelFunction", acon_c_pixel_forward, acon_c_pixel_backward)
_APReLU = lean_function("APReLUFunction", aprelu_forward, aprelu_backward)
_DyReLU = lean_function("DyReLUFunction", dy_relu_forward, dy_relu_backward)
_SignedMean = signed_mean_function("SignedMeanFunction", signed_mean_forward, signed_mean_backward)


def arelu(x: Tensor, slope: Tensor, gain: Tensor) -> Tensor:
    """y = gain * relu(x) - slope * relu(-x), i.e. gain * x for x > 0 and slope * x below;
    ``gain`` = 1 + sigmoid(beta) and ``slope`` = clamp(alpha) come in already computed."""
    return apply(_AReLU, x, slope, gain)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x with per-channel or per-sample ``beta``."""
    return apply(_AconC, x, p1, p2, beta)


def acon_c_pixel(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    return apply(_AconCPixel, x, p1, p2)


def aprelu(x: Tensor, alpha: Tensor) -> Tensor:
    """max(x, 0) + alpha min(x, 0) with per-sample ``alpha`` viewed as (N, C, 1, ...)."""
    return apply(_APReLU, x, alpha)


def signed_spatial_mean(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return apply(_SignedMean, x, dtype)


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """max_k (a_k x + b_k) with per-sample ``a``, ``b`` viewed as (N, C or 1, 1..., K)."""
    return apply(_DyReLU, x, a, b)


def golu(x: Tensor) -> Tensor:
    """x exp(-exp(-x)) saving x alone."""
    return apply(_GoLU, x)


def xielu(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor) -> Tensor:
    """xIELU from its raw parameters (``functional.xielu``) saving x alone (and the scalars)."""
    return apply(_XIELU, x, alpha_p, alpha_n, beta, eps)


def polynorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """PolyNorm (``functional.polynorm``) normalising over x's last dim, saving x alone."""
    return apply(_PolyNorm, x, weight, bias, eps)


def frelu_max(x: Tensor, t: Tensor) -> Tensor:
    """max(x, t) saving one byte per element for backward."""
    return _FReLUMax.apply(x, t)
