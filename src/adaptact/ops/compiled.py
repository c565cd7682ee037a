"""The memory-lean Functions of ``ops.autograd`` compiled by Inductor: the CPU default.

Each Function (it saves only the input and the small parameter views) is compiled whole:
dynamo traces its forward and backward, and Inductor turns each into fused C++ loops, so
float16/bfloat16 inputs are computed in float32 element by element, never as float32 copies of
whole tensors, and each pass over x does all the maths of that pass. What is kept for backward
stays x and the parameter views. The activations with a generator (Meta-ACON-C, APReLU, Dynamic
ReLU) compile pooling, generator and Function as one graph each way (``whole``).

Only torch's public compiler API is used: each kind of input (``_kind``: grad mode, dtypes,
stride orders, which sizes are 1 or equal, which tensors need gradients, the function and the
training mode) gets a ``torch.compile``'d function of its own (its own code object, so its own
recompile limit), called directly, compiled with every size symbolic (parameters' and generators'
widths too), so one entry serves every batch, spatial and channel size, and every rank from 3 up
(x is viewed as (N, C, S) without a copy). A recompile that dynamo starts inside a later call (a
guard beyond our key, such as Inductor's on a reduction's size) runs without that setting and
keeps widths static: past it each new width compiles again. Inductor keeps its generated code on disk across
processes (its FX graph cache, keyed by the graph itself), so the comparison harness's workers
reuse it.

Threads: tracing in one thread makes dynamo refuse compiled calls in every other one, so a first
call (which compiles) runs alone and compiled calls run side by side otherwise (``_Gate``).
``ADAPTACT_COMPILE=0`` turns compiling off (the eager Functions run); if compiling fails (no C++
compiler, an unsupported platform), the eager Functions run from then on, after one warning,
and ``failure()`` says why. Under an outer ``torch.compile`` the eager Functions are traced into
the caller's graph.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import autograd as AG
from .transforms import transform_active

__all__ = ["COMPILE_ENV", "DTYPES", "available", "dy_relu", "failure", "from_parameters", "golu", "lean",
           "own_code", "polynorm", "signed_spatial_mean", "whole", "xielu"]

COMPILE_ENV = "ADAPTACT_COMPILE"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what is compiled; float64 runs eagerly

_failure: list[BaseException] = []  # the error that turned compiling off in this process


def available() -> bool:
    """Whether compiled bodies run: not switched off by ADAPTACT_COMPILE=0, not failed before."""
    return os.environ.get(COMPILE_ENV, "1") != "0" and not _failure


def failure() -> str | None:
    """Why compiling was given up in this process (one line), or None."""
    if not _failure:
        return None
    err = _failure[0]
    return f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else ""


def _give_up(err: BaseException) -> None:
    _failure.append(err)
    warnings.warn(f"adaptact: compiling the CPU activation kernels failed ({type(err).__name__}: "
                  f"{_first_line(err)}); running the eager memory-lean Functions from now on (set "
                  f"{COMPILE_ENV}=0 to skip compiling)", RuntimeWarning, stacklevel=4)


def own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its graphs (and its recompile
    limit) per code object, so each kind of input gets its own."""
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


# Inductor stores ("realizes") an intermediate read by more than 4 consumers, and a reduction
# whose inputs are such stored tensors gets a loop of its own: ACON-C's backward became a pass
# that wrote sigmoid(u) and two more x-sized products and a second pass that read them back.
# Recomputing them in the consumers' loop is what these memory-bound graphs want.
_INDUCTOR_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {"realize_reads_threshold": 64}

# What torch says to itself while compiling ours: dynamo reads .grad of each input as it records
# guards (x viewed as (N, C, S) is no leaf); its compilers use APIs it has deprecated.
_QUIET = ((UserWarning, "The .grad attribute of a Tensor that is not a leaf"), (DeprecationWarning, ""))

# Every size dynamo meets while tracing ours is symbolic, parameters' too (it makes them static by
# default: each width of ACON-C's parameters or of a generator was a new graph). A public compiler
# setting, per thread, set only while an entry compiles: a user's own torch.compile is untouched.
_EVERY_SOURCE = ".*"

# dynamo's answer, in a thread, while another thread traces (its "is FX tracing" flag is global)
_TRACING_ELSEWHERE = "symbolically trace a dynamo-optimized function"


class _Gate:
    """Compiled calls run side by side; a compile runs alone (dynamo refuses compiled calls in
    other threads while one thread traces). Writers first: a waiting compile is not starved."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.readers = 0
        self.writers = 0  # waiting or writing
        self.owner: int | None = None  # the thread that writes

    def shared(self) -> bool:
        """Enter as a reader; False when this thread already writes (nothing to release then)."""
        me = threading.get_ident()
        with self.cond:
            if self.owner == me:
                return False
            while self.writers:
                self.cond.wait()
            self.readers += 1
        return True

    def release_shared(self) -> None:
        with self.cond:
            self.readers -= 1
            if not self.readers:
                self.cond.notify_all()

    def exclusive(self) -> bool:
        """Enter alone; False when this thread already writes."""
        me = threading.get_ident()
        with self.cond:
            if self.owner == me:
                return False
            self.writers += 1
            while self.owner is not None or self.readers:
                self.cond.wait()
            self.owner = me
        return True

    def release_exclusive(self) -> None:
        with self.cond:
            self.owner = None
            self.writers -= 1
            self.cond.notify_all()


_gate = _Gate()

COMPILE_NOTICE_S = 5.0  # a compile still running after this long says, once per process, what it does
_said: list[bool] = []


def _say_compiling(fn: Callable) -> None:
    """Log (at WARNING: Python prints it without any logging set up) what a long compile is, once
    per process: the user waiting on a first call learns why and how to skip it."""
    if _said:
        return
    _said.append(True)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    logging.getLogger("adaptact").warning(
        "adaptact: compiling %s for the CPU with torch.compile (once per kind of input and process; "
        "Inductor's disk cache serves later processes; ADAPTACT_COMPILE=0 runs the eager code instead)", name)


class _Entry:
    """``fn`` compiled (``torch.compile``, dynamic sizes, whole graph) for one kind of input.

    The first call compiles, alone (``_Gate``), with every size symbolic (``_EVERY_SOURCE``) and
    torch's own compile-time warnings silenced; later calls run side by side. A later call that
    dynamo still traces (a guard it keeps beyond our key) and that meets another thread's tracing
    is retried alone."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled = torch.compile(own_code(fn), dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)
        self.ready = False

    def __call__(self, *args):
        if self.ready:
            entered = _gate.shared()
            try:
                return self.compiled(*args)
            except RuntimeError as err:
                if _TRACING_ELSEWHERE not in str(err):
                    raise
            finally:
                if entered:
                    _gate.release_shared()
        return self._alone(*args)

    def _alone(self, *args):
        entered = _gate.exclusive()
        notice = None if self.ready else threading.Timer(COMPILE_NOTICE_S, _say_compiling, (self.fn,))
        if notice is not None:
            notice.daemon = True
            notice.start()
        try:
            with warnings.catch_warnings(), torch.compiler.config.patch(dynamic_sources=_EVERY_SOURCE):
                for category, message in _QUIET:
                    warnings.filterwarnings("ignore", message, category)
                result = self.compiled(*args)
            self.ready = True
            return result
        finally:
            if notice is not None:
                notice.cancel()
            if entered:
                _gate.release_exclusive()


_entries: dict[tuple, _Entry] = {}  # (fn, kind of input) -> its entry, for the process
_entries_lock = threading.Lock()


def _compiled(fn: Callable, kind: tuple) -> Callable:
    """``fn`` (our traced function: an ``ops.autograd`` Function, the parameter transforms and
    views around it, or pooling and generator too) compiled whole for one ``kind`` of input; the
    Function's saved tensors stay what it saves (x and the parameter views)."""
    entry = _entries.get((fn, kind))
    if entry is None:
        with _entries_lock:
            entry = _entries.get((fn, kind))
            if entry is None:
                entry = _entries[fn, kind] = _Entry(fn)
    return entry


def _kind(rank: int, args: tuple) -> tuple:
    """What makes torch.compile trace again, bar the sizes it keeps symbolic: grad mode, the rank x
    had before it was viewed as (N, C, S) (dynamo guards the base of a view), dtypes, stride
    orders, which tensors need gradients, other arguments; a module's bound method counts as its
    function and the module's training mode (one entry per class, not per instance), a function
    as its code (a new lambda each call is not a new entry); and of every size of the tensors and
    of the bound methods' modules' parameters, which are 1 (dynamo specialises those) and which
    are equal (it assumes equal sizes stay equal). Each kind gets a compiled entry of its own."""
    sizes: list[int] = []
    kind: list[object] = [torch.is_grad_enabled(), rank]
    for a in args:  # (written for speed: this runs on every call)
        if isinstance(a, Tensor):
            stride = a.stride()
            order = (tuple(sorted(range(len(stride)), key=stride.__getitem__, reverse=True))
                     if len(stride) > 1 else len(stride))  # (ties keep their order)
            sizes += a.shape
            kind.append((a.dtype, order, a.requires_grad))
            continue
        owner = getattr(a, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            kind.append((a.__func__, owner.training))
            for p in owner.parameters():
                sizes += p.shape
        else:
            kind.append(getattr(a, "__code__", a))  # a plain function or lambda: its code, not the object
    kind += tuple(map(sizes.index, sizes)), tuple(map(_IS_ONE, sizes))
    return tuple(kind)


_IS_ONE = (1).__eq__


def _call(fn: Callable, rank: int, *args):
    """``fn(*args)`` compiled, or eager when compiling fails (then for good, after a warning);
    ``rank``: x's before it was viewed as (N, C, S)."""
    if not available():
        return fn(*args)
    compiled = _compiled(fn, _kind(rank, args))
    try:
        return compiled(*args)
    except Exception as err:  # noqa: BLE001  (any failure to compile: the eager call decides)
        result = fn(*args)  # a genuine error in the inputs raises here, as without compiling
        if not transform_active():  # dynamo refuses to trace under a torch.func transform: this call only
            _give_up(err)
        return result


# APReLU's pooling compiled whole would save a sign mask of x beside x: its bodies are compiled
# one by one instead, inside the eager Function that saves x alone.
_SignedMean: Any = AG.signed_mean_function(
    "CompiledSignedMeanFunction", lambda x, dtype: _call(AG.signed_mean_forward, 3, x, dtype),
    lambda dneg, dpos, x: _call(AG.signed_mean_backward, 3, dneg, dpos, x))


def _flattened(x: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]] | None:
    """x and its parameter views as they are for 2-D and 3-D x; for higher ranks x as an (N, C, S)
    view and the parameters as (·, ·, 1), so one compiled graph serves ranks 3 and up (rank 2 has
    its own: viewing (N, C) as (N, C, 1) and back costs four autograd view nodes a step). None when
    that needs a copy (the eager Function runs then)."""
    if x.ndim <= 3 and all(p.ndim == x.ndim for p in params):
        return (x, params) if x.ndim >= 2 else None
    if x.ndim < 2 or any(p.ndim > x.ndim for p in params):
        return None
    params = tuple(p.reshape((1,) * (x.ndim - p.ndim) + tuple(p.shape)) for p in params)  # (C, 1, 1) too
    if any(s != 1 for p in params for s in p.shape[2:]):
        return None
    try:
        x3 = x.view(x.shape[0], x.shape[1], -1)
    except RuntimeError:
        return None
    return x3, tuple(p.view(*p.shape[:2], 1) for p in params)


def _rows(x: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]] | None:
    """x as an (M, C) view and the parameters as (1, C) or (1, 1), where x's channels have unit
    stride and its other dims flatten (transformer tokens (B, T, C) with channel_dim=-1, channels_last
    maps) and no parameter varies but along the channels. Inductor then reduces the parameter
    gradients over M with C innermost, as it does for torch.compile of the reference; the (N, C, S)
    view of such x reduces over its outer dim S, at twice the time. None otherwise."""
    if x.ndim < 3 or x.stride(1) != 1 or x.shape[1] == 1:
        return None
    for p in params:  # viewed against x: one value, or C on dim 1 and 1 elsewhere
        shape = (1,) * (x.ndim - p.ndim) + tuple(p.shape)
        if any(size != 1 for dim, size in enumerate(shape) if dim != 1):
            return None
    last = x.movedim(1, -1)
    if not last.is_contiguous():
        return None
    return last.view(-1, x.shape[1]), tuple(p.reshape(1, -1) for p in params)


def _as_shape_of(y: Tensor, x: Tensor) -> Tensor:
    """The result ``y`` of the flattened x in the shape of ``x`` (from (M, C) rows: x's layout)."""
    if y.ndim == x.ndim:
        return y
    if y.ndim == 2:
        return y.view(x.movedim(1, -1).shape).movedim(-1, 1)
    return y.view(x.shape)


def _compiles(x: Tensor) -> bool:
    return x.is_cpu and x.dtype in DTYPES and available() and not torch.compiler.is_compiling()


def _apply(eager: Callable[..., Tensor], x: Tensor, *params: Tensor) -> Tensor:
    flat = (_rows(x, params) or _flattened(x, params)) if _compiles(x) else None
    if flat is None:
        return eager(x, *params)
    x3, params3 = flat
    return _as_shape_of(_call(eager, x.ndim, x3, *params3), x)


def _elementwise(eager: Callable[..., Tensor], x: Tensor, *scalars: Tensor) -> Tensor:
    """An elementwise Function with scalar parameters compiled on x as one flat view (every rank
    and layout without a copy shares one graph); eager where x has no flat view."""
    if not _compiles(x) or not x.is_contiguous():
        return eager(x, *scalars)
    return _call(eager, 1, x.view(-1), *scalars).view(x.shape)


def golu(x: Tensor) -> Tensor:
    """``ops.autograd.golu`` compiled by Inductor."""
    return _elementwise(AG.golu, x)


def xielu(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor) -> Tensor:
    """``ops.autograd.xielu`` compiled by Inductor."""
    return _elementwise(AG.xielu, x, alpha_p, alpha_n, beta, eps)


def polynorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``ops.autograd.polynorm`` (over x's last dim) compiled by Inductor on x as (M, C) rows."""
    if not _compiles(x) or not x.is_contiguous() or x.ndim < 2:
        return AG.polynorm(x, weight, bias, eps)
    return _call(AG.polynorm, 2, x.view(-1, x.shape[-1]), weight, bias, eps).view(x.shape)


def from_parameters(traced: Callable[..., Tensor], x: Tensor, *params: Tensor) -> Tensor | None:
    """``traced(x, *params)`` compiled, params each (C,) or one value (a module's own parameters,
    whose transforms and views against x then happen in the compiled graph, not as eager ops and
    autograd nodes on every call); None when x cannot take this path."""
    if not _compiles(x) or max((p.ndim for p in params), default=0) > 1:
        return None
    flat = _rows(x, ()) or _flattened(x, ())
    return None if flat is None else _as_shape_of(_call(traced, x.ndim, flat[0], *params), x)


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``ops.autograd.dy_relu`` compiled by Inductor, for (M, C) rows and pieces (M, C or 1, K)
    (per-position coefficients); other shapes run eagerly."""
    if x.ndim != 2 or not _compiles(x):
        return AG.dy_relu(x, a, b)
    return _call(AG.dy_relu, 2, x, a, b)


# The lean Functions compiled on shapes of their own; every other one goes through ``_apply`` (its
# entry made on first use). A dict, not functools.cache: dynamo warns of a cached function it traces.
_LEAN: dict[str, Callable[..., Tensor]] = {"golu": golu, "xielu": xielu, "polynorm": polynorm,
                                            "dy_relu": dy_relu}


def lean(name: str) -> Callable[..., Tensor]:
    """``ops.autograd``'s Function ``name`` compiled by Inductor: the same arguments (x and its
    parameters viewed against x: per channel, per sample or per row), the same numbers. x enters as
    (N, C, S) or (M, C) rows (``_apply``); the elementwise ones as one flat view, PolyNorm as rows of
    its last dim, Dynamic ReLU as (M, C) rows."""
    compiled = _LEAN.get(name)
    if compiled is None:
        compiled = functools.partial(_apply, getattr(AG, name))
        if not torch.compiler.is_compiling():  # (kept while traced, the dict's size would be a guard
            _LEAN[name] = compiled  # that the next call broke: one more graph)
    return compiled


def signed_spatial_mean(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``ops.autograd.signed_spatial_mean`` compiled by Inductor."""
    flat = _flattened(x, ()) if _compiles(x) else None
    if flat is None:
        return AG.signed_spatial_mean(x, dtype)
    return _SignedMean.apply(flat[0], dtype)


# --- Meta-ACON-C, APReLU, Dynamic ReLU: pooling, generator and activation in one graph ---------
#
# Compiled piece by piece (pooling, the eager generator, the activation; four compiled calls a
# step and the generator's dozen small eager ops each way) these cost 0.4-0.5 ms a step more than
# torch.compile of the reference. Traced whole, the generator's parameters and BatchNorm buffers
# are read from its module by dynamo, the memory-lean Function's forward and backward are inlined,
# and one compiled graph runs each way; what the partitioner keeps for backward is still x and
# (N, C)-sized tensors (tests/ops/test_compiled.py measures it).


def whole(composite: Callable[..., Tensor], x: Tensor, *args,
          channels_last: Callable[..., Tensor] | None = None) -> Tensor | None:
    """``composite(x, *args)`` (pooling, a generator that is a module's bound method, and an
    ``ops.autograd`` Function) traced and compiled as one graph, forward and backward; None when x
    cannot take this path. The compiled entry is shared by every module of a class (per kind of
    input and training mode): the generator's sizes are symbolic.

    x whose channels have unit stride and which is contiguous channels last (transformer tokens,
    channels_last maps) enters the graph as that contiguous tensor: ``channels_last(last, *args)``
    (``args`` without the trailing backend) computes on it directly where given, else ``composite``
    runs on its channels-first view made inside the graph. Either way Inductor orders the loops of
    the poolings and gradient sums as for torch.compile of the reference; given the channels-first
    view as its input, it took up to twice as long."""
    if not _compiles(x):
        return None
    if x.ndim >= 3 and x.stride(1) == 1 and x.shape[1] > 1:
        last = x.movedim(1, -1)
        if last.is_contiguous():
            if channels_last is not None:
                return _call(channels_last, x.ndim, last, *args[:-1]).movedim(-1, 1)
            return _call(_channels_last, x.ndim, last, composite, *args).movedim(-1, 1)
    return _call(composite, x.ndim, x, *args)


def _channels_last(last: Tensor, composite: Callable[..., Tensor], *args) -> Tensor:
    return composite(last.movedim(-1, 1), *args).movedim(1, -1)
