"""What causal generators carry from one cached call of a model to the next, kept on the cache
object they extend (not on the module, not in call order): per module, the running sums and counts
of its statistics at every position so far (``Running``), so that a reordered cache (beam search),
a cropped one (assisted decoding), two generations interleaved, a deep-copied or pickled model all
continue from the right prefix. Rows moved by the cache's own methods move the prefix's rows with
them (``follow_row_moves``); rows moved by other means are recognised by the cache's own keys (each
row's per-position key sums of its last full-attention layer: ``fingerprint``) and followed
(``follow``). Causal FReLU keeps its inputs there the same way, for the window of the next
positions."""

from __future__ import annotations

import bisect
import contextlib
import functools
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import static_cache

__all__ = ["PREFIX", "ROW_MOVES", "Prefix", "Running", "cache_keys", "fingerprint", "follow",
           "follow_row_moves", "prefix_of"]

PREFIX = "adaptact_prefix"  # the Prefix a cache object carries
ROW_MOVES = ("reorder_cache", "batch_select_indices", "batch_repeat_interleave")  # methods moving rows
_FOLLOWED = "adaptact_follows_rows"  # on a cache whose ROW_MOVES ``follow_row_moves`` wrapped


@dataclass
class Running:
    """One module's running statistics at every position so far, in chunks of consecutive positions
    (one per call that kept them): the sums (B, T_i, S) and counts (B, T_i, 1) of the statistics at
    positions <= t, and the position each chunk ends at. A prompt is one chunk; a decoded token
    appends one of its own (nothing is copied again); a crop drops or cuts the last ones. (Causal
    FReLU keeps its inputs the same way, as the "sums" with counts of one: ``context.causal_window``.)"""

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
    (``Running``); and the cache's fingerprint (B, T, F) when they were kept (``fingerprint``), with
    the keys tensor it was taken from (a weak reference) and that tensor's version then: while the
    cache holds the same tensor unchanged, its fingerprint is the one kept. On a paged cache
    (continuous batching: ``model_call.Paged``), per module the running sums (S,) at the slot of each
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
        keys = cache_keys(cache)
        self.fingerprint = fingerprint(cache)
        self.keys = None if keys is None else weakref.ref(keys)
        self.keys_version = -1 if keys is None else keys._version

    def unchanged(self, cache: Any) -> bool:
        """Whether ``cache`` holds the very keys tensor its kept fingerprint was taken from, unchanged
        since (a cache that grows, crops or reorders makes a new tensor or writes in place)."""
        keys = cache_keys(cache)
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

    def alike(self, same: Tensor, rows: Tensor) -> bool:
        """Whether every kept row that ``same`` (rows now, rows kept: equal fingerprints) pairs with a
        row now keeps what the row ``rows`` picks for it keeps (equal keys, equal histories)."""
        now, kept = same.nonzero(as_tuple=True)
        if now.numel() == rows.numel():
            return True  # one kept row for each row now
        for state in self.sums.values():
            for part in (state.sums, state.counts):
                if part and not torch.equal(*(torch.cat(part, dim=1)[at] for at in (kept, rows[now]))):
                    return False
        return True

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


def cache_keys(cache: Any) -> Tensor | None:
    """The keys (B, H, T, D) of the last full-attention layer of a Hugging Face cache (an
    encoder-decoder cache's self-attention one; None for other caches), which ``fingerprint``
    takes."""
    return _layer_keys(getattr(cache, "self_attention_cache", cache), full=True, last=True)


def fingerprint(cache: Any) -> Tensor | None:
    """Each row's history, (B, T, F), by which rows moved are found (equal histories, equal rows):
    per position, the sum of the keys of the cache's last full-attention layer (``cache_keys``;
    a first layer's are a function of the tokens and positions alone, a last one's of all the row
    has seen); in an encoder-decoder cache also the sum of the row's keys in its first
    cross-attention layer (a function of the row's input), so rows of different inputs differ even
    where their decoders are one layer given the same tokens. None without keys."""
    keys = cache_keys(cache)
    if keys is None:
        return None
    sums = keys.detach().float().sum(dim=(1, 3)).unsqueeze(-1)
    cross = _layer_keys(getattr(cache, "cross_attention_cache", None), full=True, last=False)
    if cross is None or cross.shape[0] != sums.shape[0]:
        return sums
    inputs = cross.detach().float().sum(dim=(1, 2, 3)).to(sums.device)
    return torch.cat([sums, inputs[:, None, None].expand_as(sums)], dim=-1)


