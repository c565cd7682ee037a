"""Shared plumbing of adaptact's activation modules: input checks and state_dict loading."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from torch.func import debug_unwrap

from ..ops import dispatch, distributed, fallback
from .entry import Entry
from .families import BatchNorm

__all__ = ["ActivationModule", "CheckedStateDict", "PointwiseActivation", "batch_norm", "check_input",
           "int_at_least", "logit", "normalise", "silence", "statistics_dtype", "track_running_stats"]

FITS = ("it fits AReLU, ACON-A/B/C, Meta-ACON-C, APReLU, Dynamic ReLU, FReLU, PReLU, Swish and the "
        "activations made with adaptact.define")
_FLOAT32 = torch.float32
_is_compiling = torch.compiler.is_compiling
_COMPILE_NEXT = "compiled, once backward reached the first call"  # see ActivationModule._route
COMPILE_AFTER_CALLS = 8
"""With gradients, the call of a kind of input that compiles where no backward came (``_route``)."""


def _compile_after_backward(y: torch.Tensor, routes: dict, key: tuple) -> None:
    """Make ``routes[key]`` "compiled" once backward has reached ``y`` (at once where it will not)."""
    def compiled(grad: torch.Tensor) -> None:
        if routes.get(key) == _COMPILE_NEXT:
            routes[key] = "compiled"

    if isinstance(y, torch.Tensor) and y.requires_grad:
        y.register_hook(compiled)
    else:
        compiled(y)


# ``init="match"``'s starting values: per start, per fitted tensor, its values
Starts = list[list[list[float]]]


def silence(layer: nn.Module) -> None:
    """A generator's last layer outputs zeros whatever its input (``init="match"`` makes an
    input-conditioned activation constant in its input this way)."""
    with torch.no_grad():
        for p in layer.parameters(recurse=False):
            p.zero_()


def logit(p: float) -> float:
    """log(p / (1 - p)), with p kept in [1e-6, 1 - 1e-6]."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def int_at_least(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_input(module: nn.Module, x: torch.Tensor, channels: int | None) -> None:
    """Raise a clear error for inputs an activation cannot take.

    Floating-point tensors only; with ``channels`` set, the input must be (N, C, *) with
    C == channels on dim 1 (never a silent broadcast).
    """
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
    if channels is None:
        return
    if x.ndim < 2:
        raise ValueError(
            f"{name} has per-channel state and expects input of shape (N, C, *) with "
            f"channels on dim 1, got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} expected {channels} channels on dim 1, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )


def batch_norm(bn: BatchNorm, h: torch.Tensor) -> torch.Tensor:
    """Apply ``bn`` to (N, C, *) ``h``: the (N, C) statistics of a generator (Meta-ACON, APReLU)
    or FReLU's funnel condition.

    * One value per channel in training mode: batch statistics are undefined (torch's
      BatchNorm raises), so it is normalised with the running statistics, which stay
      unchanged, as in eval mode.
    * ``nn.SyncBatchNorm`` (after ``nn.SyncBatchNorm.convert_sync_batchnorm``) in distributed
      training: its batch is the global one. torch syncs only GPU tensors; for CPU tensors
      (gloo) the statistics are synced here with a differentiable all-reduce.
    """
    if isinstance(bn, nn.SyncBatchNorm):
        if bn.training and h.device.type == "cpu" and _distributed_world(bn) > 1:
            return _sync_batch_norm_cpu(bn, h)
        return bn(h)
    single = bn.training and h.numel() == h.shape[1]  # one value per channel (h may be a DTensor)
    if distributed.sharded(h):  # tensor parallel: each rank normalises its own channels
        y = distributed.batch_norm_on_shards(bn, h, bn.training and not single)
        if y is not None:
            return y
    if single:
        return nn.functional.batch_norm(
            h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    return bn(h)


def _distributed_world(bn: nn.SyncBatchNorm) -> int:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(bn.process_group or dist.group.WORLD)


def _sync_batch_norm_cpu(bn: nn.SyncBatchNorm, h: torch.Tensor) -> torch.Tensor:
    """Training-mode batch norm of (N, C, *) ``h`` over the whole process group (gloo, CPU)."""
    from torch.distributed.nn.functional import all_reduce

    group = bn.process_group or torch.distributed.group.WORLD
    c = h.shape[1]
    x = statistics_dtype(h)
    dims = [0, *range(2, x.ndim)]
    local = torch.cat((x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() // c])))
    total = all_reduce(local, group=group)  # differentiable sum over processes
    n = total[-1]
    mean = total[:c] / n
    var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
    track_running_stats(bn, mean, var * n / (n - 1).clamp_min(1))
    view = (-1,) + (1,) * (x.ndim - 2)
    y = (x - mean.view(view)) * torch.rsqrt(var.view(view) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(view) + bn.bias.view(view)
    return y.to(h.dtype)


def statistics_dtype(h: torch.Tensor) -> torch.Tensor:
    """``h`` for batch statistics: half precision computed in float32, float64 kept."""
    return h.float() if h.dtype in (torch.float16, torch.bfloat16) else h


def normalise(bn: BatchNorm, x: torch.Tensor, mean: torch.Tensor,
              var: torch.Tensor) -> torch.Tensor:
    """``x`` normalised with batch statistics ``mean`` and (biased) ``var``, then ``bn``'s affine."""
    y = (x - mean) * torch.rsqrt(var + bn.eps)
    return y * bn.weight + bn.bias if bn.affine else y


class _Recomputing(threading.local):
    depth = 0  # forwards under way that gradient checkpointing recomputes in backward (nn.replay)


RECOMPUTING = _Recomputing()


def track_running_stats(bn: BatchNorm, mean: torch.Tensor,
                        unbiased_var: torch.Tensor) -> None:
    """Move ``bn``'s running statistics towards a batch's, as its own forward does in training
    (nothing when it does not track them: ``track_running_stats=False``, nor in a recomputation
    in backward, whose forward moved them already: ``RECOMPUTING``)."""
    tracked, running_mean, running_var = bn.num_batches_tracked, bn.running_mean, bn.running_var
    if not bn.track_running_stats or tracked is None or running_mean is None or running_var is None \
            or RECOMPUTING.depth:
        return
    with torch.no_grad():
        tracked.add_(1)
        # the cumulative average as a tensor: no host sync, nothing that stops a compiled graph
        momentum = bn.momentum if bn.momentum is not None else (1.0 / tracked).to(running_mean.dtype)
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        running_var.lerp_(unbiased_var.to(running_var.dtype), momentum)


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


class CheckedStateDict(nn.Module):
    """``load_state_dict`` that accepts the official implementations' layouts: a tensor whose
    shape equals ours once size-1 dims are dropped (ACON's (1, C, 1, 1) for our (C,), a 1x1
    conv's (out, in, 1, 1) for a Linear's (out, in)) is reshaped to ours. Non-finite values are
    refused with an error naming the entry. (torch's public ``register_load_state_dict_pre_hook``;
    a subclass that must act first, as a lazy module making its parameters, overrides
    ``_before_load``.)"""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_load_state_dict_pre_hook(_check_state_dict)

    def _before_load(self, state_dict: dict, prefix: str) -> None:
        """What this module does with ``state_dict`` (its entries under ``prefix``) before they are
        checked and loaded."""


def _check_state_dict(module: CheckedStateDict, state_dict: dict, prefix: str, local_metadata, strict,
                      missing_keys, unexpected_keys, error_msgs: list[str]) -> None:
    """All or nothing: every entry of the module (its layers' too) is checked before torch copies
    any, and a load that would fail raises here, leaving the module as it was. A state dict with
    none of the module's entries leaves it out (a partial load, ``strict=False``: PEFT loading an
    adapter beside it); torch's hooks are always told ``strict``, so the caller's own strictness
    then decides, with nothing of the module copied."""
    module._before_load(state_dict, prefix)
    own = {prefix + name: t for name, t in module.state_dict(keep_vars=True).items()
           if isinstance(t, torch.Tensor)}
    errors = []
    for key, tensor in own.items():
        value = state_dict.get(key)
        if not isinstance(value, torch.Tensor):
            continue
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            errors.append(f"{type(module).__name__}: entry '{key}' has non-finite values")
        elif value.shape != tensor.shape and _squeezed(value.shape) == _squeezed(tensor.shape):
            state_dict[key] = value.reshape(tensor.shape)
        elif value.shape != tensor.shape:
            errors.append(f"size mismatch for {key}: the state_dict has {tuple(value.shape)}, the module "
                          f"{tuple(tensor.shape)}")
    given = {k for k in state_dict if k.startswith(prefix)}
    if strict and given:  # (none given: a load that leaves the module out, which its caller's strict decides)
        if missing := sorted(set(own) - given):
            errors.append(f"missing keys {missing}")
        if unexpected := sorted(given - set(own)):
            errors.append(f"unexpected keys {unexpected}")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__} (nothing was "
                           f"loaded): " + "; ".join(errors))


class ActivationModule(CheckedStateDict):
    """Base of adaptact's modules.

    Adaptive modules take ``backend=`` ("auto", "reference", "autograd", "compiled", "triton"; see
    ``adaptact.ops.dispatch``): the same numbers from different implementations.

    ``load_state_dict`` accepts the official layouts and refuses non-finite values
    (``CheckedStateDict``).
    """

    registry_entries: ClassVar[tuple[Entry, ...]] = ()
    """The registry names this class declares (``adaptact.registry`` reads them from the classes
    ``adaptact.nn`` exports; a subclass declares its own)."""
    per_channel_parameters: tuple[str, ...] = ()
    """The parameters of one value per channel, (C,): tensor parallelism shards them with the
    channels (``adaptact.parallel``)."""
    generated_per_channel: int | None = None
    """A generator's (``fc1``, ``fc2``) outputs per channel: 1 for Meta-ACON-C's beta or APReLU's
    alpha, 2K for DY-ReLU-B's pieces, 0 where it writes none per channel (DY-ReLU-A); None without a
    generator. Tensor parallelism shards a first layer that reads the channels, and the last layer
    (``fc2``) and its BatchNorm (``bn2``) where they write per-channel values."""

    def fit_parameters(self) -> list[torch.Tensor]:
        """What ``init="match"`` fits (``adaptact.matching``), after making the module constant in
        its input where it is input-conditioned (its generator's last layer silenced)."""
        raise ValueError(f"init='match' does not know how to fit {type(self).__name__}; {FITS}")

    def fit_starts(self, negative_slope: float) -> Starts:
        """``init="match"``'s starting values for ``fit_parameters``, given the negative-side slope
        of the activation it replaces: one list per start, one list of values per tensor (one value
        fills it)."""
        return [[[negative_slope] for _ in self.fit_parameters()]]

    def inspected(self, x: torch.Tensor, y: torch.Tensor) -> tuple[str, object] | None:
        """What ``adaptact.analysis.inspect.collect`` keeps of a call with input ``x`` and output
        ``y``: (the ``Collected`` field, its value for this batch), or None (nothing to inspect)."""
        return None

    _backend: str = "auto"
    _triton_failed: bool = False  # under "auto", a Triton kernel failed: autograd from then on
    ran_backend: str | None = None
    """The backend this module's last eager call ran ("compiled", "autograd", "triton", "reference";
    None before the first call or when it only ran inside ``torch.compile``): what "auto" chose, and
    after a fallback what ran instead. The comparison harness records it with each run."""

    @property
    def backend(self) -> str:
        """"auto", "reference", "autograd", "compiled" or "triton" (``adaptact.ops.dispatch``); checked
        when set."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        self._backend = dispatch.check_backend(backend)
        self._triton_failed = False
        self.__dict__.pop("_routes", None)

    def _run(self, op: Callable[..., torch.Tensor], x: torch.Tensor, *args,
             fused: bool = True, triton: bool = True) -> torch.Tensor:
        """``op(x, *args, backend=...)`` with this module's backend; under "auto" the backend ``_route``
        chose for this kind of input. When the Triton path raises under "auto" (a kernel that does
        not compile or launch, here or in the backward), warn once and use "autograd" for this
        module from then on; "triton" itself always raises. ``fused=False``: ``op`` runs no Triton
        kernel or compiled entry for this ``x`` (per-position coefficients of channels-first x), so
        "auto" runs (and reports) "autograd" where it would pick one of those. Under a torch.func
        transform "auto" runs (and reports) "reference", and the other backends are refused with
        one line: our Functions compute first-order gradients and have no batching rules.
        ``triton=False``: ``op`` has no Triton kernel; "auto" runs (and reports) "autograd" where it
        would pick "triton", and "triton" is refused."""
        backend = self._backend
        if backend == "triton" and not triton:
            raise ValueError(f"{type(self).__name__} has no Triton kernel yet: use backend='autograd' (its "
                             "memory-lean Function, on any device), 'compiled' or 'auto'")
        if torch.compiler.is_compiling():
            return op(x, *args, backend="autograd" if backend == "auto" and self._triton_failed else backend)
        if backend != "reference" and self._plain_torch_only(x, args, backend):
            backend = "reference"
        elif backend == "auto":
            backend = self._route(x, fused, triton)
            if backend == "triton":
                return self._run_triton(op, x, args)
            try:
                y = op(x, *args, backend=backend)
            except RuntimeError:
                if not dispatch.transform_active():  # a transform reaching our Functions through weights
                    raise
                backend, y = "reference", op(x, *args, backend="reference")
            if backend == "autograd" and "_compile_after" in self.__dict__:
                _compile_after_backward(y, *self.__dict__.pop("_compile_after"))
            # compiling may have been given up during this very call (ops.compiled warns once)
            self.__dict__["ran_backend"] = dispatch.fused_backend(x) if backend == "compiled" else backend
            return y
        self.__dict__["ran_backend"] = backend
        return op(x, *args, backend=backend)

    def _plain_torch_only(self, x: torch.Tensor, args: tuple, backend: str) -> bool:
        """Whether only plain torch ops can take ``x`` and ``args``: a torch.func transform's tensors,
        or DTensors (``ChannelwiseParallel``'s input), which DTensor shards itself. "auto" then runs
        the reference; another named backend is refused with one line."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if dispatch.under_torch_func(x, *tensors):
            if backend != "auto":
                raise dispatch.refusal(backend)
            return True
        if distributed.sharded(x, *tensors):
            if backend != "auto":
                raise distributed.refusal(type(self).__name__, backend)
            return True
        return False

    def _route(self, x: torch.Tensor, fused: bool, triton: bool) -> str:
        """What "auto" runs for ``x``, decided once per kind of input (dtype, device, rank, grad mode,
        and without gradients small or not; ``fused``, ``triton``) and kept on the module: the
        reference for small inference calls (``dispatch.eager_pays``), else the fused backend for
        the device (``fused_backend``), "autograd" where ``op`` has no fused form for ``x``. A
        kind's first call that would compile runs the eager lean Function instead (the same numbers
        and saved tensors): one call never waits for a compile that only later calls repay, and a
        training loop compiles at its second step. With gradients, the compiled entry takes over
        once backward has reached that first call's output (``_run``), or at the kind's
        ``COMPILE_AFTER_CALLS``-th call without a backward (a loop that forgot ``torch.no_grad``):
        it saves other tensors than the lean Function, and gradient checkpointing recomputes the
        first call in backward, which must save what the call saved."""
        grad = torch.is_grad_enabled()  # (the size matters only to calls without gradients)
        small = not grad and x.numel() <= dispatch.EAGER_NUMEL
        key = (x.dtype, x.device, x.dim(), grad, small, fused, triton)
        routes: dict = self.__dict__.setdefault("_routes", {})
        chosen = routes.get(key)
        if chosen is not None:
            if chosen == _COMPILE_NEXT:
                calls = self.__dict__.setdefault("_calls_before_backward", {})
                calls[key] = calls.get(key, 1) + 1
                if calls[key] < COMPILE_AFTER_CALLS:
                    self.__dict__["_compile_after"] = (routes, key)
                    return "autograd"
                routes[key] = chosen = "compiled"
            return chosen
        if dispatch.eager_pays(x):
            chosen = "reference"
        else:
            chosen = "autograd" if self._triton_failed else dispatch.fused_backend(x)
            if (not fused and chosen in ("triton", "compiled")) or (not triton and chosen == "triton"):
                chosen = "autograd"
        if chosen == "compiled":
            routes[key] = _COMPILE_NEXT if grad else "compiled"
            if grad:
                self.__dict__["_compile_after"] = (routes, key)
            return "autograd"
        routes[key] = chosen
        return chosen

    def _small(self, x: torch.Tensor, names: tuple[str, ...], channels: int | None = None,
               dim: int = 1) -> list[torch.Tensor] | None:
        """The parameters ``names`` where this call takes the class's small-call form (``ops.small``),
        else None. It does for backend "auto", eagerly, with nothing recorded for backward, on a
        plain float32 CPU tensor of rank >= 1 and at most ``EAGER_NUMEL`` elements
        (``dispatch.eager_pays``), with ``channels`` on ``dim`` where given (anything else goes the
        usual way, which explains what is wrong), float32 parameters of the module's own, no
        torch.func transform. Then the reference is reported as run. Per-channel (C,) parameters
        come viewed so that they broadcast on ``dim`` of ``x``. (Written for speed: it is on every
        call's path.)"""
        if not (type(x) is torch.Tensor and x.dtype is _FLOAT32 and self._backend == "auto"
                and not torch.is_grad_enabled() and x.numel() <= dispatch.EAGER_NUMEL and x.is_cpu
                and not _is_compiling() and debug_unwrap(x, recurse=False) is x):
            return None
        ndim = x.ndim
        if channels is None:
            if not ndim:
                return None
        else:
            try:  # channels on ``dim``, which is not the batch dim
                if x.shape[dim] != channels or not dim % ndim:
                    return None
            except IndexError:
                return None
        own = self._parameters
        params: list = [own[name] for name in names]
        for p in params:  # the module's own parameters (a transform's wrappers are plain tensors)
            if type(p) is not nn.Parameter or p.dtype is not _FLOAT32:
                return None
        self.__dict__["ran_backend"] = "reference"
        if channels is not None and dim != -1 and dim != ndim - 1:  # (C,) against channels on ``dim``
            shape = (-1,) + (1,) * (ndim - 1 - dim % ndim)
            params = [p.view(shape) for p in params]
        return params

    def _run_triton(self, op: Callable[..., torch.Tensor], x: torch.Tensor, args: tuple) -> torch.Tensor:
        try:
            y = op(x, *args, backend="triton")
        except Exception as err:  # any failure of the Triton path: compile, launch, driver
            if dispatch.transform_active():  # refused under torch.func: not the kernels' failure
                raise
            self._fall_back(err)
            return op(x, *args, backend="autograd")
        self.__dict__["ran_backend"] = "triton"
        return fallback.mark(y, self._fall_back)

    def _weights(self) -> tuple[torch.Tensor, ...]:
        """The tensors a generated activation's generator uses that may need gradients (the Triton
        path asks for them; Meta-ACON-C leaves out its p1 and p2)."""
        return tuple(self.parameters())

    def _fall_back(self, err: BaseException) -> None:
        self.__dict__["ran_backend"] = "autograd"
        self.__dict__.pop("_routes", None)  # decided again, without Triton
        if not self._triton_failed:
            warnings.warn(f"{type(self).__name__}: the Triton kernels failed under backend='auto' "
                          f"({type(err).__name__}: {err}); this module uses backend='autograd' from now on",
                          RuntimeWarning, stacklevel=3)
        self._triton_failed = True

    def _backend_repr(self) -> str:
        return "" if self.backend == "auto" else f", backend={self.backend!r}"


class PointwiseActivation(ActivationModule):
    """An activation without parameters: the class's ``function`` applied to each element
    (``inplace`` is accepted for drop-in use; the output is always a new tensor)."""

    function: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, None)
        return type(self).function(x)
