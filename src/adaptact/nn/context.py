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
normalised with the statistics over the samples at that position (``batch_norm_positions``); the running
statistics are updated with their mean over positions and used in eval mode, as usual.

Inside a model, what each call says (padding, packed sequences, the cache) reaches the modules from
``tracking`` as a ``model_call.ModelCall``; the running statistics a cache carries from call to call
are ``running``'s (and ``static_cache``'s for a static cache). This module holds what a module
computes from them: its per-position statistics, its causal window and its per-position
BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ..ops import distributed
from . import static_cache
from .base import normalise, statistics_dtype, track_running_stats
from .families import BatchNorm
from .model_call import ModelCall, call_of, refuse_paged, tracing

__all__ = ["CONTEXTS", "SHIFTED_POSITIONS", "Context", "batch_norm_positions", "batch_norm_real",
           "causal_window", "check_context", "check_sequence", "decoding", "masked_mean", "packed_starts",
           "padding", "position_mask", "position_norm", "position_statistics", "refuse_cached",
           "shifted_conv1d"]

Context = Literal["sample", "causal", "token"]
CONTEXTS: tuple[str, ...] = ("sample", "causal", "token")


def check_context(context: object) -> str:
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(map(repr, CONTEXTS))}, got {context!r}")
    return str(context)


def check_sequence(module: nn.Module, x: Tensor, context: str) -> None:
    """A one-line error unless ``x`` (channels first) has exactly one sequence dim."""
    if x.ndim != 3:
        rows = " (rows of tokens, (B*T, C): context='token' takes them)" if x.ndim == 2 else ""
        raise ValueError(f"{type(module).__name__}(context={context!r}) takes inputs with one sequence dim, "
                         f"(B, T, C) with channel_dim=-1 or (B, C, T); got {x.ndim} dims "
                         f"(channels-first shape {tuple(x.shape)}){rows}")


def decoding(module: nn.Module) -> bool:
    """Whether ``module`` is being called inside a hooked model's call that carries state, padding
    or packing (a cache, an attention mask with pads, sequences packed in a row): its generator
    reads them, so it runs eagerly."""
    entry = call_of(module)
    return entry is not None and (entry[0].cached or entry[0].mask is not None or entry[0].starts is not None)


def position_mask(module: nn.Module, batch: int, positions: int) -> Tensor | None:
    """(N, T) bool, True at the real positions among the ``positions`` this call computes; None
    without padding (or when the activation's input does not line up with the mask)."""
    entry = call_of(module)
    if entry is None:
        return None
    mask = entry[0].mask
    if mask is None or mask.shape[0] != batch or mask.shape[1] < positions:
        return None
    if not entry[0].cached and mask.shape[1] != positions:  # a sequence of another length than the
        return None  # call's tokens (a VLM's projector on image features): not the mask's
    return mask[:, mask.shape[1] - positions:]


def packed_starts(module: nn.Module, batch: int, positions: int) -> Tensor | None:
    """(N or 1, T) long, where the current model call packs several sequences in each row of the
    ``positions`` this call computes: the position each position's sequence starts at; None where
    each row holds one sequence (or the activation's input does not line up with the call's)."""
    entry = call_of(module)
    starts = None if entry is None else entry[0].starts
    if starts is None or starts.shape[1] != positions or starts.shape[0] not in (1, batch):
        return None
    return starts


def _sequence_sums(s: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """The sums (N, T, S) of ``s`` over positions ``starts``..t and their counts (N, T): each packed
    sequence's running sums. One running sum along the row less its value before each sequence, in
    float64 where ``s`` is of a smaller float, so a late sequence keeps float32's precision."""
    n, t, width = s.shape
    wide = s.double() if s.dtype in (torch.float32, torch.float16, torch.bfloat16) else s
    total = wide.cumsum(1)
    at = starts.expand(n, t)
    index = distributed.replicated_like(at.unsqueeze(-1).expand(n, t, width).contiguous(), s)
    before = nn.functional.pad(total, (0, 0, 1, 0)).gather(1, index)
    counts = distributed.replicated_like((torch.arange(1, t + 1, device=s.device) - at).to(s.dtype), s)
    return (total - before).to(s.dtype), counts


def causal_window(module: nn.Module, x: Tensor, size: int) -> Tensor:
    """Channels-first (N, C, T) ``x`` with the ``size`` positions before it in front, for a window
    that ends at each position: zeros at the start of a sequence; in a cached decode, ``module``'s
    inputs at those positions, which each call keeps on the cache (``running.Prefix``) as the running sums
    are kept, so crops, reorders and copies of the cache continue from the right inputs."""
    entry = call_of(module)
    prefix = None if entry is None else entry[0].prefix
    if entry is None or prefix is None:
        return nn.functional.pad(x, (size, 0))
    call, name = entry
    if call.paged is not None:
        refuse_paged(name)
    if call.position is not None:
        assert prefix.static is not None
        return static_cache.kept_window(prefix.static, name, x, size, _static_at(call), call.capacity)
    offset, n = call.offset or 0, x.shape[0]
    before = x.new_zeros(n, x.shape[1], 0)
    if offset:
        prefix.carried(module, name, offset, n)  # raises unless the cache holds the positions before
        before = prefix.sums[name].positions(max(offset - size, 0), offset).transpose(1, 2).to(x.dtype)
    zeros = x.new_zeros(n, x.shape[1], size - before.shape[-1])
    prefix.keep(name, offset, x.transpose(1, 2), x.new_ones(n, x.shape[-1]))
    return torch.cat([zeros, before, x], dim=-1)


SHIFTED_POSITIONS = 16  # causal windows of at most this many outputs: k shifted multiply-adds, not conv1d


def shifted_conv1d(window: Tensor, weight: Tensor, bias: Tensor | None,
                   starts: Tensor | None = None) -> Tensor:
    """``conv1d(window, weight, bias, groups=C)`` for a depthwise ``weight`` (C, 1, k) as k shifted
    multiply-adds, (N, C, T) from ``window`` (N, C, k - 1 + T) as ``causal_window`` makes it. For
    the few positions of a decoded token torch's depthwise conv1d costs several times more (at
    C = 688, k = 3, one thread: 53 us against 17 us for one position, 56 against 26 for 16; 202
    against 273 for 512). With ``starts`` (N or 1, T), where sequences are packed in a row, a tap
    reaching before its position's sequence reads zero: each sequence convolved as alone."""
    k = weight.shape[-1]
    t = window.shape[-1] - k + 1
    taps = weight[:, 0].unsqueeze(-1)  # (C, k, 1)
    at = torch.arange(t, device=window.device)
    h: Tensor | None = None if bias is None else bias.unsqueeze(-1)
    for j in range(k):
        x = window[..., j:j + t]  # the position k - 1 - j before each one
        if starts is not None and j < k - 1:
            kept = (at - (k - 1 - j) >= starts).to(x.dtype).unsqueeze(1)  # (N or 1, 1, T)
            x = x * distributed.replicated_like(kept, x)
        h = x * taps[:, j] if h is None else torch.addcmul(h, x, taps[:, j])
    assert h is not None
    return h


def refuse_cached(module: nn.Module) -> None:
    """Raise when ``module`` (context "sample") is called inside a cached decode: pooling every
    position of the sample cannot be continued from the new positions alone."""
    entry = call_of(module)
    if entry is not None and entry[0].continues:
        raise RuntimeError(f"{type(module).__name__}(context='sample') pools every position of a sample; a "
                           f"cached decode shows it the new positions only: use context='causal', or decode "
                           f"with use_cache=False")


def padding(module: nn.Module, x: Tensor) -> Tensor | None:
    """(N, T) bool, True at the real positions of channels-first (N, C, T) ``x`` in the current
    model call; None without padding (the module pools every position, as the papers do)."""
    return position_mask(module, x.shape[0], x.shape[-1]) if x.ndim == 3 else None


def masked_mean(x: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The mean of channels-first (N, C, T) ``x`` over the positions ``mask`` (N, T) keeps, (N, C)
    in ``dtype``."""
    weights = mask.to(dtype).unsqueeze(1)
    return (x.to(dtype) * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def position_statistics(module: nn.Module, s: Tensor, context: str) -> Tensor:
    """What the generator sees at each position, from per-position statistics ``s`` (N, T, S):
    ``s`` itself for "token"; for "causal" the mean over the real positions <= t of t's sequence
    (the row's, or the packed one's), continuing the prefix its cache carries when ``module`` is
    decoded with one. The running sums are taken, and kept, in float32 at least
    (``statistics_dtype``): carried in bfloat16, a sum of one-signed statistics stops growing
    after a few hundred positions (a decoded token's mean at position 1000 was 250% off the full
    forward's). The mean is returned in ``s``'s dtype."""
    if context == "token":
        return s
    means = _causal_means(module, statistics_dtype(s))
    return means if means.dtype == s.dtype else means.to(s.dtype)


def _causal_means(module: nn.Module, s: Tensor) -> Tensor:
    """``position_statistics`` ("causal") of ``s`` in an accumulating dtype."""
    entry = call_of(module)
    n, t = s.shape[0], s.shape[1]
    if entry is not None and entry[0].position is not None:
        return _static_statistics(module, entry[0], entry[1], s)
    if t == 1 and entry is not None and entry[0].offset and entry[0].mask is None and type(s) is Tensor:
        return _one_more(module, entry[1], entry[0], s)  # a decoded token: the fewest ops
    if t == 1 and (entry is None or (entry[0].offset is None and entry[0].mask is None)):
        return s  # one position, nothing before it: its own mean
    if entry is None:
        counts = torch.arange(1, t + 1, device=s.device, dtype=s.dtype)
        counts = distributed.replicated_like(counts, s)  # tensor parallel: s is a DTensor
        return s.cumsum(1) / counts.unsqueeze(-1)
    call, name = entry
    if call.paged is not None:
        return _paged_statistics(call, name, s)
    sums, counts = _call_sums(module, s)
    if call.offset:
        assert call.prefix is not None
        carried_sums, carried_counts = call.prefix.carried(module, name, call.offset, n)
        sums = sums + carried_sums.to(s.dtype)
        counts = counts + carried_counts.to(s.dtype).reshape(n, 1)
    if call.prefix is not None:
        call.prefix.keep(name, call.offset or 0, sums, counts)
    return sums / counts.clamp(min=1).unsqueeze(-1)


def _call_sums(module: nn.Module, s: Tensor) -> tuple[Tensor, Tensor]:
    """The running sums (N, T, S) and counts (N, T) of the call's own positions: over its real ones
    (``position_mask``), restarting at each sequence packed in a row (``packed_starts``; only at a
    cache's start: ``tracking._packed`` refuses a later call)."""
    n, t = s.shape[0], s.shape[1]
    mask = position_mask(module, n, t)
    starts = packed_starts(module, n, t)
    if starts is not None:
        return _sequence_sums(s, starts)
    if mask is None:
        counts = torch.arange(1, t + 1, device=s.device, dtype=s.dtype).expand(n, t)
        return s.cumsum(1), distributed.replicated_like(counts, s)  # tensor parallel: s is a DTensor
    weights = distributed.replicated_like(mask.to(s.dtype), s)
    return (s * weights.unsqueeze(-1)).cumsum(1), weights.cumsum(1)


def _static_statistics(module: nn.Module, call: ModelCall, name: str, s: Tensor) -> Tensor:
    """``position_statistics`` ("causal") of a call on a static cache: the call's running sums
    (``_call_sums``) continue from the tensors kept at the position before them
    (``static_cache.running_sums``)."""
    assert call.prefix is not None and call.prefix.static is not None and call.position is not None
    sums, counts = _call_sums(module, s)
    sums, counts = static_cache.running_sums(call.prefix.static, name, sums, counts, _static_at(call),
                                             call.capacity)
    return sums / counts.clamp(min=1).unsqueeze(-1)


def _static_at(call: ModelCall) -> Tensor | int:
    """Where a call on a static cache starts: the number read eagerly, the tensor while traced (the
    number not even read there: a guard on it would compile a graph per position)."""
    assert call.position is not None
    return call.position if tracing() or call.offset is None else call.offset


def _paged_statistics(call: ModelCall, name: str, s: Tensor) -> Tensor:
    """``position_statistics`` ("causal") of a continuous batching call (``model_call.Paged``): each request's
    running sums continue from those kept at the slot of the position before its new ones, and
    the sums at its last new position are kept at that position's slot (``running.Prefix.slots``); a slot
    the call writes again drops what was kept there (its request is gone), so what is kept stays
    one row per live request at most, whatever the cache's size."""
    paged, prefix = call.paged, call.prefix
    assert paged is not None and prefix is not None
    sums, _ = _sequence_sums(s, paged.starts)
    kept = prefix.slots.setdefault(name, {})
    zeros = s.new_zeros(s.shape[-1])
    carried = []
    for slot in paged.before:
        row = zeros if slot < 0 else kept.get(slot)
        if row is None:
            raise ValueError(f"{name} cannot continue a request of continuous batching from a position whose "
                             f"running means were not kept (a prefix shared with another request): use "
                             f"ContinuousBatchingConfig(allow_block_sharing=False)")
        carried.append(row.to(s.dtype))
    sums = sums + torch.stack(carried).index_select(0, paged.request).unsqueeze(0)
    for slot in paged.slots:
        kept.pop(slot, None)
    for last in paged.last:
        kept[paged.slots[last]] = sums[0, last].detach().clone()  # (not a view holding the whole call's)
    return sums / (paged.positions + 1).to(s.dtype).unsqueeze(-1)


def _one_more(module: nn.Module, name: str, call: ModelCall, s: Tensor) -> Tensor:
    """``position_statistics`` of one new position (N, 1, S) after ``call.offset`` cached ones, no
    padding: the carried running sum and count, plus this position (three operations)."""
    assert call.prefix is not None and call.offset
    offset = call.offset
    last_sums, last_counts = call.prefix.carried(module, name, offset, s.shape[0])
    if last_sums.dtype != s.dtype or last_counts.dtype != s.dtype:
        last_sums, last_counts = last_sums.to(s.dtype), last_counts.to(s.dtype)
    sums, counts = s + last_sums, last_counts + 1
    state = call.prefix.sums[name]
    state.cut(offset)  # what a cropped cache kept after it goes
    state.append(sums.detach() if sums.requires_grad else sums, counts)
    return sums / counts


def batch_norm_positions(bn: BatchNorm, h: Tensor, mask: Tensor | None = None) -> Tensor:
    """``bn`` applied to (N, T, F) generator features, each position normalised on its own (see
    the module docstring) over the samples real at that position (``mask`` (N, T); None: all);
    one sample or eval mode: the running statistics."""
    if isinstance(bn, nn.SyncBatchNorm):
        raise ValueError("SyncBatchNorm in a causal or token generator is not supported: convert the "
                         "model with context='sample' or without SyncBatchNorm")
    n, t, f = h.shape
    if not bn.training or n == 1:
        if bn.running_mean is None:
            raise ValueError("a BatchNorm without running statistics cannot normalise one sample")
        # torch's op itself (nn.functional's wrapper checks a batch size that eval mode never needs)
        y = torch.batch_norm(h.reshape(n * t, f), bn.weight, bn.bias, bn.running_mean, bn.running_var, False,
                             0.0, bn.eps, False)
        return y.reshape(n, t, f)
    x = statistics_dtype(h)
    if mask is None:
        mean = x.mean(0)
        var = x.var(0, unbiased=False)
        track_running_stats(bn, mean.mean(0), var.mean(0) * n / (n - 1))  # their mean over positions
        return normalise(bn, x, mean, var).to(h.dtype)
    weights = mask.to(x.dtype).unsqueeze(-1)  # (N, T, 1)
    count = weights.sum(0)  # (T, 1): the samples real at each position
    mean = (x * weights).sum(0) / count.clamp(min=1)
    var = ((x - mean) ** 2 * weights).sum(0) / count.clamp(min=1)
    tracked = (count > 1).to(x.dtype)  # positions with batch statistics: their mean updates the running ones
    kept = tracked.sum().clamp(min=1)
    track_running_stats(bn, (mean * tracked).sum(0) / kept,
                        (var * count / (count - 1).clamp(min=1) * tracked).sum(0) / kept)
    return normalise(bn, x, mean, var).to(h.dtype)


def batch_norm_real(bn: BatchNorm, h: Tensor, mask: Tensor) -> Tensor:
    """``bn`` applied to (N, C, T) features whose batch statistics (training mode) are taken over
    the real positions ``mask`` (N, T) alone; eval mode: the running statistics, as ``bn`` does."""
    if not bn.training:
        return bn(h)
    x = statistics_dtype(h).transpose(1, 2)  # (N, T, C)
    weights = mask.to(x.dtype).unsqueeze(-1)
    count = weights.sum().clamp(min=2)
    mean = (x * weights).sum((0, 1)) / count
    var = ((x - mean) ** 2 * weights).sum((0, 1)) / count
    track_running_stats(bn, mean, var * count / (count - 1))
    return normalise(bn, x, mean, var).transpose(1, 2).to(h.dtype)


def position_norm(module: nn.Module) -> Callable[[BatchNorm, Tensor], Tensor]:
    """``batch_norm_positions`` with the padding of ``module``'s current call."""
    def norm(bn: BatchNorm, h: Tensor) -> Tensor:  # (eval mode normalises with the running statistics)
        mask = position_mask(module, h.shape[0], h.shape[1]) if bn.training else None
        return batch_norm_positions(bn, h, mask)

    return norm
