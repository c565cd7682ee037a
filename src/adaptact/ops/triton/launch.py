"""Host side of the Triton kernels: layouts, launch plans, launches, and their registration as
PyTorch operators (``torch.library.triton_op``) with autograd, so torch.compile and torch.export
see them as ops (Dynamo does not graph-break on them)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.library import wrap_triton

from .. import autograd as AG
from .. import fallback, kinds
from . import kernels as K

__all__ = ["Plan", "lean", "plan"]

MIN_TILE = 256  # elements per program at least (where the tensor has them): amortises each program's set-up
MAX_TILE = 4096  # elements per program at most
MIN_PROGRAMS = 512  # programs wanted before tiles grow past MIN_TILE: every SM gets several
MIN_RUN = 64  # elements at least along the unit-stride dim (where it has them): whole 32-byte sectors
MIN_ROWS = 32  # tile rows at least when channels are unit-stride: partial sums stay <= 1/32 of x
LARGE = 2**18  # channel-inner tensors this large get MIN_RUN x MIN_ROWS tiles even above numel / MIN_PROGRAMS
GOOD_USE = 0.85  # a tiling is good when this share of its lanes lies inside the tensor
ELEMENTS_PER_THREAD = 16  # num_warps = tile / (32 * this), 1 to 8: four 128-bit loads per tensor in fp32
INT32_LIMIT = 2**31


def _dense(x: Tensor) -> Tensor:
    """x itself when it has no gaps or overlaps (so ``empty_like`` gives its outputs x's strides:
    the kernels address x, y and dx alike) and its spatial dims flatten to one stride, as for
    contiguous and channels_last tensors; else a contiguous copy."""
    return x if _gapless(x) and _spatial_flattens(x) else x.contiguous()


def _readable(t: Tensor) -> Tensor:
    """A tensor that is only read (dy) needs one stride per dim of (N, C, S), nothing more:
    expanded and strided views are read where they are."""
    return t if _spatial_flattens(t) else t.contiguous()


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


def _strides(x: Tensor) -> tuple[int, int, int]:
    """Strides of (n, c, flattened spatial index) of a tensor whose spatial dims flatten."""
    # the flattened spatial stride: that of the innermost spatial dim of size > 1 (1 if none)
    ss = next((st for size, st in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])) if size != 1), 1)
    return x.stride(0), x.stride(1), ss


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _pow2_at_least(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def _use(size: int, block: int) -> float:
    """Share of the lanes of the blocks covering ``size`` elements that lie inside."""
    return size / (-(-size // block) * block)


def _powers_of_two(size: int, limit: int) -> list[int]:
    """Block sizes for a dim of ``size``: powers of two up to the first that covers it, at most ``limit``."""
    top = max(1, min(_pow2_at_least(size), limit))
    return [1 << k for k in range(top.bit_length())]


@dataclass(frozen=True)
class Plan:
    """How the kernels walk an (N, C, S) tensor with strides (sn, sc, ss): one program per tile of
    block_n x block_c x block_s elements, on a 1-D grid of ``programs``."""

    n: int
    c: int
    s: int
    block_n: int
    block_c: int
    block_s: int
    wide: bool  # 64-bit offsets

    @property
    def blocks(self) -> tuple[int, int, int]:
        return (-(-self.n // self.block_n), -(-self.c // self.block_c), -(-self.s // self.block_s))

    @property
    def programs(self) -> int:
        return math.prod(self.blocks)

    @property
    def tile(self) -> int:
        """Elements (lanes) per program."""
        return self.block_n * self.block_c * self.block_s

    @property
    def lanes_used(self) -> float:
        """Useful elements / (programs x elements per program)."""
        return self.n * self.c * self.s / max(1, self.programs * self.tile)

    @property
    def num_warps(self) -> int:
        return max(1, min(8, self.tile // (32 * ELEMENTS_PER_THREAD)))

    def meta(self) -> dict:
        """The geometry and tiling arguments every kernel takes."""
        _, nb_c, nb_s = self.blocks
        return {"N": self.n, "C": self.c, "S": self.s, "NB_C": nb_c, "NB_S": nb_s, "BLOCK_N": self.block_n,
                "BLOCK_C": self.block_c, "BLOCK_S": self.block_s, "WIDE": self.wide,
                "num_warps": self.num_warps}


@functools.lru_cache(maxsize=4096)
def plan(shape: tuple[int, ...], strides: tuple[int, int, int], *others: tuple[int, int, int]) -> Plan:
    """The launch plan for an (N, C, *spatial) tensor whose (n, c, flattened spatial) strides are
    ``strides`` (``others``: those of further tensors the kernel reads, such as dy).

    Tiles are powers of two per dim. The tile budget grows with the tensor from MIN_TILE to
    MAX_TILE elements (at least MIN_RUN x MIN_ROWS for LARGE channels-inner tensors). Among the
    tilings within it, the plan takes, in this order of priority: at least MIN_TILE elements
    (where the tensor has them); a run of at least MIN_RUN along the unit-stride dim (S for
    NCHW-like, C for channels_last and (N, C)), where loads and stores coalesce and vectorise;
    when channels are unit-stride, at least MIN_ROWS rows along S and along N and S (partial sums
    stay small against x); the most lanes inside the tensor, all
    shares above GOOD_USE counted alike; then the largest tile and run."""
    n, c = shape[0], shape[1]
    s = math.prod(shape[2:])
    numel = n * c * s
    sizes = {"n": n, "c": c, "s": s}
    inner = next((d for d, st in zip("ncs", strides) if st == 1 and sizes[d] > 1 and d != "n"), "c")
    budget = max(MIN_TILE, min(MAX_TILE, _pow2_at_most(numel // MIN_PROGRAMS)))
    if inner == "c" and numel >= LARGE:  # room for MIN_ROWS rows of MIN_RUN channels
        budget = max(budget, MIN_RUN * MIN_ROWS)
    min_tile = min(MIN_TILE, _pow2_at_least(numel))
    min_run = min(MIN_RUN, _pow2_at_least(sizes[inner]))

    def score(blocks: tuple[int, int, int]) -> tuple:
        bn, bc, bs = blocks
        tile = bn * bc * bs
        run = blocks["ncs".index(inner)]
        lanes = _use(n, bn) * _use(c, bc) * _use(s, bs)
        # partial sums per (n, c) add numel / bs floats, per channel numel / (bn * bs)
        rows = inner != "c" or (bs >= min(MIN_ROWS, _pow2_at_least(s))
                                and bn * bs >= min(MIN_ROWS, _pow2_at_least(n * s)))
        return (tile >= min_tile, run >= min_run, rows, min(lanes, GOOD_USE), tile, run, lanes)

    tilings = [(bn, bc, bs) for bn in _powers_of_two(n, budget) for bc in _powers_of_two(c, budget // bn)
               for bs in _powers_of_two(s, budget // (bn * bc))]
    bn, bc, bs = max(tilings, key=score)
    reach = max(sum((size - 1) * st for size, st in zip((n, c, s), t)) for t in (strides, *others))
    return Plan(n, c, s, bn, bc, bs, wide=max(reach, numel) >= INT32_LIMIT)


def _plan_for(x: Tensor, *others: Tensor) -> Plan:
    """The plan for x (sizes and strides as ints: under torch.compile that specialises on them)."""
    return plan(_ints(x.shape), _ints(_strides(x)), *(_ints(_strides(t)) for t in others))


def _ints(dims) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def _launch(kernel, p: Plan, **arguments) -> None:
    """One launch of ``kernel`` over plan ``p``, all arguments by keyword."""
    wrap_triton(kernel)[(p.programs,)](**p.meta(), **arguments)


def _nc(p: Tensor, x: Tensor) -> tuple[Tensor, int, int]:
    """An (N, C) view of a parameter broadcast against x, and its two strides."""
    view = p.expand(*x.shape[:2], *([1] * (x.ndim - 2)))[(...,) + (0,) * (x.ndim - 2)]
    return view, view.stride(0), view.stride(1)


def _params(a: Tensor, b: Tensor, c: Tensor, x: Tensor) -> dict:
    (a2, asn, asc), (b2, bsn, bsc), (c2, csn, csc) = _nc(a, x), _nc(b, x), _nc(c, x)
    return {"a_ptr": a2, "b_ptr": b2, "c_ptr": c2, "a_sn": asn, "a_sc": asc, "b_sn": bsn, "b_sc": bsc,
            "c_sn": csn, "c_sc": csc}


def _per_sample(x: Tensor, *params: Tensor) -> bool:
    """Whether a parameter differs between samples, so its gradient is reduced per (n, c)."""
    return x.shape[0] > 1 and any(_nc(p, x)[1] != 0 for p in params)


def _partial_sums(p: Plan, per_sample: bool, device: torch.device) -> Tensor:
    """float32 buffer for a kernel's partial sums: (NB_S, N, C) per sample, (NB_N * NB_S, C) else."""
    nb_n, _, nb_s = p.blocks
    shape = (nb_s, p.n, p.c) if per_sample else (nb_n * nb_s, p.c)
    return (torch.empty if p.programs else torch.zeros)(shape, dtype=torch.float32, device=device)


