"""The memory-lean Functions of ``ops.autograd`` compiled by Inductor: the CPU default.

Each Function (it saves only the input and the small parameter views) is compiled whole:
dynamo traces its forward and backward, and Inductor turns each into fused C++ loops, so
float16/bfloat16 inputs are computed in float32 element by element, never as float32 copies of
whole tensors, and each pass over x does all the maths of that pass. What is kept for backward
stays x and the parameter views. The activations with a generator (Meta-ACON-C, APReLU, Dynamic
ReLU) compile pooling, generator and Function as one graph each way (``whole``).

Compilation is paid once per process and kind of input: inputs of rank 3 and up are viewed as
(N, C, S) (contiguous or channels_last, without a copy), shapes are dynamic (parameters' and the
generators' widths too), each dtype and layout has its own compiled entry, and Inductor keeps its
generated code on disk across processes (its FX graph cache), so the comparison harness's workers
reuse it. Entries are compiled ahead of time and called without dynamo's per-call frame work, their
guards checked directly (``_Entry``): a call costs what one of torch.compile of the reference
composition does (benchmarks/call_overhead.py). ``ADAPTACT_COMPILE=0`` turns compiling off
(the eager Functions run); if compiling fails (no C++ compiler, an unsupported platform), the
eager Functions run from then on, after one warning. Under an outer ``torch.compile`` the eager
Functions are traced into the caller's graph.
"""

from __future__ import annotations

import inspect
import os
import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.fx.experimental import _config as fx_config

from . import autograd as AG

__all__ = ["COMPILE_ENV", "DTYPES", "acon_c", "acon_c_from_parameters", "acon_c_pixel", "arelu",
           "arelu_from_parameters", "available", "signed_spatial_mean", "whole"]

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


class _TracingConfig:
    """How our functions are traced. Module parameters and buffers get symbolic sizes (dynamo makes
    them static by default), so one graph serves every width of ACON-C's parameters or of a
    generator (static, each width was a recompile, and the ninth hit dynamo's recompile limit, which
    ended compiling for the process); sizes that happen to be equal are not assumed to stay equal
    (no duck sizing); Python floats in modules (BatchNorm's eps, momentum) are constants (as
    symbols, ahead-of-time compiling stops with TensorifyScalarRestartAnalysis). Set only around
    compiling and around calls of the fallback entry (torch.compile's, which may trace on any call)."""

    SETTINGS = ((torch._dynamo.config, "force_parameter_static_shapes", False),
                (torch._dynamo.config, "force_nn_module_property_static_shapes", False),
                (torch._dynamo.config, "specialize_float", True),
                (fx_config, "use_duck_shape", False))

    # What torch says to itself while compiling ours: dynamo reads .grad of each input as it records
    # guards (x viewed as (N, C, S) is no leaf); its compilers use APIs it has deprecated.
    QUIET = ((UserWarning, "The .grad attribute of a Tensor that is not a leaf"), (DeprecationWarning, ""))

    def __enter__(self) -> None:
        self.saved = [getattr(config, name) for config, name, _ in self.SETTINGS]
        for config, name, value in self.SETTINGS:
            setattr(config, name, value)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        for category, message in self.QUIET:
            warnings.filterwarnings("ignore", message, category)

    def __exit__(self, *exc) -> None:
        self.warnings.__exit__(*exc)
        for (config, name, _), value in zip(self.SETTINGS, self.saved):
            setattr(config, name, value)


def _torch_compile(fn: Callable) -> Callable:
    return torch.compile(_own_code(fn), dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)


VARIANTS = 8  # compiled variants of one entry; inputs that fit none of them beyond this run eagerly


class _Entry:
    """``fn`` compiled for one kind of input (``_kind``), called without dynamo's per-call work.

    Each variant is compiled ahead of time (``torch.compile(...).aot_compile``) for the inputs that
    first needed it: dynamo traces fn (the Function's forward and backward), Inductor fuses each.
    A call checks the variants' guards (dynamo's own, in C++: dtypes, strides, sizes and their
    relations, grad mode, autocast, threads) and runs the first that holds, without the frame
    evaluation, cache lookup and context managers of a torch.compile'd call (AReLU's training step
    at (256, 512): 159 us, against 207 through torch.compile's entries; benchmarks/call_overhead.py).
    Inputs that fit no variant get a new one, up to ``VARIANTS``, then run eagerly (after one
    warning). Where this torch cannot compile ahead of time, torch.compile's own entry runs instead
    (the same code, with the per-call cost)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        code = fn.__code__
        self.names = code.co_varnames[: code.co_argcount]
        self.simple = not (code.co_freevars or code.co_kwonlyargcount
                           or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS))
        self.variants: list[tuple[Callable[[dict], bool], Callable]] = []
        self.jit: Callable | None = None  # torch.compile's entry, where ahead of time fails
        self.warned = False

    def __call__(self, *args):
        f_locals = dict(zip(self.names, args))
        for holds, run in self.variants:
            if holds(f_locals):
                return run(*args)
        if self.jit is not None:
            with _TracingConfig():
                return self.jit(*args)
        if len(self.variants) == VARIANTS:
            return self._eager(*args)
        try:
            variant = self._ahead_of_time(args)
        except Exception:  # noqa: BLE001  (not possible here, or a bad input: torch.compile's entry decides)
            jit = _torch_compile(self.fn)
            with _TracingConfig():
                result = jit(*args)  # a bad input raises here, as it would eagerly
            self.jit = jit
            return result
        self.variants.append(variant)
        return variant[1](*args)

    def _eager(self, *args):
        if not self.warned:
            self.warned = True
            warnings.warn(f"adaptact: {self.fn.__name__} has {VARIANTS} compiled variants and met an input "
                          "that fits none of them; such inputs run eagerly", RuntimeWarning, stacklevel=6)
        return self.fn(*args)

    def _ahead_of_time(self, args: tuple) -> tuple[Callable[[dict], bool], Callable]:
        if not self.simple or len(args) != len(self.names):
            raise ValueError("ahead-of-time entries take positional arguments only")
        with _TracingConfig():
            compiled = _torch_compile(self.fn).aot_compile((args, {}))
        # dynamo's guards and the compiled code, called directly (their public wrapper binds the
        # arguments with inspect: 4 us more a call)
        return compiled._artifacts.guard_manager.check, compiled.fn


_entries: dict[tuple, _Entry] = {}  # (fn, kind of input) -> its entry, for the process


def _compiled(fn: Callable, kind: tuple) -> Callable:
    """``fn`` (our traced function: an ``ops.autograd`` Function, the parameter transforms and
    views around it, or pooling and generator too) compiled whole for one ``kind`` of input; the
    Function's saved tensors stay what it saves (x and the parameter views)."""
    entry = _entries.get((fn, kind))
    if entry is None:
        entry = _entries[fn, kind] = _Entry(fn)
    return entry


