"""Pick the implementation behind an adaptive activation: ``backend=`` on every module.

* ``"reference"``: the plain composition in ``adaptact.functional`` (the truth).
* ``"autograd"``: ``ops.autograd``'s memory-lean Functions (any device), bodies run eagerly.
* ``"compiled"``: the same Functions with bodies compiled by Inductor (``ops.compiled``; CPU,
  float32/float16/bfloat16; otherwise, or with ADAPTACT_COMPILE=0, the eager bodies).
* ``"triton"``: fused Triton kernels (CUDA; on CPU only under ``TRITON_INTERPRET=1``), always:
  float32, float16 and bfloat16 inputs (the kernels compute in float32); anything else raises.
* ``"auto"``: triton for float32/float16/bfloat16 CUDA tensors when Triton imports, compiled for
  those dtypes on the CPU unless ADAPTACT_COMPILE=0 or compiling failed, autograd elsewhere
  (float64 included); except that a small float32 CPU call that records no gradient (decoding,
  inference under no_grad: ``eager_pays``) runs the reference, which costs less than a compiled
  entry's call there. On a module, a Triton failure under "auto" warns once and
  switches that module to autograd (``ActivationModule``, ``ops.fallback``).

Every function here takes the same arguments as its ``adaptact.functional`` namesake plus
``backend`` and returns the same numbers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from types import ModuleType

import torch
from torch import Tensor

from .. import functional as AF
from . import autograd as AG
from . import compiled as CP
from . import kinds
from .transforms import reference_under_torch_func, refusal, transform_active, under_torch_func

__all__ = ["BACKENDS", "IMPLEMENTATIONS", "KERNEL_DTYPES", "Pointwise", "acon_c", "acon_c_pixel",
           "acon_c_positions", "aprelu", "aprelu_per_position", "aprelu_positions", "arelu", "auto_backend",
           "check_backend", "dy_relu", "dy_relu_per_position", "dy_relu_positions", "eager_pays", "frelu_max",
           "fused_backend", "fuses_positions", "implementation", "meta_acon_c", "meta_acon_c_per_position",
           "reference_under_torch_func", "refusal", "resolve", "signed_spatial_mean", "transform_active",
           "triton_available", "under_torch_func"]

BACKENDS = ("auto", "reference", "autograd", "compiled", "triton")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


def _on_gpu(x: Tensor) -> bool:
    return x.is_cuda


def auto_backend(x: Tensor, *tensors: Tensor) -> str:
    """What ``backend="auto"`` runs for ``x`` (and ``tensors``, the other inputs that a torch.func
    transform may be transforming)."""
    return "reference" if under_torch_func(x, *tensors) else fused_backend(x)


# Below this many elements a CPU call that needs no gradient runs the eager reference under "auto":
# a compiled entry's fixed cost per call (guards, the graph's launch) exceeds what it saves there.
# Measured on this project's machine (benchmarks/RESULTS.md, "Small calls"): DY-ReLU-B crosses over
# first, between 5504 and 44032 elements; the others cross at 44032 elements or above.
EAGER_NUMEL = 1 << 14


def eager_pays(x: Tensor) -> bool:
    """Whether "auto" runs the eager reference for ``x``: a float32 CPU tensor of at most
    ``EAGER_NUMEL`` elements (half precision keeps the fused paths, which compute in float32),
    called where no gradient is recorded (``torch.no_grad``, inference mode: nothing
    is saved for a backward, so the memory-lean Functions have nothing to save either)."""
    return (not torch.is_grad_enabled() and x.dtype == torch.float32 and x.is_cpu and not _on_gpu(x)
            and x.numel() <= EAGER_NUMEL)


def fused_backend(x: Tensor) -> str:
    """What "auto" runs for ``x`` where no torch.func transform reaches it."""
    if _on_gpu(x):
        return "triton" if x.dtype in KERNEL_DTYPES and triton_available() else "autograd"
    if x.is_cpu and x.dtype in CP.DTYPES and CP.available():
        return "compiled"
    return "autograd"


def resolve(backend: str, x: Tensor, *tensors: Tensor) -> str:
    """The backend that runs for ``x`` (and ``tensors``, the op's other inputs); explains why when
    "triton" cannot, or when a fused backend is named under a torch.func transform."""
    if backend == "auto":
        return auto_backend(x, *tensors)
    if backend != "reference" and under_torch_func(x, *tensors):
        raise refusal(backend)
    if backend == "triton":
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(f"backend='triton' takes float32, float16 and bfloat16 inputs (its kernels "
                            f"compute in float32), got {x.dtype}: use backend='autograd', or 'auto', which "
                            "picks it")
        if not triton_available():
            raise RuntimeError("backend='triton' needs Triton: pip install 'adaptact[triton]'")
        if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on CPU tensors runs only in Triton's interpreter: set "
                               "TRITON_INTERPRET=1 before starting Python (for tests), or use "
                               "backend='autograd'")
        if x.device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend='triton' supports CUDA tensors, got a {x.device.type} tensor")
    return backend


def _view(t: Tensor, x: Tensor) -> Tensor:
    """Parameters keep their dtype on the fused paths: they compute in float32 for half inputs."""
    return AF.channel_view(t, x, cast=False)


def _triton() -> ModuleType:
    from . import triton as T

    return T


# The backend table: each name and the module that implements it. "reference" is the plain
# composition (autograd differentiates it); the other three run the same memory-lean Functions
# (one derivative per activation, ``ops.autograd``): eagerly, compiled by Inductor on the CPU
# (``ops.compiled``), or as fused Triton kernels (``ops.triton``, imported on first use).
# Which one runs for an input: ``resolve`` (``auto_backend`` under "auto").
IMPLEMENTATIONS: dict[str, Callable[[], ModuleType]] = {
    "reference": lambda: AF, "autograd": lambda: AG, "compiled": lambda: CP, "triton": _triton}


def implementation(backend: str) -> ModuleType:
    """The module implementing ``backend`` (a name of ``IMPLEMENTATIONS``, not "auto")."""
    return IMPLEMENTATIONS[backend]()


def _lean(backend: str, name: str) -> Callable[..., Tensor]:
    """``ops.autograd``'s memory-lean Function ``name`` as a fused ``backend`` runs it: eagerly,
    compiled by Inductor (``ops.compiled.lean``) or by its Triton kernels (``ops.triton.lean``)."""
    if backend == "autograd":
        return getattr(AG, name)
    if backend == "compiled":
        return CP.lean(name)
    if backend == "triton":
        return _triton().lean(name)
    raise ValueError(f"backend {backend!r} has no memory-lean Functions")


def _no_kernel(backend: str) -> str:
    """The elementwise activations of language models have no Triton kernel (yet): their lean
    Function runs eagerly where "triton" would (``ActivationModule._run(triton=False)`` reports
    that as "autograd"; it refuses a module's backend="triton")."""
    return "autograd" if backend == "triton" else backend


def golu(x: Tensor, backend: str = "auto") -> Tensor:
    """GoLU (``functional.golu``) by ``backend``: the lean Functions save x alone."""
    b = _no_kernel(resolve(backend, x))
    if b == "reference":
        return AF.golu(x)
    return _lean(b, "golu")(x)


def xielu(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor, eps: Tensor,
          backend: str = "auto") -> Tensor:
    """xIELU (``functional.xielu``) by ``backend``: the lean Functions save x alone."""
    b = _no_kernel(resolve(backend, x, alpha_p, alpha_n, beta, eps))
    if b == "reference":
        return AF.xielu(x, alpha_p, alpha_n, beta, eps)
    return _lean(b, "xielu")(x, alpha_p, alpha_n, beta, eps)


def polynorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, dim: int, backend: str = "auto") -> Tensor:
    """PolyNorm (``functional.polynorm``) over ``dim`` by ``backend``: the lean Functions save x
    alone, not the reference's six x-sized intermediates."""
    b = _no_kernel(resolve(backend, x, weight, bias))
    if b == "reference":
        return AF.polynorm(x, weight, bias, eps, dim)
    return _lean(b, "polynorm")(x.movedim(dim, -1), weight, bias, eps).movedim(-1, dim)


def _as_given(*params: Tensor) -> tuple[Tensor, ...]:
    return params


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A parameter of one value per channel, or a single value, against x: what a compiled entry
    from the parameters traces (0-D and (C,) alike)."""
    return t.reshape((1, -1) + (1,) * (x.ndim - 2))


class Pointwise:
    """The route of an activation computed element by element from parameters that broadcast
    against x (single values, one per channel on x's dim 1, per sample or per row):
    ``op(x, *params, backend=...)``, the reference's numbers by every backend.

    * "reference": ``reference(x, *params)``, autograd differentiating it;
    * "compiled", where each parameter is (C,) or a single value: ``prepare``, the views against x
      and the Function, compiled as one graph from the parameters themselves
      (``compiled.from_parameters``), so no eager op or autograd node runs for them on each call;
    * otherwise ``ops.autograd``'s Function ``name`` on ``prepare(*params)`` viewed against x, run
      by the backend (``_lean``). "triton" runs the kernels of the kind of that name
      (``ops.kinds``); a Function without a kind runs eagerly there (``_no_kernel``).

    Args:
        name: the activation's function in ``functional`` (the reference, unless ``reference`` is
            given), its Function in ``ops.autograd``, and its kind in ``ops.kinds`` where it has one.
        prepare: the Function's parameters from the caller's (AReLU's slope clamp(alpha) and gain
            1 + sigmoid(beta)); None: the caller's, as they are.
        reference: the reference, where it is not ``functional.<name>``.
    """

    def __init__(self, name: str, *, prepare: Callable[..., tuple[Tensor, ...]] | None = None,
                 reference: Callable[..., Tensor] | None = None) -> None:
        self.name = name
        self.reference: Callable[..., Tensor] = reference or getattr(AF, name)
        self.prepare = prepare or _as_given
        self.kernel = name in kinds.NAMED
        lean, given = getattr(AG, name), self.prepare

        def traced(x: Tensor, *params: Tensor) -> Tensor:
            return lean(x, *(_channel_view(t, x) for t in given(*params)))

        # a code object of its own: torch.compile's graphs and recompile limit are per code object
        self.traced = CP.own_code(traced)
        self.traced.__qualname__ = f"{name} (from its parameters)"  # what a long compile's notice names

    def __call__(self, x: Tensor, *params: Tensor, backend: str = "auto") -> Tensor:
        b = resolve(backend, x, *params)
        if b == "reference":
            return self.reference(x, *params)
        if not self.kernel:
            b = _no_kernel(b)
        if b == "compiled":
            y = CP.from_parameters(self.traced, x, *params)
            if y is not None:
                return y
        return _lean(b, self.name)(x, *(_view(t, x) for t in self.prepare(*params)))

    def __repr__(self) -> str:
        return f"Pointwise({self.name!r})"


def _slope_and_gain(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    return alpha.clamp(0.01, 0.99), 1 + torch.sigmoid(beta)


def _acon_c_pixel_reference(x: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    return AF.acon_c(x, p1, p2, torch.sigmoid(x))


arelu = Pointwise("arelu", prepare=_slope_and_gain)
acon_c = Pointwise("acon_c")
"""ACON-C with per-channel (C,) or per-sample (N, C) / (N, 1) ``beta`` (also ACON-A/B, Meta-ACON)."""
acon_c_pixel = Pointwise("acon_c_pixel", reference=_acon_c_pixel_reference)
"""Meta-ACON-C with pixel-wise beta = sigmoid(x)."""


def _owns_generator(backend: str) -> bool:
    """Eager Triton runs the generated activations as one 8-pass Function (``ops/triton/generated.py``);
    under torch.compile the composite (pooling, generator, activation op) compiles whole instead."""
    return backend == "triton" and not torch.compiler.is_compiling()


def meta_acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta_from_mean: Callable[[Tensor], Tensor],
                weights: Callable[[], Sequence[Tensor]], dtype: torch.dtype, backend: str = "auto") -> Tensor:
    """Meta-ACON-C with beta = ``beta_from_mean``(spatial means of x, (N, C) in ``dtype``);
    ``weights()``: the tensors ``beta_from_mean`` uses that may need gradients (asked for by the
    Triton path only)."""
    b = resolve(backend, x, p1, p2)
    if _owns_generator(b):
        return _triton().generated_acon_c(x, _view(p1, x), _view(p2, x), beta_from_mean, weights(), dtype)
    if b == "compiled":
        y = CP.whole(_meta_acon_c, x, p1, p2, beta_from_mean, dtype, "autograd",
                     channels_last=_meta_acon_c_last)
        if y is not None:
            return y
        b = "autograd"  # eager, as ops.compiled runs where it does not compile
    return _meta_acon_c(x, p1, p2, beta_from_mean, dtype, b)


def _meta_acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta_from_mean: Callable[[Tensor], Tensor],
                 dtype: torch.dtype, backend: str) -> Tensor:
    """Pooling, generator and activation by ``backend`` (reference or a lean one): what the compiled
    backend traces and compiles as one graph (``ops.compiled.whole``, with "autograd")."""
    beta = beta_from_mean(AF.spatial_mean(x, dtype))
    if backend == "reference":
        return AF.acon_c(x, p1, p2, beta)
    return _lean(backend, "acon_c")(x, _view(p1, x), _view(p2, x), _view(beta, x))


# The composites written for channels-last x, (N, *, C) with the channels innermost (transformer
# tokens): pooled over the middle dims, coefficients broadcast on the last dim. Compiled from the
# contiguous channels-last tensor, Inductor orders their loops as for the reference and keeps only
# x for backward (from the channels-first view of such x it took up to twice as long, and from a
# view made inside the graph it kept an x-sized intermediate besides x).


def _inner_dims(last: Tensor) -> tuple[int, ...]:
    return tuple(range(1, last.ndim - 1))


def _per_sample_last(t: Tensor, last: Tensor) -> Tensor:
    """(N, C[, K]) coefficients viewed against channels-last (N, *, C)."""
    return t.reshape((t.shape[0],) + (1,) * (last.ndim - 2) + tuple(t.shape[1:]))


def _meta_acon_c_last(last: Tensor, p1: Tensor, p2: Tensor, beta_from_mean: Callable[[Tensor], Tensor],
                      dtype: torch.dtype) -> Tensor:
    beta = beta_from_mean(last.mean(_inner_dims(last), dtype=dtype))
    return AG.acon_c(last, p1, p2, _per_sample_last(beta, last))


def _dy_relu_last(last: Tensor, coefficients_from_mean: Callable[[Tensor], tuple[Tensor, Tensor]],
                  dtype: torch.dtype) -> Tensor:
    a, b = coefficients_from_mean(last.mean(_inner_dims(last), dtype=dtype))
    a, b = (_per_sample_last(_pieces_apart(t), last) for t in (a, b))
    return AG.dy_relu(last, a, b)


def _pieces_apart(t: Tensor) -> Tensor:
    """(N, C, K) pieces stored piece by piece, each (N, C) slice contiguous: against channels-last
    x the loop over C then reads each piece's coefficients with unit stride (vector loads), not
    K apart."""
    return t.movedim(-1, 0).contiguous().movedim(0, -1)


def _aprelu_last(last: Tensor, alpha_from_stats: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Tensor:
    dims = _inner_dims(last)
    neg, pos = torch.clamp(last, max=0).mean(dims, dtype=dtype), torch.relu(last).mean(dims, dtype=dtype)
    stats = torch.cat((neg, pos), dim=1)
    return AG.aprelu(last, _per_sample_last(alpha_from_stats(stats), last))


def aprelu(x: Tensor, alpha_from_stats: Callable[[Tensor], Tensor], weights: Callable[[], Sequence[Tensor]],
           dtype: torch.dtype, backend: str = "auto") -> Tensor:
    """APReLU with alpha = ``alpha_from_stats``(concat(GAP(min(x, 0)), GAP(max(x, 0))), (N, 2C) in
    ``dtype``); ``weights()``: the tensors ``alpha_from_stats`` uses that may need gradients
    (asked for by the Triton path only)."""
    b = resolve(backend, x)
    if _owns_generator(b):
        return _triton().generated_aprelu(x, alpha_from_stats, weights(), dtype)
    if b == "compiled":
        y = CP.whole(_aprelu, x, alpha_from_stats, dtype, "autograd", channels_last=_aprelu_last)
        if y is not None:
            return y
        b = "autograd"
    return _aprelu(x, alpha_from_stats, dtype, b)


def _aprelu(x: Tensor, alpha_from_stats: Callable[[Tensor], Tensor], dtype: torch.dtype,
            backend: str) -> Tensor:
    alpha = alpha_from_stats(torch.cat(signed_spatial_mean(x, dtype, backend), dim=1))
    if backend == "reference":
        return AF.aprelu(x, alpha)
    return _lean(backend, "aprelu")(x, _view(alpha, x))


def dy_relu(x: Tensor, coefficients_from_mean: Callable[[Tensor], tuple[Tensor, Tensor]],
            weights: Callable[[], Sequence[Tensor]], dtype: torch.dtype, backend: str = "auto") -> Tensor:
    """Dynamic ReLU with (a, b) = ``coefficients_from_mean``(spatial means of x, (N, C) in
    ``dtype``), each (N, C, K) or (N, 1, K); ``weights()``: the tensors it uses that may
    need gradients (asked for by the Triton path only)."""
    b = resolve(backend, x)
    if _owns_generator(b):
        return _triton().generated_dy_relu(x, coefficients_from_mean, weights(), dtype)
    if b == "compiled":
        y = CP.whole(_dy_relu, x, coefficients_from_mean, dtype, "autograd", channels_last=_dy_relu_last)
        if y is not None:
            return y
        b = "autograd"
    return _dy_relu(x, coefficients_from_mean, dtype, b)


def _dy_relu(x: Tensor, coefficients_from_mean: Callable[[Tensor], tuple[Tensor, Tensor]], dtype: torch.dtype,
             backend: str) -> Tensor:
    a, bias = coefficients_from_mean(AF.spatial_mean(x, dtype))
    if backend == "reference":
        return AF.dy_relu(x, a, bias)
    if backend == "triton":
        return _triton().dy_relu(x, a, bias)
    view = (a.shape[0], a.shape[1]) + (1,) * (x.ndim - 2) + (a.shape[-1],)
    return _lean(backend, "dy_relu")(x, a.reshape(view), bias.reshape(view))


# --- coefficients per position (context "causal" or "token") ---------------------------------
#
# For channels-last tokens ((B, T, C) in memory, seen here as the (B, C, T) view) the positions are
# rows: x is an (B*T, C) view and the coefficients (B*T, C or 1[, K]), and each row is a "sample"
# with one position, so the per-sample Functions, their compiled entries and their Triton kernels
# run unchanged. Channels-first (B, C, T) has no such view: the autograd Functions run there.


def fuses_positions(x: Tensor) -> bool:
    """Whether per-position coefficients of channels-first ``x`` (N, C, T) take the fused
    backends: x is channels-last tokens in memory, so (N*T, C) rows are a view of it."""
    return x.ndim == 3 and x.stride(1) == 1 and x.movedim(1, -1).is_contiguous()


def _position_backend(backend: str, x: Tensor, *tensors: Tensor) -> str:
    fuses = fuses_positions(x)
    if backend == "triton" and not fuses:
        raise ValueError("backend='triton' takes per-position coefficients (context 'causal' or 'token') "
                         "for channels-last tokens only, (B, T, C) with channel_dim=-1: use "
                         "backend='auto' or 'autograd' for channels-first (B, C, T)")
    b = resolve(backend, x, *tensors)
    return "autograd" if b in ("compiled", "triton") and not fuses else b


def _rows(t: Tensor) -> Tensor:
    """(N, C or 1, T[, K]) per position as (N*T, C or 1[, K]) rows (a view for token layouts)."""
    moved = t.movedim(1, 2)
    return moved.reshape(-1, *moved.shape[2:])


def _from_rows(y: Tensor, x: Tensor) -> Tensor:
    return y.view(x.movedim(1, -1).shape).movedim(-1, 1)


def acon_c_positions(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, backend: str = "auto") -> Tensor:
    """ACON-C with ``beta`` per position, (N, C or 1, T) for (N, C, T) ``x``."""
    b = _position_backend(backend, x, p1, p2, beta)
    if b == "reference":
        return AF.acon_c(x, p1, p2, beta)
    if not fuses_positions(x):
        return AG.acon_c(x, _view(p1, x), _view(p2, x), beta)
    return _from_rows(acon_c(_rows(x), p1, p2, _rows(beta), backend=b), x)


def aprelu_positions(x: Tensor, alpha: Tensor, backend: str = "auto") -> Tensor:
    """APReLU with ``alpha`` per position, (N, C or 1, T) for (N, C, T) ``x``."""
    b = _position_backend(backend, x, alpha)
    if b == "reference":
        return AF.aprelu(x, alpha)
    if not fuses_positions(x):
        return AG.aprelu(x, alpha)
    return _from_rows(_lean(b, "aprelu")(_rows(x), _rows(alpha)), x)


def dy_relu_positions(x: Tensor, a: Tensor, b: Tensor, backend: str = "auto") -> Tensor:
    """Dynamic ReLU with pieces per position, ``a`` and ``b`` (N, C or 1, T, K) for (N, C, T) ``x``."""
    chosen = _position_backend(backend, x, a, b)
    if chosen == "reference":
        return AF.dy_relu(x, a, b)
    if not fuses_positions(x):
        return AG.dy_relu(x, a, b)
    return _from_rows(_lean(chosen, "dy_relu")(_rows(x), _pieces_apart(_rows(a)), _pieces_apart(_rows(b))), x)


# The same with the generator: ``generate(x)`` gives the coefficients per position. On the compiled
# backend, generator and activation compile as one graph (as ``_generated`` does per sample) when
# ``stateless``: the generator keeps nothing between calls (it does while decoding with a cache).


def meta_acon_c_per_position(x: Tensor, p1: Tensor, p2: Tensor, beta_per_position: Callable[[Tensor], Tensor],
                             stateless: bool, backend: str = "auto") -> Tensor:
    """Meta-ACON-C with beta = ``beta_per_position``(x), (N, C or 1, T) for (N, C, T) ``x``."""
    b = _position_backend(backend, x)
    if b == "compiled" and stateless:
        y = CP.whole(_generated_then, x, acon_c_positions, beta_per_position, p1, p2, "autograd")
        if y is not None:
            return y
    return _generated_then(x, acon_c_positions, beta_per_position, p1, p2, b)


def aprelu_per_position(x: Tensor, alpha_per_position: Callable[[Tensor], Tensor], stateless: bool,
                        backend: str = "auto") -> Tensor:
    """APReLU with alpha = ``alpha_per_position``(x), (N, C or 1, T) for (N, C, T) ``x``."""
    b = _position_backend(backend, x)
    if b == "compiled" and stateless:
        y = CP.whole(_generated_then, x, aprelu_positions, alpha_per_position, "autograd")
        if y is not None:
            return y
    return _generated_then(x, aprelu_positions, alpha_per_position, b)


def dy_relu_per_position(x: Tensor, pieces_per_position: Callable[[Tensor], tuple[Tensor, Tensor]],
                         stateless: bool, backend: str = "auto") -> Tensor:
    """Dynamic ReLU with (a, b) = ``pieces_per_position``(x), each (N, C or 1, T, K)."""
    b = _position_backend(backend, x)
    if b == "compiled" and stateless:
        y = CP.whole(_generated_then, x, dy_relu_positions, pieces_per_position, "autograd")
        if y is not None:
            return y
    return _generated_then(x, dy_relu_positions, pieces_per_position, b)


Coefficients = Callable[[Tensor], "Tensor | tuple[Tensor, ...]"]  # x -> its coefficients per position


def _generated_then(x: Tensor, op: Callable[..., Tensor], generate: Coefficients,
                    *params_and_backend) -> Tensor:
    """``op(x, *params, *generate(x), backend=backend)``."""
    *params, backend = params_and_backend
    coefficients = generate(x)
    if isinstance(coefficients, Tensor):
        coefficients = (coefficients,)
    return op(x, *params, *coefficients, backend=backend)


def frelu_max(x: Tensor, t: Tensor, backend: str = "auto") -> Tensor:
    """FReLU's max(x, T(x)): the reference keeps t for backward, the lean Function (any device:
    every other backend runs it, but "auto" under torch.func) one byte per element."""
    if backend == "reference" or (backend == "auto" and under_torch_func(x, t)):
        return AF.frelu(x, t)
    return reference_under_torch_func(lambda: AG.frelu_max(x, t), lambda: AF.frelu(x, t), backend)


def signed_spatial_mean(x: Tensor, dtype: torch.dtype, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(GAP(min(x, 0)), GAP(max(x, 0))), each (N, C) in ``dtype``: APReLU's statistics."""
    def reference() -> tuple[Tensor, Tensor]:
        return AF.spatial_mean(torch.clamp(x, max=0), dtype), AF.spatial_mean(torch.relu(x), dtype)

    b = resolve(backend, x)
    if b == "reference":
        return reference()
    lean = CP if b == "compiled" else AG  # saves only x
    return reference_under_torch_func(lambda: lean.signed_spatial_mean(x, dtype), reference, backend)