def _sum_partials(partials: Tensor, p: Plan) -> Tensor:
    """Partial sums reduced to (N, C) (per sample) or (1, C)."""
    return partials.sum(0).reshape(-1, p.c)


def _grad_to(grad: Tensor, p: Tensor, x: Tensor) -> Tensor:
    """An (N, C) or (1, C) gradient summed to the shape of the parameter view ``p`` broadcast against x."""
    grad = grad.reshape(*grad.shape[:2], *([1] * (x.ndim - 2)))
    return grad.sum_to_size(p.shape).reshape(p.shape).to(p.dtype)


def _unused(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32, device=x.device)


@torch.library.triton_op("adaptact::activation_fwd", mutates_args=())
def activation_fwd(x: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int) -> Tensor:
    """y for activation ``kind`` (see kernels.py) with parameters broadcasting against x on dims 0/1."""
    x = _dense(x)
    y = torch.empty_like(x)
    if x.numel():
        sn, sc, ss = _strides(x)
        _launch(K.activation_fwd, _plan_for(x), x_ptr=x, y_ptr=y, **_params(a, b, c, x),
                x_sn=sn, x_sc=sc, x_ss=ss, KIND=kind)
    return y


def _backward(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int, grads: bool,
              pooled: tuple[Tensor, Tensor] | None = None, dx: bool = True):
    """One launch of the backward kernel: dx (with the pooling terms ``pooled`` = (N, C) values
    for x <= 0 and x > 0) and/or the float32 sums of the gradients of a, b and c, (N, C) where a
    parameter is per sample, else (1, C); zeros for those ``kind`` does not have."""
    x, dy = _dense(x), _readable(dy)
    p = _plan_for(x, dy)
    none = _unused(x)
    out = torch.empty_like(x) if dx else none  # dx in x's layout, as the gradient of a leaf x wants
    has = kinds.KINDS[kind].parameters if grads else ""
    per_sample = _per_sample(x, *(t for name, t in zip("abc", (a, b, c)) if name in has))
    partials = {name: _partial_sums(p, per_sample, x.device) if name in has else none for name in "abc"}
    neg, pos = (none, none) if pooled is None else (t.float().contiguous() for t in pooled)
    if x.numel():
        sn, sc, ss = _strides(x)
        dsn, dsc, dss = _strides(dy)
        _launch(K.activation_bwd, p, x_ptr=x, dy_ptr=dy, dx_ptr=out, ga_ptr=partials["a"],
                gb_ptr=partials["b"],
                gc_ptr=partials["c"], pool_neg_ptr=neg, pool_pos_ptr=pos, **_params(a, b, c, x),
                x_sn=sn, x_sc=sc, x_ss=ss, dy_sn=dsn, dy_sc=dsc, dy_ss=dss, KIND=kind,
                GRAD_A="a" in has, GRAD_B="b" in has, GRAD_C="c" in has, PER_SAMPLE=per_sample, DX=dx,
                POOLED=pooled is not None)
    sums = tuple(_sum_partials(partials[name], p) if name in has else
                 torch.zeros(1, p.c, dtype=torch.float32, device=x.device) for name in "abc")
    return out, sums


@torch.library.triton_op("adaptact::activation_bwd", mutates_args=())
def activation_bwd(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx and the float32 gradients of a, b and c ((N, C) or (1, C)), in one pass."""
    dx, (ga, gb, gc) = _backward(x, dy, a, b, c, kind, grads=True)
    return dx, ga, gb, gc


@torch.library.triton_op("adaptact::activation_param_grads", mutates_args=())
def activation_param_grads(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, kind: int
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """The float32 gradients of a, b and c alone ((N, C) or (1, C)): a pass that reads x and dy."""
    _, (ga, gb, gc) = _backward(x, dy, a, b, c, kind, grads=True, dx=False)
    return ga, gb, gc


@torch.library.triton_op("adaptact::activation_input_grad", mutates_args=())
def activation_input_grad(x: Tensor, dy: Tensor, a: Tensor, b: Tensor, c: Tensor, neg: Tensor, pos: Tensor,
                          kind: int) -> Tensor:
    """dx plus a pooling gradient: ``neg`` (N, C) where x <= 0, ``pos`` (N, C) where x > 0."""
    dx, _ = _backward(x, dy, a, b, c, kind, grads=False, pooled=(neg, pos))
    return dx


@torch.library.triton_op("adaptact::signed_sums", mutates_args=())
def signed_sums(x: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of min(x, 0), sum of max(x, 0)) over the spatial dims, (N, C) float32: one read of x."""
    x = _dense(x)
    p = _plan_for(x)
    neg, pos = _partial_sums(p, True, x.device), _partial_sums(p, True, x.device)
    if x.numel():
        sn, sc, ss = _strides(x)
        _launch(K.signed_sums, p, x_ptr=x, neg_ptr=neg, pos_ptr=pos, x_sn=sn, x_sc=sc, x_ss=ss)
    return _sum_partials(neg, p), _sum_partials(pos, p)


def _setup_context(ctx, inputs, output) -> None:
    x, a, b, c, kind = inputs
    ctx.save_for_backward(x, a, b, c)
    ctx.kind = kind


@AG._first_order
def _activation_backward(ctx, dy: Tensor):
    x, a, b, c = ctx.saved_tensors
    want = ctx.needs_input_grad
    try:
        dx, ga, gb, gc = torch.ops.adaptact.activation_bwd(x, dy, a, b, c, ctx.kind)
        grads = [_grad_to(g, p, x) if needed else None
                 for g, p, needed in zip((ga, gb, gc), (a, b, c), want[1:4])]
    except Exception as err:
        on_failure = fallback.handler(ctx)  # set when the forward ran under backend="auto"
        if on_failure is None:
            raise
        on_failure(err)
        dx, *grads = fallback.activation_grads(x, dy, a, b, c, ctx.kind)
    return (dx if want[0] else None, *(g if want[i + 1] else None for i, g in enumerate(grads)), None)


activation_fwd.register_autograd(_activation_backward, setup_context=_setup_context)


def _launcher(kind: kinds.Kind) -> Callable[..., Tensor]:
    def launch(x: Tensor, *params: Tensor) -> Tensor:
        a, b, c = (_unused(x) if t is None else t for t in kind.operands(*params))
        return activation_fwd(x, a, b, c, kind.number)

    launch.__name__ = launch.__qualname__ = kind.name
    return launch


_LAUNCHERS = {name: _launcher(kind) for name, kind in kinds.NAMED.items()}


def lean(name: str) -> Callable[..., Tensor]:
    """``ops.autograd``'s Function ``name`` by the kernels of its kind (``ops.kinds``): the same
    arguments (x and its parameters viewed against x), the same numbers."""
    return _LAUNCHERS[name]
