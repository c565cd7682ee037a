"""What causal generators carry from one cached call of a model to the next, kept on the cache
object they extend (not on the module, not in call order): per module, the running sums and counts
of its statistics at every position so far (``Running``), so that a reordered cache (beam search),
a cropped one (assisted decoding), two generations interleaved, a deep-copied or pickled model all
continue from the right prefix. A reorder is recognised by the cache's own keys (each row's
per-position key sums: ``key_fingerprint``) and followed (``follow``). Causal FReLU keeps its
inputs there the same way, for the window of the next positions."""

from __future__ import annotations

import bisect
import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import static_cache

__all__ = ["PREFIX", "Prefix", "Running", "cache_keys", "follow", "key_fingerprint", "prefix_of",
           "rows_moved"]

PREFIX = "adaptact_prefix"  # the Prefix a cache object carries


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
    (``Running``); and the cache's fingerprint (B, T) when they were kept (``key_fingerprint``), with
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
        self.fingerprint = None if keys is None else key_fingerprint(keys)
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
    """The keys (B, H, T, D) of the first full-attention layer of a Hugging Face cache (None for
    other caches), whose fingerprint ``key_fingerprint`` takes."""
    for layer in getattr(cache, "layers", None) or ():
        keys = getattr(layer, "keys", None)
        if isinstance(keys, Tensor) and keys.ndim == 4 and not getattr(layer, "is_sliding", False):
            return keys
    return None


def key_fingerprint(keys: Tensor) -> Tensor:
    """Each row's key sums per position, (B, T): equal rows have equal histories, so a reorder is
    found."""
    return keys.detach().float().sum(dim=(1, 3))


def rows_moved(cache: Any, rows: Tensor) -> None:
    """The prefix of ``cache`` follows its rows moved (``static_cache.follow_row_moves``)."""
    prefix = getattr(cache, PREFIX, None)
    if isinstance(prefix, Prefix):
        prefix.select(rows)


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
    keys = cache_keys(cache)
    old, now = prefix.fingerprint, None if keys is None else key_fingerprint(keys)
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