def _layer_keys(cache: Any, *, full: bool, last: bool) -> Tensor | None:
    """The keys (B, H, T, D) of the ``last`` (or first) layer of ``cache`` that holds them, of a
    ``full``-attention one (not a sliding window's) where asked."""
    found = None
    for layer in getattr(cache, "layers", None) or ():
        keys = getattr(layer, "keys", None)
        if isinstance(keys, Tensor) and keys.ndim == 4 and not (full and getattr(layer, "is_sliding", False)):
            if not last:
                return keys
            found = keys
    return found


def follow_row_moves(cache: Any) -> None:
    """Make ``cache``'s methods that move its rows (``ROW_MOVES``: beam search's reorder, a batch's
    selection or repetition) move its prefix's rows with them (``Prefix.select``, with each row's
    source row): exact whatever the keys hold, and where no tensor could tell that they moved (a
    compiled call reads no values). Wrapped on the instance once, by module-level partials, so the
    cache deep-copies and pickles (a copy's methods move the copy's). Rows moved by other means are
    found by the keys (``follow``)."""
    if not hasattr(cache, "__dict__") or cache.__dict__.get(_FOLLOWED):
        return
    for method in ROW_MOVES:
        if callable(getattr(type(cache), method, None)):
            setattr(cache, method, functools.partial(_moved, cache, method))
    cache.__dict__[_FOLLOWED] = True


def _moved(cache: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``cache``'s own ``method`` (one of ``ROW_MOVES``), then its prefix's rows moved the same way."""
    rows = _rows(cache, method, args[0] if args else next(iter(kwargs.values())))
    result = getattr(type(cache), method)(cache, *args, **kwargs)
    prefix = getattr(cache, PREFIX, None)
    if rows is not None and isinstance(prefix, Prefix):
        prefix.select(rows)
    return result


def _rows(cache: Any, method: str, argument: Any) -> Tensor | None:
    """Each row's source row after ``method`` with ``argument``; None where the cache holds no keys
    yet (nothing kept to move)."""
    if method != "batch_repeat_interleave":
        return argument if isinstance(argument, Tensor) else torch.as_tensor(argument)
    keys = _layer_keys(getattr(cache, "self_attention_cache", cache), full=False, last=False)  # its batch
    return None if keys is None else torch.arange(keys.shape[0], device=keys.device).repeat_interleave(
        int(argument))


def prefix_of(cache: Any) -> Prefix:
    prefix = getattr(cache, PREFIX, None)
    if isinstance(prefix, Prefix):
        return prefix
    prefix = Prefix()
    with contextlib.suppress(AttributeError, TypeError):  # a tuple: nothing continues from it (raises)
        setattr(cache, PREFIX, prefix)
    return prefix


def follow(prefix: Prefix, cache: Any, offset: int) -> None:
    """Bring ``prefix`` in line with ``cache`` before a call at ``offset``: rows reordered or
    repeated since the last call (beam search) are found by the cache's fingerprint."""
    if offset == 0:
        prefix.sums.clear()
        return
    if prefix.unchanged(cache):
        return  # the cache as its fingerprint was kept after the last call
    old, now = prefix.fingerprint, fingerprint(cache)
    if old is None or now is None or not prefix.sums or min(old.shape[1], now.shape[1]) < offset:
        return
    old, now = old[:, :offset], now[:, :offset].to(old.device)
    if old.shape == now.shape and torch.equal(old, now):
        return
    same = (now.unsqueeze(1) == old.unsqueeze(0)).flatten(2).all(-1)  # (rows now, rows then)
    if not bool(same.any(1).all()):
        raise RuntimeError("the KV cache holds rows that adaptact's causal activations never saw (a cache "
                           "edited or built elsewhere): their prefix statistics cannot continue; decode "
                           "with use_cache=False")
    rows = same.int().argmax(1)
    if not prefix.alike(same, rows):
        raise RuntimeError("the KV cache's rows moved by other means than its own methods, and rows with "
                           "equal keys hold different statistics here (rows of different inputs): which one "
                           "a row continues cannot be told; move rows with the cache's reorder_cache or "
                           "batch_select_indices, or decode with use_cache=False")
    prefix.select(rows)