def _kind(args: tuple) -> tuple:
    """What makes torch.compile trace again, bar sizes: grad mode, dtypes, stride orders, sizes of
    1 (which it specialises), which tensors need gradients, other arguments; a module's bound
    method counts as its function and the module's training mode (one entry per class, not per
    instance), a function as its code (a new lambda each call is not a new entry). Each kind gets
    a compiled entry of its own; what else dynamo guards on is checked by the entry's variants."""
    return torch.is_grad_enabled(), *map(_kind_of, args)


_IS_ONE = (1).__eq__


def _kind_of(a: object) -> object:
    if isinstance(a, Tensor):  # (written for speed: this runs on every call)
        stride = a.stride()
        order = (tuple(sorted(range(len(stride)), key=stride.__getitem__, reverse=True))  # ties keep order
                 if len(stride) > 1 else len(stride))
        return a.dtype, order, tuple(map(_IS_ONE, a.shape)), a.requires_grad
    owner = getattr(a, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        return a.__func__, owner.training
    return getattr(a, "__code__", a)  # a plain function or lambda: its code, not the object


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


def _as_shape_of(y: Tensor, x: Tensor) -> Tensor:
    """The result ``y`` of the flattened x in the shape of ``x``."""
    return y if y.ndim == x.ndim else y.view(x.shape)


def _compiles(x: Tensor) -> bool:
    return x.is_cpu and x.dtype in DTYPES and available() and not torch.compiler.is_compiling()


def _apply(eager: Callable[..., Tensor], x: Tensor, *params: Tensor) -> Tensor:
    flat = _flattened(x, params) if _compiles(x) else None
    if flat is None:
        return eager(x, *params)
    x3, params3 = flat
    return _as_shape_of(_call(eager, x3, *params3), x)


def arelu(x: Tensor, slope: Tensor, gain: Tensor) -> Tensor:
    """``ops.autograd.arelu`` compiled by Inductor."""
    return _apply(AG.arelu, x, slope, gain)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """``ops.autograd.acon_c`` compiled by Inductor."""
    return _apply(AG.acon_c, x, p1, p2, beta)


# From the modules' own parameters: their transforms and views against x happen in the compiled
# graph, not as eager ops (and autograd nodes) on every call.


def _from_parameters(traced: Callable[..., Tensor], x: Tensor, *params: Tensor) -> Tensor | None:
    """``traced(x, *params)`` compiled, params each (C,) or one value; None when x cannot take
    this path."""
    if not _compiles(x) or max(p.ndim for p in params) > 1:
        return None
    flat = _flattened(x, ())
    return None if flat is None else _as_shape_of(_call(traced, flat[0], *params), x)


def _channel_view(x: Tensor, p: Tensor) -> Tensor:
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def _arelu_traced(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    return AG.arelu(x, _channel_view(x, alpha.clamp(0.01, 0.99)), _channel_view(x, 1 + torch.sigmoid(beta)))


def arelu_from_parameters(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor | None:
    """AReLU from its parameters alpha and beta; None when x cannot take this path."""
    return _from_parameters(_arelu_traced, x, alpha, beta)


def _acon_c_traced(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    return AG.acon_c(x, _channel_view(x, p1), _channel_view(x, p2), _channel_view(x, beta))


def acon_c_from_parameters(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor | None:
    """ACON-C from per-channel (C,) parameters or single values; None when x cannot take this
    path (e.g. Meta-ACON's per-sample beta)."""
    return _from_parameters(_acon_c_traced, x, p1, p2, beta)


def acon_c_pixel(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """``ops.autograd.acon_c_pixel`` compiled by Inductor."""
    return _apply(AG.acon_c_pixel, x, p1, p2)


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


def whole(composite: Callable[..., Tensor], x: Tensor, *args) -> Tensor | None:
    """``composite(x, *args)`` (pooling, a generator that is a module's bound method, and an
    ``ops.autograd`` Function) traced and compiled as one graph, forward and backward; None when x
    cannot take this path. The compiled entry is shared by every module of a class (per kind of
    input and training mode): the generator's sizes are symbolic."""
    return _call(composite, x, *args) if _compiles(x) else None
