"""The memory-lean Functions of ``ops.autograd`` compiled by Inductor: the CPU default.

Each Function (it saves only the input and the small parameter views) is compiled whole:
dynamo traces its forward and backward, and Inductor turns each into fused C++ loops, so
float16/bfloat16 inputs are computed in float32 element by element, never as float32 copies of
whole tensors, and each pass over x does all the maths of that pass. What is kept for backward
stays x and the parameter views.

Compilation is paid once per process and kind of input: inputs are viewed as (N, C, S) (any rank,
contiguous or channels_last, without a copy), shapes are dynamic, each dtype and layout has its
own compiled entry (so no entry meets torch.compile's recompile limit), and Inductor keeps its
generated code on disk across processes (its FX graph cache), so the comparison harness's workers
reuse it. ``ADAPTACT_COMPILE=0`` turns compiling off (the eager Functions run); if compiling
fails (no C++ compiler, an unsupported platform), the eager Functions run from then on, after one
warning. Under an outer ``torch.compile`` the eager Functions are traced into the caller's graph.
"""

from __future__ import annotations

import functools
import os
import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from . import autograd as AG

__all__ = ["COMPILE_ENV", "DTYPES", "acon_c", "acon_c_pixel", "aprelu", "arelu", "available", "dy_relu",
           "signed_spatial_mean"]

COMPILE_ENV = "ADAPTACT_COMPILE"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what is compiled; float64 runs eagerly

_failure: list[BaseException] = []  # the error that turned compiling off in this process


def available() -> bool:
    """Whether compiled bodies run: not switched off by ADAPTACT_COMPILE=0, not failed before."""
    return os.environ.get(COMPILE_ENV, "1") != "0" and not _failure


def _give_up(err: BaseException) -> None:
    _failure.append(err)
    message = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    warnings.warn(f"adaptact: compiling the CPU activation kernels failed ({type(err).__name__}: {message}); "
                  f"running the eager memory-lean Functions from now on (set {COMPILE_ENV}=0 to skip "
                  "compiling)", RuntimeWarning, stacklevel=4)


def _own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its graphs (and its recompile
    limit) per code object, so each kind of input gets its own."""
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


# Inductor stores ("realizes") an intermediate read by more than 4 consumers, and a reduction
# whose inputs are such stored tensors gets a loop of its own: ACON-C's backward became a pass
# that wrote sigmoid(u) and two more x-sized products and a second pass that read them back.
# Recomputing them in the consumers' loop is what these memory-bound graphs want.
_INDUCTOR_OPTIONS = {"realize_reads_threshold": 64}


@functools.cache
def _compiled(fn: Callable, kind: tuple) -> Callable:
    """``fn`` (an ``ops.autograd`` entry: Function.apply) compiled whole for one ``kind`` of input
    (``_kind``): dynamo traces the Function's forward and backward, Inductor fuses each, and the
    Function's saved tensors stay what it saves (x and the parameter views)."""
    return torch.compile(_own_code(fn), dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)


def _kind(args: tuple) -> tuple:
    """What makes torch.compile trace again, bar sizes: dtypes, stride orders, sizes of 1 (which
    it specialises), which tensors need gradients, other arguments; each kind gets a compiled entry
    of its own."""
    return tuple((t.dtype, tuple(sorted(range(t.ndim), key=lambda d: -t.stride(d))),
                  tuple(s == 1 for s in t.shape), t.requires_grad) if isinstance(t, Tensor) else t
                 for t in args)


def _call(fn: Callable, *args):
    """``fn(*args)`` compiled, or eager when compiling fails (then for good, after a warning)."""
    if not available():
        return fn(*args)
    compiled = _compiled(fn, _kind(args))
    try:
        return compiled(*args)
    except Exception as err:  # noqa: BLE001  (any failure to compile: the eager call decides)
        result = fn(*args)  # a genuine error in the inputs raises here, as without compiling
        _give_up(err)
        return result


# APReLU's pooling compiled whole would save a sign mask of x beside x: its bodies are compiled
# one by one instead, inside the eager Function that saves x alone.
_SignedMean = AG.signed_mean_function(
    "CompiledSignedMeanFunction", lambda x, dtype: _call(AG.signed_mean_forward, x, dtype),
    lambda dneg, dpos, x: _call(AG.signed_mean_backward, dneg, dpos, x))


def _as_3d(x: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]] | None:
    """x as an (N, C, S) view and its parameter views as (·, ·, 1), so one compiled graph serves
    every rank; None when that needs a copy (the eager Function runs then)."""
    if x.ndim < 2 or any(p.ndim > x.ndim for p in params):
        return None
    params = tuple(p.reshape((1,) * (x.ndim - p.ndim) + tuple(p.shape)) for p in params)  # (C, 1, 1) too
    if any(s != 1 for p in params for s in p.shape[2:]):
        return None
    try:
        x3 = x.view(*x.shape[:2], -1)
    except RuntimeError:
        return None
    return x3, tuple(p.view(*p.shape[:2], 1) for p in params)


def _compiles(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in DTYPES and available() and not torch.compiler.is_compiling()


def _differentiated(*tensors: Tensor) -> bool:
    """Whether autograd records this call (else only the forward body is needed: dynamo does not
    trace an autograd Function applied under no_grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _apply(eager: Callable[..., Tensor], x: Tensor, *params: Tensor) -> Tensor:
    flat = _as_3d(x, params) if _compiles(x) else None
    if flat is None:
        return eager(x, *params)
    x3, params3 = flat
    fn = eager if _differentiated(x, *params) else _FORWARD[eager]
    return _call(fn, x3, *params3).view(x.shape)


def arelu(x: Tensor, slope: Tensor, gain: Tensor) -> Tensor:
    """``ops.autograd.arelu`` compiled by Inductor."""
    return _apply(AG.arelu, x, slope, gain)


def _arelu_from_parameters(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    return AG.arelu(x, alpha.clamp(0.01, 0.99).reshape(1, 1, 1), (1 + torch.sigmoid(beta)).reshape(1, 1, 1))


def arelu_from_parameters(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor | None:
    """AReLU from its parameters alpha and beta (one value each), the slope and gain computed in
    the same compiled graph as the activation; None when x cannot take this path."""
    flat = _as_3d(x, ()) if _compiles(x) and alpha.numel() == beta.numel() == 1 else None
    if flat is None:
        return None
    fn = _arelu_from_parameters if _differentiated(x, alpha, beta) else _arelu_inference
    return _call(fn, flat[0], alpha, beta).view(x.shape)


def _arelu_inference(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    slope, gain = alpha.clamp(0.01, 0.99).reshape(1, 1, 1), (1 + torch.sigmoid(beta)).reshape(1, 1, 1)
    return AG.arelu_forward(x, slope, gain)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """``ops.autograd.acon_c`` compiled by Inductor."""
    return _apply(AG.acon_c, x, p1, p2, beta)


def acon_c_pixel(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """``ops.autograd.acon_c_pixel`` compiled by Inductor."""
    return _apply(AG.acon_c_pixel, x, p1, p2)


def aprelu(x: Tensor, alpha: Tensor) -> Tensor:
    """``ops.autograd.aprelu`` compiled by Inductor."""
    return _apply(AG.aprelu, x, alpha)


_FORWARD = {AG.arelu: AG.arelu_forward, AG.acon_c: AG.acon_c_forward,
            AG.acon_c_pixel: AG.acon_c_pixel_forward, AG.aprelu: AG.aprelu_forward}


def signed_spatial_mean(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``ops.autograd.signed_spatial_mean`` compiled by Inductor."""
    flat = _as_3d(x, ()) if _compiles(x) else None
    if flat is None:
        return AG.signed_spatial_mean(x, dtype)
    return _SignedMean.apply(flat[0], dtype)


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``ops.autograd.dy_relu`` compiled; ``a``, ``b`` are (N, C or 1, 1..., K) views."""
    if not _compiles(x) or x.ndim < 2:
        return AG.dy_relu(x, a, b)
    try:
        x3 = x.view(*x.shape[:2], -1)
    except RuntimeError:
        return AG.dy_relu(x, a, b)
    a3, b3 = (t.reshape(t.shape[0], t.shape[1], 1, t.shape[-1]) for t in (a, b))
    fn = AG.dy_relu if _differentiated(x, a, b) else AG.dy_relu_forward
    return _call(fn, x3, a3, b3).view(x.shape)


# --- Meta-ACON-C and APReLU: one Function owns pooling, generator and activation ---------------
#
# As the Triton path (ops/triton/generated.py): the pooling's gradient is added in the dx pass
# instead of materialising an x-sized gradient of its own and adding it to dx, so forward reads x
# twice (pooling, activation) and backward reads x and dy twice (parameter gradients, dx): the
# compiled bodies below, each one fused loop over x.


def _sums(x: Tensor) -> Tensor:
    return x.float().sum(dim=2)


def _signed_sums(x: Tensor) -> tuple[Tensor, Tensor]:
    xf = x.float()
    return torch.clamp(xf, max=0).sum(dim=2), torch.relu(xf).sum(dim=2)


def _acon_param_grads(dy: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, want: tuple[bool, ...]):
    """The gradients of p1, p2 (per channel) and beta (per sample) as ``ops.autograd``'s
    formulas give them, every reduction a sum over S per (n, c), so that Inductor makes one loop
    over x and dy with three accumulators (the sums over N follow on (N, C) tensors). Reducing
    p1/p2 over (N, S) directly, as the eager formulas do, gives Inductor two reduction shapes: two
    loops, with sigmoid(u) stored x-sized between them."""
    x, p1, p2, beta, dy = AG._up(x, p1, p2, beta, dy)
    dp = p1 - p2
    d = dp * x
    u = beta * d
    s = torch.sigmoid(u)
    t = dy * s * (1 - s)
    on_p1 = ((dy * s + u * t) * x).sum(2, keepdim=True)  # dy d(d sigmoid(beta d))/dd x
    on_p2 = ((dy * (1 - s) - u * t) * x).sum(2, keepdim=True)  # dy x - the above, in the same loop
    dbeta = (t * d * d).sum(2, keepdim=True)
    dp1, dp2 = on_p1.sum_to_size(p1.shape), on_p2.sum_to_size(p2.shape)
    return dp1 if want[0] else None, dp2 if want[1] else None, dbeta.sum_to_size(beta.shape)


def _acon_input_grad(dy: Tensor, x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, pooled: Tensor) -> Tensor:
    dx = AG.acon_c_backward(dy, x, p1, p2, beta, (True, False, False, False))[0]
    return (dx + pooled).to(x.dtype)  # the mean's gradient: the same for every element of a row


def _aprelu_param_grads(dy: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    return AG.aprelu_backward(dy, x, alpha, (False, True))[1]


def _aprelu_input_grad(dy: Tensor, x: Tensor, alpha: Tensor, neg: Tensor, pos: Tensor) -> Tensor:
    dx = AG.aprelu_backward(dy, x, alpha, (True, False))[0]
    # clamp(max=0) passes the gradient at 0, relu does not: 0 goes to the negative side
    return (dx + torch.where(x.float() > 0, pos, neg)).to(x.dtype)


class _Generated(torch.autograd.Function):
    """(Meta-ACON-C) y = acon_c(x, p1, p2, generate(mean)) or (APReLU, ``p1`` and ``p2`` None)
    y = aprelu(x, generate(signed means)); x is (N, C, S), the parameters (·, ·, 1) views. The
    generator's small graph is built in forward and differentiated in backward; its parameters
    come in as ``weights``."""

    FIXED = 6  # inputs before ``weights``

    @staticmethod
    def forward(ctx, x: Tensor, p1: Tensor | None, p2: Tensor | None, dtype: torch.dtype,
                generate: Callable[[Tensor], Tensor], signed: bool, *weights: Tensor) -> Tensor:
        size = x.shape[2]
        stats = torch.cat(_call(_signed_sums, x), dim=1) if signed else _call(_sums, x)
        with torch.enable_grad():
            s = (stats / size).to(dtype).requires_grad_()
            c = generate(s)
        ctx.save_for_backward(x, *(() if p1 is None else (p1, p2)))
        ctx.generated = (s, c, tuple(weights))
        ctx.size, ctx.signed = size, signed
        cv = _sample_view(c)
        if p1 is None:
            return _call(AG.aprelu_forward, x, cv)
        return _call(AG.acon_c_forward, x, p1, p2, cv)

    @staticmethod
    @AG._first_order
    def backward(ctx, dy: Tensor):
        x, *ps = ctx.saved_tensors
        s, c, weights = ctx.generated
        want = ctx.needs_input_grad
        want_weights = want[_Generated.FIXED:]
        cv = _sample_view(c)
        dp1 = dp2 = None
        if ps:
            p1, p2 = ps
            dp1, dp2, dc = _call(_acon_param_grads, dy, x, p1, p2, cv, (want[1], want[2], True))
            dp1, dp2 = (None if g is None else g.to(p.dtype) for g, p in ((dp1, p1), (dp2, p2)))
        else:
            dc = _call(_aprelu_param_grads, dy, x, cv)
        trainable = [w for w, needed in zip(weights, want_weights) if needed]
        ds, *dw = torch.autograd.grad(c, [s, *trainable], dc.reshape(c.shape).to(c.dtype), retain_graph=True,
                                      allow_unused=True)
        dx = None
        if want[0]:
            ds = torch.zeros_like(s, dtype=torch.float32) if ds is None else ds.float() / ctx.size
            if ctx.signed:
                neg, pos = (t.unsqueeze(-1) for t in ds.chunk(2, dim=1))
                dx = _call(_aprelu_input_grad, dy, x, cv, neg, pos)
            else:
                dx = _call(_acon_input_grad, dy, x, *ps, cv, ds.unsqueeze(-1))
        given = iter(dw)
        weight_grads = [next(given) if needed else None for needed in want_weights]
        return (dx, dp1, dp2, None, None, None, *weight_grads)


def _sample_view(c: Tensor) -> Tensor:
    """The generated (N, C) or (N, 1) parameter, outside its graph, as (N, C or 1, 1)."""
    return c.detach().unsqueeze(-1)


def generated(x: Tensor, p1: Tensor | None, p2: Tensor | None, generate: Callable[[Tensor], Tensor],
              weights: tuple[Tensor, ...], dtype: torch.dtype, signed: bool) -> Tensor | None:
    """Meta-ACON-C (``p1``, ``p2``: views against x) or APReLU (None, None, ``signed``) as one
    compiled Function; None when x cannot take this path (the caller composes then)."""
    flat = _as_3d(x, () if p1 is None else (p1, p2)) if _compiles(x) else None
    if flat is None:
        return None
    x3, params = flat
    p13, p23 = params if params else (None, None)
    return _Generated.apply(x3, p13, p23, dtype, generate, signed, *weights).view(x.shape)
