"""What an input-conditioned activation's generator sees along a sequence: ``context=``.

Meta-ACON-C, APReLU and Dynamic ReLU pool statistics of the input to generate their
coefficients; FReLU convolves a window. The papers pool over every position of a sample
(``"sample"``), which in a causal decoder lets position t see the tokens after t. For inputs
with one sequence dim ((B, T, C) with ``channel_dim=-1``, or (B, C, T)):

* ``"sample"``: every non-channel position of a sample (the papers'; any rank);
* ``"causal"``: the generator at position t sees the mean over positions <= t (prefix
  statistics), so no output at t depends on a later position;
* ``"token"``: the generator at position t sees position t alone.

BatchNorm in a generator under "causal" and "token": batch statistics over samples *and*
positions would mix later positions into earlier ones in training mode, so each position is
normalised with the statistics over the samples at that position (``batch_norm``); the running
statistics are updated with their mean over positions and used in eval mode, as usual.

Cached decoding (a KV cache: each call sees the new positions only). ``track_decoding(model)``
(``replace_activations`` installs it on causal Hugging Face models) reads the cache length at
every call of ``model``; causal generators then carry their running prefix sums from one call to
the next, so cached and uncached decoding give the same numbers. A call that cannot continue
(no state for that offset, another batch) raises instead of computing other numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..ops import distributed
from .base import normalise, track_running_stats
from .families import BatchNorm

__all__ = ["CONTEXTS", "Context", "batch_norm_positions", "check_context", "check_sequence", "decoding",
           "position_statistics", "refuse_cached", "track_decoding"]

Context = Literal["sample", "causal", "token"]
CONTEXTS: tuple[str, ...] = ("sample", "causal", "token")
OFFSET = "adaptact_decode_offset"  # attribute the decoding hooks set on each causal module
_PREFIX = "adaptact_prefix"  # (running sums (N, S), positions) carried between cached calls


def check_context(context: object) -> str:
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(map(repr, CONTEXTS))}, got {context!r}")
    return str(context)


def check_sequence(module: nn.Module, x: Tensor, context: str) -> None:
    """A one-line error unless ``x`` (channels first) has exactly one sequence dim."""
    if x.ndim != 3:
        raise ValueError(f"{type(module).__name__}(context={context!r}) takes inputs with one sequence dim, "
                         f"(B, T, C) with channel_dim=-1 or (B, C, T); got {x.ndim} dims "
                         f"(channels-first shape {tuple(x.shape)})")


def position_statistics(module: nn.Module, s: Tensor, context: str) -> Tensor:
    """What the generator sees at each position, from per-position statistics ``s`` (N, T, S):
    ``s`` itself for "token"; for "causal" the mean over positions <= t, continuing the prefix
    carried from the previous call when ``module`` is being decoded with a cache."""
    if context == "token":
        return s
    offset = getattr(module, OFFSET, None)
    sums = s.cumsum(1)
    if offset is not None and offset > 0:
        sums = sums + _carried(module, s, offset).unsqueeze(1)
    start = 0 if offset is None else offset
    counts = torch.arange(start + 1, start + s.shape[1] + 1, device=s.device, dtype=s.dtype)
    counts = distributed.replicated_like(counts, s)  # tensor parallel: s is a DTensor
    if offset is not None:
        module.__dict__[_PREFIX] = (sums[:, -1].detach(), start + s.shape[1], s.shape[0])
    return sums / counts.unsqueeze(-1)


def decoding(module: nn.Module) -> bool:
    """Whether ``module`` is being called inside a cached decode (``track_decoding``), where a causal
    generator carries its prefix from one call to the next."""
    return getattr(module, OFFSET, None) is not None


def refuse_cached(module: nn.Module) -> None:
    """Raise when ``module`` (context "sample") is called inside a cached decode: pooling every
    position of the sample cannot be continued from the new positions alone."""
    if getattr(module, OFFSET, None):
        raise RuntimeError(f"{type(module).__name__}(context='sample') pools every position of a sample; a "
                           f"cached decode shows it the new positions only: use context='causal', or decode "
                           f"with use_cache=False")


def _carried(module: nn.Module, s: Tensor, offset: int) -> Tensor:
    state = module.__dict__.get(_PREFIX)
    if state is None or state[1] != offset or state[2] != s.shape[0]:
        have = ("no prefix" if state is None
                else f"a prefix of {state[1]} positions for batch {state[2]}")
        raise RuntimeError(f"{type(module).__name__}(context='causal') cannot continue a cached decode at "
                           f"position {offset} for batch {s.shape[0]}: it holds {have} (the cache was "
                           f"reordered or built elsewhere); decode with use_cache=False")
    return state[0].to(s.dtype)


def batch_norm_positions(bn: BatchNorm, h: Tensor) -> Tensor:
    """``bn`` applied to (N, T, F) generator features, each position normalised on its own (see
    the module docstring); one sample or eval mode: the running statistics."""
    if isinstance(bn, nn.SyncBatchNorm):
        raise ValueError("SyncBatchNorm in a causal or token generator is not supported: convert the "
                         "model with context='sample' or without SyncBatchNorm")
    n, t, f = h.shape
    if not bn.training or n == 1:
        if bn.running_mean is None:
            raise ValueError("a BatchNorm without running statistics cannot normalise one sample")
        y = nn.functional.batch_norm(h.reshape(n * t, f), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                     False, 0.0, bn.eps)
        return y.reshape(n, t, f)
    x = h.float()
    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    track_running_stats(bn, mean.mean(0), var.mean(0) * n / (n - 1))  # their mean over positions
    return normalise(bn, x, mean, var).to(h.dtype)


def _decode_offset(kwargs: dict[str, Any]) -> int | None:
    """Positions already in the cache a Hugging Face model is called with; None when the call
    neither gives nor asks for one (a training forward: nothing to carry to a next call)."""
    position = kwargs.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        return 0 if kwargs.get("use_cache") else None
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # the legacy tuple of (key, value) per layer
    return 0


def track_decoding(model: nn.Module, modules: list[nn.Module] | None = None) -> Callable[[], None]:
    """Make the input-conditioned activations in ``model`` (or ``modules``) follow cached
    decoding: at every call of ``model`` they learn how many positions its cache already holds
    (keyword ``cache``, ``past_key_values`` or ``cache_position``, as Hugging Face models take
    them). "causal" ones continue their prefix statistics from there, "token" ones need nothing,
    "sample" ones (and causal FReLU, whose window would need the previous inputs) raise instead
    of computing other numbers than the full sequence's. Returns a function that removes the hooks."""
    if modules is None:
        modules = [m for m in model.modules() if getattr(m, "context", None) in CONTEXTS]

    def before(_: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        offset = _decode_offset(kwargs)
        for m in modules:
            if offset is None:
                m.__dict__.pop(OFFSET, None)
            else:
                m.__dict__[OFFSET] = offset

    def after(*_: Any) -> None:
        for m in modules:
            m.__dict__.pop(OFFSET, None)

    handles = [model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, always_call=True)]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove
