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

Inside a model (``track_decoding``; ``replace_activations`` installs it on decoders and on Hugging
Face models, and a model rebuilt from its config gets it too), every call of the model tells its
conditioned activations (those of the innermost Hugging Face model holding them: a T5 decoder's
call tells the decoder's) two things, read from the call's keywords as Hugging Face models take
them:

* which positions are padding (``attention_mask``, (B, L), 0 at pads; or the 4-D mask made from
  it, such as generate passes with a static cache: ``_from_4d``): the "sample" and "causal"
  statistics and the per-position BatchNorm statistics leave them out, so a sequence's numbers do
  not depend on how its batch is padded;
* which sequence each position belongs to, where the call packs several sequences in a row
  (``position_ids`` restarting within it, no ``attention_mask``: padding-free training, as
  transformers' ``DataCollatorWithFlattening`` makes it): "causal" statistics, and causal FReLU's
  window, restart at each sequence's first position, so a packed sequence's numbers are its numbers
  alone ("sample" pools a whole sample and refuses such a call);
* how many positions the KV cache already holds (``cache_position``, ``cache`` or its older name
  ``past_key_values``). A causal generator's running sums at every position are kept on the cache
  object they extend (not on the module, not in call order): a reordered cache (beam search), a
  cropped one (assisted decoding), two generations interleaved, a deep-copied or pickled model all
  continue from the right prefix.
  A reorder is recognised by the cache's own keys (each row's per-position key sums) and followed.
  Causal FReLU keeps its inputs there the same way, for the window of the next positions. On a
  static cache (fixed capacity, its length a tensor: what compiled decoding uses) they are kept as
  tensors by position instead, read and written by tensor index (``static_cache``), so a compiled
  decoding step is one graph for every token; its rows' moves are followed through the cache's
  own methods. An exported program cannot carry them from call to call: its export is refused.
  "sample" modules raise in a cached decode instead of computing other numbers than the full
  sequence's.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import inspect
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from ..ops import distributed
from . import static_cache
from .base import RECOMPUTING, normalise, statistics_dtype, track_running_stats
from .families import BatchNorm

__all__ = ["CONTEXTS", "Context", "ModelCall", "Prefix", "Running", "batch_norm_positions", "batch_norm_real",
           "causal_window", "check_context", "check_sequence", "decoding", "is_hf_model",
           "masked_mean", "padding", "position_norm", "position_statistics", "refuse_cached",
           "track_decoding"]

Context = Literal["sample", "causal", "token"]
CONTEXTS: tuple[str, ...] = ("sample", "causal", "token")
CALL = "adaptact_call"  # (ModelCall, the module's name in the model) on each conditioned module during a call
PREFIX = "adaptact_prefix"  # the Prefix a cache object carries
_OWNER = "adaptact_owns_call"  # on the hooked model whose call set CALL on its conditioned modules
_HOOKED = "adaptact_hooked"
_CONDITIONED = "adaptact_conditioned"  # (structure, conditioned modules it tells), kept
_REPLAY_HOOKED = "adaptact_replay_hooked"  # on a conditioned module: the hooks of ``_replay`` are on it
_REPLAYING = "adaptact_replaying"  # on a conditioned module whose CALL ``_replay`` set for a recomputation
_REMEMBERED = "adaptact_remembered"  # on a conditioned module in a model call in training: its _Remembered
_REMEMBERING = "adaptact_remembering"  # on the model during that call: the modules holding _REMEMBERED
_REPLAYS_KEPT = 64  # model calls in training remembered per module for recomputation
_replays: weakref.WeakKeyDictionary[nn.Module, collections.deque] = weakref.WeakKeyDictionary()


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


@dataclass
class Running:
    """One module's running statistics at every position so far, in chunks of consecutive positions
    (one per call that kept them): the sums (B, T_i, S) and counts (B, T_i, 1) of the statistics at
    positions <= t, and the position each chunk ends at. A prompt is one chunk; a decoded token
    appends one of its own (nothing is copied again); a crop drops or cuts the last ones. (Causal
    FReLU keeps its inputs the same way, as the "sums" with counts of one: ``causal_window``.)"""

    sums: list[Tensor]
    counts: list[Tensor]
    ends: list[int]
    batch: int
    width: int

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def at(self, position: int) -> tuple[Tensor, Tensor]:
        """The sums (B, 1, S) and counts (B, 1, 1) at ``position`` (one that is kept)."""
        i = bisect.bisect_right(self.ends, position)
        sums, counts = self.sums[i], self.counts[i]
        if sums.shape[1] == 1:
            return sums, counts
        at = position - (self.ends[i - 1] if i else 0)
        return sums[:, at:at + 1], counts[:, at:at + 1]

    def cut(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        while self.ends and self.ends[-1] > length:
            start = self.ends[-2] if len(self.ends) > 1 else 0
            if start >= length:
                del self.sums[-1], self.counts[-1], self.ends[-1]
            else:
                keep = length - start
                self.sums[-1], self.counts[-1] = self.sums[-1][:, :keep], self.counts[-1][:, :keep]
                self.ends[-1] = length

    def positions(self, start: int, stop: int) -> Tensor:
        """The sums (B, stop - start, S) at positions start..stop - 1 (ones that are kept)."""
        parts, begin = [], 0
        for sums, end in zip(self.sums, self.ends, strict=True):
            low, high = max(start, begin), min(stop, end)
            if low < high:
                parts.append(sums[:, low - begin:high - begin])
            begin = end
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def append(self, sums: Tensor, counts: Tensor) -> None:
        """The next positions' sums (B, T, S) and counts (B, T, 1)."""
        self.sums.append(sums)
        self.counts.append(counts)
        self.ends.append(len(self) + sums.shape[1])


@dataclass
class Prefix:
    """What causal generators carry from one cached call to the next, kept on the cache object:
    per module name, the running sums and counts of the statistics at every position so far
    (``Running``); and the cache's fingerprint (B, T) when they were kept (``_fingerprint``), with
    the keys tensor it was taken from (a weak reference) and that tensor's version then: while the
    cache holds the same tensor unchanged, its fingerprint is the one kept. On a paged cache
    (continuous batching: ``Paged``), per module the running sums (S,) at the slot of each
    request's last position so far instead; on a static cache, per module its tensors indexed by
    position (``static_cache``)."""

    sums: dict[str, Running] = field(default_factory=dict)
    fingerprint: Tensor | None = None
    keys: weakref.ref[Tensor] | None = None
    keys_version: int = -1
    slots: dict[str, dict[int, Tensor]] = field(default_factory=dict)  # a paged cache's (``Paged``)
    static: static_cache.Kept | static_cache.KeptWhileTraced | None = None  # a static cache's, made there

    def __getstate__(self) -> dict[str, Any]:
        """A pickled prefix (a pickled cache's) without the weak reference, which pickle refuses: its
        copy takes the cache's fingerprint again at its next call."""
        return {**self.__dict__, "keys": None, "keys_version": -1}

    def take_fingerprint(self, cache: Any) -> None:
        """Keep ``cache``'s fingerprint as it is now."""
        keys = _keys(cache)
        self.fingerprint = None if keys is None else _fingerprint(keys)
        self.keys = None if keys is None else weakref.ref(keys)
        self.keys_version = -1 if keys is None else keys._version

    def unchanged(self, cache: Any) -> bool:
        """Whether ``cache`` holds the very keys tensor its kept fingerprint was taken from, unchanged
        since (a cache that grows, crops or reorders makes a new tensor or writes in place)."""
        keys = _keys(cache)
        return (keys is not None and self.keys is not None and self.keys() is keys
                and keys._version == self.keys_version)

    def carried(self, module: nn.Module, name: str, offset: int, batch: int) -> tuple[Tensor, Tensor]:
        """The running sums (B, 1, S) and counts (B, 1, 1) at position ``offset - 1``."""
        state = self.sums.get(name)
        if state is None or len(state) < offset or state.batch != batch:
            have = ("no prefix" if state is None
                    else f"a prefix of {len(state)} positions for batch {state.batch}")
            raise RuntimeError(f"{type(module).__name__}(context='causal') cannot continue a cached decode "
                               f"at position {offset} for batch {batch}: its cache holds {have} (a cache "
                               f"built without this model's activations); decode with use_cache=False")
        return state.at(offset - 1)

    def keep(self, name: str, offset: int, sums: Tensor, counts: Tensor) -> None:
        """The running ``sums`` (B, T, S) and ``counts`` (B, T) of positions ``offset`` on: what was
        kept before ``offset`` stays, anything after it (a cropped cache's) goes. Without those
        ``offset`` positions kept nothing holds (``carried`` then refuses to continue)."""
        state = self.sums.get(name)
        b, t, width = sums.shape
        if offset and not (state is not None and len(state) >= offset and state.batch == b
                           and state.width == width):
            self.sums[name] = Running([], [], [], b, width)  # nothing to continue from
            return
        kept = Running([], [], [], b, width) if state is None or not offset else state
        kept.cut(offset)
        kept.append(sums.detach(), counts.detach().unsqueeze(-1))
        self.sums[name] = kept

    def select(self, rows: Tensor) -> None:
        """Rows ``rows`` of every state, in that order (a cache reordered by beam search)."""
        for state in self.sums.values():
            if state.ends:
                at = rows.to(state.sums[0].device)
                state.sums = [torch.cat(state.sums, dim=1).index_select(0, at)]
                state.counts = [torch.cat(state.counts, dim=1).index_select(0, at)]
                state.ends = [len(state)]
            state.batch = rows.shape[0]
        if self.fingerprint is not None:
            self.fingerprint = self.fingerprint.index_select(0, rows.to(self.fingerprint.device))
        if self.static is not None:
            self.static.select_rows(rows)


@dataclass
class Paged:
    """A call of transformers' continuous batching, which packs its requests' new positions in one
    row and keeps their keys in the slots of a paged cache: ``starts`` (1, T), where each position's
    request starts in the row; ``positions`` (1, T), each one's position in its request;
    ``request`` (T,), each one's request; per request, ``before``, the cache slot of the position
    before its first new one (-1 where that is its first position), and ``last``, the index of its
    last new one in the row; ``slots``, the slots the call writes."""

    starts: Tensor
    positions: Tensor
    request: Tensor
    before: list[int]
    last: list[int]
    slots: list[int]


@dataclass
class ModelCall:
    """One call of a hooked model, as its conditioned activations see it: ``offset`` positions
    already in its cache (None: no cache given or asked for), the cache's ``prefix`` (None without
    a cache), ``mask`` (B, L), True at the real positions of the call's sequence (None: no
    padding; L covers the cached positions too, the call's own are the last ones), and ``starts``
    (B or 1, T), where the call packs sequences in its rows: the position each position's sequence
    starts at (None: one sequence per row; ``sequence_starts``); ``paged``, a continuous batching
    call's (``Paged``). On a static cache (``static_cache``), ``position`` (0-d) is the positions it
    holds before the call, of ``capacity``, and ``offset`` the number read from it in an eager call
    only (None while traced): nothing about a traced call is a Python number read from a tensor,
    so a compiled decoding step is one graph for every position."""

    offset: int | None
    prefix: Prefix | None
    mask: Tensor | None
    starts: Tensor | None = None
    paged: Paged | None = None
    position: Tensor | None = None
    capacity: int = 0

    @property
    def cached(self) -> bool:
        """Whether the call writes to a cache (of any kind)."""
        return self.offset is not None or self.position is not None

    @property
    def continues(self) -> bool:
        """Whether positions the call's cache holds come before its own (or may: a static cache's
        count is not read while a compiled call is traced)."""
        return (self.position is not None and tracing()) or bool(self.offset)


def _call(module: nn.Module) -> tuple[ModelCall, str] | None:
    return module.__dict__.get(CALL)


def decoding(module: nn.Module) -> bool:
    """Whether ``module`` is being called inside a hooked model's call that carries state, padding
    or packing (a cache, an attention mask with pads, sequences packed in a row): its generator
    reads them, so it runs eagerly."""
    entry = _call(module)
    return entry is not None and (entry[0].cached or entry[0].mask is not None or entry[0].starts is not None)


def position_mask(module: nn.Module, batch: int, positions: int) -> Tensor | None:
    """(N, T) bool, True at the real positions among the ``positions`` this call computes; None
    without padding (or when the activation's input does not line up with the mask)."""
    entry = _call(module)
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
    entry = _call(module)
    starts = None if entry is None else entry[0].starts
    if starts is None or starts.shape[1] != positions or starts.shape[0] not in (1, batch):
        return None
    return starts


def sequence_starts(position_ids: Tensor) -> Tensor | None:
    """(B, T) long from ``position_ids`` (B, T): the position each position's sequence starts at,
    a sequence ending wherever the next position id is not one more (as transformers finds packed
    sequences); None where no row restarts (found only outside tracing: ``tracing``)."""
    restarts = position_ids.diff(dim=1) != 1
    if not tracing() and not bool(restarts.any()):
        return None
    first = torch.cat([torch.ones_like(restarts[:, :1]), restarts], dim=1)
    at = torch.arange(position_ids.shape[1], device=position_ids.device)
    return torch.where(first, at, 0).cummax(dim=1).values


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
    inputs at those positions, which each call keeps on the cache (``Prefix``) as the running sums
    are kept, so crops, reorders and copies of the cache continue from the right inputs."""
    entry = _call(module)
    prefix = None if entry is None else entry[0].prefix
    if entry is None or prefix is None:
        return nn.functional.pad(x, (size, 0))
    call, name = entry
    if call.paged is not None:
        _refuse_paged(name)
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
    entry = _call(module)
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
    entry = _call(module)
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
    cache's start: ``_packed`` refuses a later call)."""
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
    """``position_statistics`` ("causal") of a continuous batching call (``Paged``): each request's
    running sums continue from those kept at the slot of the position before its new ones, and
    the sums at its last new position are kept at that position's slot (``Prefix.slots``); a slot
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


# --- the hooks on a model: what its call's keywords say ----------------------------------------


def _decode_offset(kwargs: dict[str, Any]) -> int | None:
    """Positions already in the cache a Hugging Face model is called with; None when the call
    neither gives nor asks for one."""
    position = kwargs.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    cache = _cache(kwargs)
    if cache is None:
        return 0 if kwargs.get("use_cache") else None
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # the legacy tuple of (key, value) per layer
    return 0


def _readable(kwargs: dict[str, Any]) -> bool:
    """Whether ``_decode_offset`` reads how many positions the call's cache holds (from
    ``cache_position``, the cache's ``get_seq_length`` or a legacy tuple), rather than taking 0."""
    position, cache = kwargs.get("cache_position"), _cache(kwargs)
    return ((isinstance(position, Tensor) and position.numel() > 0) or hasattr(cache, "get_seq_length")
            or (isinstance(cache, (tuple, list)) and bool(cache) and isinstance(cache[0], (tuple, list))))


def _refuse_unreadable(modules: list[tuple[str, nn.Module]], cache: Any, positions: object,
                       starts: Tensor | None, mask: Tensor | None) -> None:
    """A one-line error where a call gives a cache whose length cannot be read (a paged cache:
    transformers' continuous batching) with ``position_ids`` not 0 at a sequence's first (real)
    position: it continues sequences whose earlier positions' statistics were never kept with that
    cache, and a pooling activation would start them afresh. A prompt's first call passes."""
    if not isinstance(positions, Tensor) or positions.ndim != 2 or not any(
            m.__dict__.get("context") != "token" for _, m in modules):
        return
    t = positions.shape[1]
    if starts is not None and starts.shape[1] == t:
        first = starts.expand(positions.shape[0], t) == torch.arange(t, device=positions.device)
        if mask is not None and mask.shape == first.shape:
            first = first & mask.to(first.device)
        at = positions[first.to(positions.device)]
    elif mask is not None and mask.shape[1] == t and mask.shape[0] == positions.shape[0]:
        at = positions.gather(1, mask.int().argmax(1, keepdim=True).to(positions.device))
    else:
        at = positions[:, :1]
    if bool((at != 0).any()):
        raise ValueError(f"this call continues sequences (their position_ids do not start at 0) from a "
                         f"{type(cache).__name__}, whose length adaptact cannot read (continuous batching): "
                         f"the statistics of their earlier positions were never kept there; use "
                         f"model.generate, or convert with context='token'")


def _paged(modules: list[tuple[str, nn.Module]], kwargs: dict[str, Any]) -> Paged | None:
    """``Paged`` from the keywords transformers' continuous batching calls a model with (one row of
    its requests' new positions, ``cu_seq_lens_q`` between them, and the first slot group's
    ``read_index`` (every key of each request, in order, its new ones last; empty where no request
    has earlier positions) and ``write_index`` (its new keys' slots)); None for other calls. Only
    running sums continue so: an activation pooling a whole sample refuses such a call in one line,
    as a causal FReLU's window does (``causal_window``)."""
    positions, bounds = kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q")
    reads, writes, keys = kwargs.get("read_index"), kwargs.get("write_index"), kwargs.get("cu_seq_lens_k")
    if not (isinstance(positions, Tensor) and positions.ndim == 2 and positions.shape[0] == 1
            and isinstance(bounds, Tensor) and isinstance(reads, (list, tuple)) and reads
            and isinstance(writes, (list, tuple)) and writes and isinstance(keys, dict)):
        return None
    t = positions.shape[1]
    read, slots = reads[0].long(), writes[0].long()
    if slots.numel() != t or bounds.numel() < 2 or int(bounds[-1]) != t:  # (a padded batch: refused)
        return None
    whole = [name for name, m in modules if m.__dict__.get("context") == "sample"]
    if whole:
        _refuse_paged(whole[0])
    device = positions.device
    bounds = bounds.long().to(device)
    lengths = bounds.diff()
    request = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    firsts, ends = bounds[:-1].tolist(), bounds[1:].tolist()
    starting = positions[0].index_select(0, bounds[:-1]).tolist()  # each request's first new position
    before = [-1] * len(firsts)
    if any(starting):
        key_bounds = [v for v in keys.values() if isinstance(v, Tensor) and int(v[-1]) == read.numel()]
        if not key_bounds:
            return None  # the slots before cannot be found: refused by ``_refuse_unreadable``
        keys_end = key_bounds[0].long()[1:].tolist()
        at_key = [end - (stop - first) - 1 if at else 0  # the key before each request's first new one
                  for at, first, stop, end in zip(starting, firsts, ends, keys_end, strict=True)]
        found = read.index_select(0, torch.tensor(at_key, device=read.device)).tolist()
        before = [slot if at else -1 for slot, at in zip(found, starting, strict=True)]
    starts = bounds[:-1].index_select(0, request).unsqueeze(0)
    return Paged(starts=starts, positions=positions, request=request, before=before,
                 last=[stop - 1 for stop in ends], slots=slots.tolist())


def _refuse_exporting(modules: list[tuple[str, nn.Module]]) -> None:
    """A one-line error where a call on a static cache is exported (ExecuTorch's decoding program):
    an exported program does not carry the running statistics kept beside the cache from one call
    to the next, so each call would start them afresh."""
    pooling = [name for name, m in modules if m.__dict__.get("context") != "token"]
    if pooling and torch.compiler.is_exporting():
        raise ValueError(f"{pooling[0]} keeps its running statistics beside the static cache from one call "
                         f"to the next, which an exported program does not carry: export the model without "
                         f"a cache (use_cache=False), or convert it with context='token'")


def _refuse_paged(name: str) -> None:
    raise ValueError(f"{name} cannot continue a request of continuous batching: only running means are "
                     f"kept with its paged cache (not a window, nor a whole sample); use model.generate, or "
                     f"convert with context='token'")


def _cache(kwargs: dict[str, Any]) -> Any:
    return kwargs.get("past_key_values", kwargs.get("cache"))


def _keys(cache: Any) -> Tensor | None:
    """The keys (B, H, T, D) of the first full-attention layer of a Hugging Face cache (None for
    other caches), whose fingerprint ``_fingerprint`` takes."""
    for layer in getattr(cache, "layers", None) or ():
        keys = getattr(layer, "keys", None)
        if isinstance(keys, Tensor) and keys.ndim == 4 and not getattr(layer, "is_sliding", False):
            return keys
    return None


def _fingerprint(keys: Tensor) -> Tensor:
    """Each row's key sums per position, (B, T): equal rows have equal histories, so a reorder is
    found."""
    return keys.detach().float().sum(dim=(1, 3))


def _rows_moved(cache: Any, rows: Tensor) -> None:
    """The prefix of ``cache`` follows its rows moved (``static_cache.follow_row_moves``)."""
    prefix = getattr(cache, PREFIX, None)
    if isinstance(prefix, Prefix):
        prefix.select(rows)


def _prefix(cache: Any) -> Prefix:
    prefix = getattr(cache, PREFIX, None)
    if isinstance(prefix, Prefix):
        return prefix
    prefix = Prefix()
    with contextlib.suppress(AttributeError, TypeError):  # a tuple: nothing continues from it (raises)
        setattr(cache, PREFIX, prefix)
    return prefix


def _follow(prefix: Prefix, cache: Any, offset: int) -> None:
    """Bring ``prefix`` in line with ``cache`` before a call at ``offset``: rows reordered or
    repeated since the last call (beam search) are found by the cache's fingerprint."""
    if offset == 0:
        prefix.sums.clear()
        return
    if prefix.unchanged(cache):
        return  # the cache as its fingerprint was kept after the last call
    keys = _keys(cache)
    old, now = prefix.fingerprint, None if keys is None else _fingerprint(keys)
    if old is None or now is None or not prefix.sums or min(old.shape[1], now.shape[1]) < offset:
        return
    old, now = old[:, :offset], now[:, :offset].to(old.device)
    if old.shape == now.shape and torch.equal(old, now):
        return
    same = (now.unsqueeze(1) == old.unsqueeze(0)).all(-1)  # (rows now, rows then)
    if not bool(same.any(1).all()):
        raise RuntimeError("the KV cache holds rows that adaptact's causal activations never saw (a cache "
                           "edited or built elsewhere): their prefix statistics cannot continue; decode "
                           "with use_cache=False")
    prefix.select(same.int().argmax(1))


# A model's conditioned modules are found by one walk over its modules, kept on the model until the
# structure may have changed: ``_structure`` counts the registrations of submodules anywhere in the
# process (torch's global registration hook: setattr, add_module, a container's items), but those
# made inside a tracked model's call in this thread that register no conditioned module themselves
# (transformers slices its ModuleList of layers at every call, re-registering them in a temporary
# list), nor those made while a compiled forward is traced. A decoded token then costs no walk.
_structure = [0]
_in_call = threading.local()  # .depth: tracked model calls under way in this thread


def _registered(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    if torch.compiler.is_compiling():  # a compiled forward's temporary lists: read, the count would be a
        return  # guard that every call's registrations broke (each call of any compiled model recompiled)
    if (submodule is not None and submodule.__dict__.get("context") in CONTEXTS) or not getattr(
            _in_call, "depth", 0):
        _structure[0] += 1


nn.modules.module.register_module_module_registration_hook(_registered)


def _conditioned(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that condition on positions, by name, leaving out those inside a
    Hugging Face model inside it: that model's own call tells them its own padding and cache (a T5
    decoder's are not its encoder's), or nothing where it takes no mask (a VLM's vision tower sees
    patches, not the text). Kept on the model while ``_structure`` stands (a compiled call walks the
    modules as it is traced instead: read there, the count of registrations anywhere in the process
    would be a guard that any other model's calls broke); plain attributes are read from
    ``__dict__`` without nn.Module's slow lookup."""
    compiling = torch.compiler.is_compiling()
    kept = None if compiling else model.__dict__.get(_CONDITIONED)
    if kept is not None and kept[0] == _structure[0]:
        return kept[1]
    conditioned: list[tuple[str, nn.Module]] = []
    seen = {id(model)}

    def walk(module: nn.Module, prefix: str) -> None:  # named_modules' order, each module once
        for name, child in module._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            if child.__dict__.get("context") in CONTEXTS:
                conditioned.append((prefix + name, child))
            elif not is_hf_model(child):
                walk(child, f"{prefix}{name}.")

    walk(model, "")
    if not compiling:
        model.__dict__[_CONDITIONED] = (_structure[0], conditioned)
    return conditioned


def tracing() -> bool:
    """Whether the call is being traced (torch.compile, torch.export, torch.jit.trace): no decision
    may read a tensor's values, so a mask is applied whatever it holds and a packing is found
    from the position ids by the ops themselves."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _real_positions(mask: object) -> Tensor | None:
    if isinstance(mask, Tensor) and mask.ndim == 2 and (tracing() or not bool(mask.all())):
        return mask.bool()
    return None


def _attention_mask(kwargs: dict[str, Any], offset: int | Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The call's padding (``ModelCall.mask``) and packed sequences (``ModelCall.starts``) read from
    its ``attention_mask``: a 2-D mask as it is; a 4-D one (B, H, q, K) read by ``_from_4d``, or flex
    attention's ``BlockMask`` by ``_from_block_mask``, such as generate makes for a static cache (for
    each kind of layer: the full-attention layers' is read)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, dict):  # one mask per kind of layer (transformers' mask mapping)
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if isinstance(mask, Tensor) and mask.ndim == 4:
        return _from_4d(mask, offset)
    if isinstance(mask, BlockMask):
        return _from_block_mask(mask, offset), None
    return _real_positions(mask), None


def _own_keys(q: int, k: int, offset: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """The call's q positions (0..q-1) and the column of each one's own key among a mask's k: the
    keys are positions where they cover them (k >= offset + q; always for a static cache's full
    attention, whose ``offset`` is a tensor), else a window ending at the call's last position (a
    sliding layer's)."""
    at = torch.arange(q, device=device)
    if isinstance(offset, Tensor):
        return at, offset.to(device) + at
    return at, (offset + at if k >= offset + q else k - q + at)


def _from_block_mask(mask: BlockMask, offset: int | Tensor) -> Tensor | None:
    """Which of a call's q positions are real, (B, q) (None: all), from flex attention's
    ``BlockMask`` (generate makes one for a static cache under ``attn_implementation=
    "flex_attention"``): its ``mask_mod`` at each position's own key, as ``_from_4d`` reads a
    dense mask (its query index counts from the call's first position, its keys are positions)."""
    q, k = mask.seq_lengths
    device = mask.kv_indices.device
    at, own = _own_keys(q, k, offset, device)
    head = torch.zeros((), dtype=torch.long, device=device)
    per_position = torch.vmap(lambda b, i, key: mask.mask_mod(b, head, i, key), in_dims=(None, 0, 0))
    rows = torch.arange(mask.shape[0], device=device)
    real = torch.vmap(per_position, in_dims=(0, None, None))(rows, at, own)
    return None if not tracing() and bool(real.all()) else real.bool()


def _from_4d(mask: Tensor, offset: int | Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Which of a call's q positions are real, (B, q) (None: all), from a 4-D attention mask
    (B, H, q, K) (bool, True where a query attends; or additive float, 0 there), whose head 0 is
    read: a real position attends to itself, a pad to nothing (transformers masks pads as keys). Its
    own key is column ``offset + i`` where the keys are positions 0.. (K >= offset + q), else the
    window ending at it (a sliding layer's). At offset 0, a block-diagonal mask (each query attending
    from its own sequence's first position, as packed sequences are masked) also gives the
    ``sequence_starts`` (None otherwise: one sequence per row, or a sliding window)."""
    attend = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
    b, q, k = attend.shape
    if k < q:
        return None, None
    at, own = _own_keys(q, k, offset, mask.device)
    real = attend[:, at, own]  # (B, q)
    starts = None
    if tracing():
        return real, None  # (no packing found by reading the mask's values)
    if not offset:
        first = torch.where(real, attend.int().argmax(-1), at)  # the first key attended; a pad: itself
        before = torch.cat([first[:, :1], first[:, :-1]], dim=1)
        if bool(((first == before) | (first == at)).all()) and int(((first == at) & real).sum(1).max()) > 1:
            starts = first
    return (None if bool(real.all()) else real), starts


def _before_call(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    _in_call.depth = getattr(_in_call, "depth", 0) + 1  # ``_after_call`` (always called) takes it back
    try:
        _tell(model, kwargs)
    except BaseException:
        _in_call.depth -= 1
        raise


def _tell(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Tell ``model``'s conditioned activations what this call's keywords say of padding and cache."""
    modules = _conditioned(model)
    if not modules or any(CALL in m.__dict__ for _, m in modules):
        return  # nothing to tell, or told in this call already
    cache = _cache(kwargs)
    if kwargs.get("use_cache") is None and cache is None and not model.training:  # the config's default
        kwargs = {**kwargs, "use_cache": getattr(getattr(model, "config", None), "use_cache", None)}
    static = None if cache is None else static_cache.static_length(cache)
    if static is None:
        offset = _decode_offset(kwargs)
        starts = _packed(modules, kwargs, offset)
        at: int | Tensor = offset or 0
    else:  # positions by tensor (``static_cache``); read as a number only eagerly
        _refuse_exporting(modules)
        position = static[0].clone()
        offset = None if tracing() else int(position)
        at = position if offset is None else offset
        starts = _packed(modules, kwargs, 1 if offset is None else offset)
    prefix = None
    if offset is not None or static is not None:
        prefix = Prefix() if cache is None else _prefix(cache)
        if static is not None:
            if prefix.static is None:
                prefix.static = static_cache.new_kept()
            static_cache.follow_row_moves(cache, _rows_moved)
        elif cache is not None:
            _follow(prefix, cache, offset or 0)
    mask, packed = _attention_mask(kwargs, at)
    if packed is not None:
        _refuse_whole(modules, "its 4-D attention_mask is block-diagonal")
    starts = packed if starts is None else starts
    paged = None
    if cache is not None and not _readable(kwargs) and not tracing():
        paged = _paged(modules, kwargs)
        if paged is None:
            _refuse_unreadable(modules, cache, kwargs.get("position_ids"), starts, mask)
        else:
            starts = None
    call = ModelCall(offset, prefix, mask, starts, paged)
    if static is not None:
        call.position, call.capacity = position, static[1]
    told = call.cached or call.mask is not None or call.starts is not None or paged is not None
    if model.training and torch.is_grad_enabled():
        _remember(model, modules, call if told else None)
    if not told:
        return  # a training forward without pads: nothing to tell (their compiled graphs stay as they are)
    model.__dict__[_OWNER] = (call, modules)
    for name, m in modules:
        m.__dict__[CALL] = (call, name)


def _packed(modules: list[tuple[str, nn.Module]], kwargs: dict[str, Any],
            offset: int | None) -> Tensor | None:
    """``sequence_starts`` of a call that packs sequences in its rows (``position_ids`` restarting
    within a row, no ``attention_mask``: padding-free training, as transformers'
    ``DataCollatorWithFlattening`` makes it; None otherwise). "causal" statistics restart at each
    sequence; a one-line error where an activation pools a whole sample ("sample": transformers
    keeps packed sequences apart only in causal attention) or where the call continues a cache."""
    positions = kwargs.get("position_ids")
    if not (isinstance(positions, Tensor) and positions.ndim == 2 and positions.shape[1] > 1
            and kwargs.get("attention_mask") is None):
        return None
    pooling = [name for name, m in modules if m.__dict__.get("context") != "token"]
    if not pooling:
        return None
    if tracing():  # the values unread: the causal sums follow any packing, nothing can be refused
        whole = any(m.__dict__.get("context") == "sample" for _, m in modules)
        return None if whole or offset else sequence_starts(positions)
    starts = sequence_starts(positions)
    if starts is None:
        return None
    how = "position_ids restart within it, no attention_mask"
    _refuse_whole(modules, how)
    if offset:
        raise ValueError(f"{pooling[0]} would continue a cache of {offset} positions, and this call packs "
                         f"several sequences in a row ({how}): pad the batch (an attention_mask)")
    return starts


def _refuse_whole(modules: list[tuple[str, nn.Module]], how: str) -> None:
    """A one-line error where a call packing sequences in a row (``how`` it shows) meets an
    activation pooling a whole sample: it cannot tell them apart."""
    whole = [name for name, m in modules if m.__dict__.get("context") == "sample"]
    if whole:
        raise ValueError(f"{whole[0]} pools every position of a sample, and this call packs several "
                         f"sequences in a row ({how}): pad the batch (a 2-D attention_mask), or convert with "
                         f"context='causal' (statistics restart at each packed sequence) or 'token'")


@dataclass(eq=False)
class _Backward:
    """Whether backward has reached the outputs of one model call in training."""

    started: bool = False

    def start(self, grad: Tensor) -> None:
        self.started = True


@dataclass(eq=False)
class _Remembered:
    """What one model call in training told a conditioned module (``told``; None: nothing), the
    module's forwards in that call, how many of them were recomputed, and how many outputs backward
    has reached (after their recomputation, if any): the call is pending, once its backward has
    started, while both are short."""

    told: tuple[ModelCall, str] | None
    backward: _Backward
    forwards: int = 0
    recomputed: int = 0
    reached: int = 0

    @property
    def pending(self) -> bool:
        return self.backward.started and self.recomputed < self.forwards and self.reached < self.forwards

    def reach(self, grad: Tensor) -> None:
        self.reached += 1


def _remember(model: nn.Module, modules: list[tuple[str, nn.Module]], call: ModelCall | None) -> None:
    """Keep what a model call in training tells each conditioned module, for the recomputation of
    its forwards in backward (gradient checkpointing: ``_replay``); the module's forwards in this
    call count themselves in (``_replayed``) while ``model`` holds the list (``_after_call``)."""
    backward = _Backward()
    for name, m in modules:
        kept = _replays.get(m)
        if kept is None:
            kept = _replays[m] = collections.deque(maxlen=_REPLAYS_KEPT)
        if not m.__dict__.get(_REPLAY_HOOKED):
            m.register_forward_pre_hook(_replay)
            m.register_forward_hook(_replayed, always_call=True)
            m.__dict__[_REPLAY_HOOKED] = True
        m.__dict__[_REMEMBERED] = remembered = _Remembered(None if call is None else (call, name), backward)
        kept.append(remembered)
    model.__dict__[_REMEMBERING] = ([m for _, m in modules], backward)


def _replay(module: nn.Module, args: tuple) -> None:
    """Gradient checkpointing recomputes a layer's forward in backward, after its model's call has
    ended: the module then gets again what that call told it (padding), so the recomputation gives
    the same numbers and saves the same tensors (a call of a module in training outside any tracked
    model call, while a remembered call's backward is under way, is taken for a recomputation).
    Backward reaches later forwards first (autograd runs later nodes first), so the latest pending
    call is the one."""
    if getattr(_in_call, "depth", 0) or not module.training or not torch.is_grad_enabled():
        return
    kept = _replays.get(module)
    remembered = next((r for r in reversed(kept) if r.pending), None) if kept else None
    if remembered is None:
        return  # not a recomputation of a remembered call: nothing to give it
    remembered.recomputed += 1
    if remembered.told is not None:  # (None: the call told it nothing, and its forward ran as this will)
        x = next((a for a in args if isinstance(a, Tensor)), None)
        mask = remembered.told[0].mask
        if mask is not None and (x is None or x.ndim < 2 or x.shape[0] != mask.shape[0]):
            raise RuntimeError(f"{type(module).__name__}: recomputed in backward (gradient checkpointing) "
                               f"for an input of shape {None if x is None else tuple(x.shape)}, but the "
                               f"model call it belongs to had a batch of {mask.shape[0]}: call the model, "
                               f"not its layers")
        module.__dict__[CALL] = remembered.told
    module.__dict__[_REPLAYING] = remembered.told is not None
    RECOMPUTING.depth += 1  # its BatchNorms' running statistics moved in the forward already


def _replayed(module: nn.Module, args: tuple, output: Any) -> None:
    replaying = module.__dict__.pop(_REPLAYING, None)
    if replaying is not None:
        RECOMPUTING.depth -= 1
        if replaying:
            module.__dict__.pop(CALL, None)
    elif getattr(_in_call, "depth", 0):
        remembered = module.__dict__.get(_REMEMBERED)
        if remembered is not None:  # a forward of the model call that remembered it
            remembered.forwards += 1
            if isinstance(output, Tensor) and output.requires_grad:
                output.register_hook(remembered.reach)  # then a call outside backward is no recomputation


def _after_call(model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    _in_call.depth = max(getattr(_in_call, "depth", 0) - 1, 0)
    remembering = model.__dict__.pop(_REMEMBERING, None)
    if remembering is not None:
        modules, backward = remembering
        for m in modules:
            m.__dict__.pop(_REMEMBERED, None)
        for t in _tensors(output):  # backward of this call starts where it reaches them
            if t.requires_grad:
                t.register_hook(backward.start)
    told = model.__dict__.pop(_OWNER, None)
    if told is None:
        return
    call, modules = told
    for _, m in modules:  # the ones ``_before_call`` told
        m.__dict__.pop(CALL, None)
    if call.prefix is None or not call.prefix.sums:
        return
    cache = getattr(output, "cache", None)
    if cache is None:  # transformers before its output's ``cache`` (where reading it does not warn)
        cache = getattr(output, "past_key_values", None)
    if cache is None:
        cache = _cache(kwargs)
    if cache is not None:
        if getattr(cache, PREFIX, None) is not call.prefix:
            _prefix(cache).sums = call.prefix.sums  # a cache made inside the call
        _prefix(cache).take_fingerprint(cache)


def _tensors(output: Any) -> list[Tensor]:
    """The tensors of a model's output: itself, or the values of a tuple, list or dict (a Hugging
    Face ``ModelOutput`` is one), one level deep."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [v for v in output if isinstance(v, Tensor)] if isinstance(output, (tuple, list)) else []


def is_hf_model(m: object) -> bool:
    """A Hugging Face model (a ``PreTrainedModel``; transformers is not imported to tell)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(m).__mro__)


def _takes_model_keywords(m: nn.Module) -> bool:
    """Hugging Face models: they take ``attention_mask`` and the cache."""
    return is_hf_model(m) and "attention_mask" in inspect.signature(type(m).forward).parameters


def track_decoding(model: nn.Module) -> Callable[[], None]:
    """Hook ``model`` (and the Hugging Face models inside it) so that the conditioned activations
    it holds learn, at every call, its padding and its cache (module docstring). Each activation
    is told by the innermost Hugging Face model holding it, from that model's own call (a T5
    decoder's mask and cache are not its encoder's; a wrapper such as PEFT calling the outer
    model's ``forward`` directly still calls the inner models); one inside a model that takes no
    mask (a VLM's vision tower) is told nothing. The hooks are module-level functions, so a hooked
    model deep-copies and pickles. Idempotent; returns a function that removes the hooks."""
    targets = [model] + [m for m in model.modules() if m is not model and _takes_model_keywords(m)]
    handles = []
    hooked = []
    for m in targets:
        if m.__dict__.get(_HOOKED):
            continue
        handles += [m.register_forward_pre_hook(_before_call, with_kwargs=True),
                    m.register_forward_hook(_after_call, with_kwargs=True, always_call=True)]
        m.__dict__[_HOOKED] = True
        hooked.append(m)

    def remove() -> None:
        for handle in handles:
            handle.remove()
        for m in hooked:
            m.__dict__.pop(_HOOKED, None)

    return remove
