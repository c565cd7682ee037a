"""What causal generators carry between the calls of a model decoding with a static KV cache
(transformers' ``StaticCache``: ``cache_implementation="static"``, the cache of compiled
serving), kept as tensors indexed by position.

A static cache holds its keys in tensors of a fixed capacity and counts its positions in a 0-d
tensor it updates in place. The running sums of a causal generator (and a causal FReLU's inputs)
are kept the same way: one (B, capacity, S) tensor per module, written at the call's positions
and read at the position before them, by tensor index, so every call is the same few operations
whatever its position. A compiled decoding step is then one graph for every token (a Python
number per position would be a guard, and a recompilation, per token), and a crop costs nothing
(the positions after it are written again). A reorder of the cache's rows (beam search) reorders
these tensors through the cache's own methods (``running.follow_row_moves``). They are the buffers of a
module (``Kept``): torch.compile takes a module's buffers for tensors at fixed addresses, as CUDA
graphs need of tensors a step writes in place (the cache's own keys are marked so by transformers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Kept", "KeptWhileTraced", "kept_window", "new_kept", "running_sums", "static_length"]


def static_length(cache: Any) -> tuple[Tensor, int] | None:
    """The positions a static cache holds (its own 0-d tensor, updated in place as the model
    writes) and its capacity, read from its first full-attention layer (an encoder-decoder cache's
    self-attention one); None for any other cache (one that grows, or only sliding layers)."""
    cache = getattr(cache, "self_attention_cache", cache)
    for layer in getattr(cache, "layers", None) or ():
        length, capacity = getattr(layer, "cumulative_length", None), getattr(layer, "max_cache_len", None)
        if (not getattr(layer, "is_sliding", False) and isinstance(length, Tensor) and length.ndim == 0
                and isinstance(capacity, int)):
            return length, capacity
    return None


class Kept(nn.Module):
    """The tensors kept for each module name (a conditioned module's, in its model), as this
    module's non-persistent buffers ``<name>/<i>`` (a buffer's name has no dots: they become "|")."""

    def get(self, name: str) -> tuple[Tensor, ...]:
        """``name``'s tensors, in order (none: empty)."""
        key = _key(name)
        found: list[Tensor] = []
        while (t := self._buffers.get(f"{key}/{len(found)}")) is not None:
            found.append(t)
        return tuple(found)

    def put(self, name: str, tensors: tuple[Tensor, ...]) -> None:
        """Keep ``tensors`` for ``name`` (in place of any kept before)."""
        key = _key(name)
        for i, t in enumerate(tensors):
            self.register_buffer(f"{key}/{i}", t, persistent=False)

    def select_rows(self, rows: Tensor) -> None:
        """Rows ``rows`` of every kept tensor, in that order: written in place where the batch keeps
        its size (the addresses stay), new tensors where it does not."""
        for key, t in list(self._buffers.items()):
            assert t is not None
            moved = t.index_select(0, rows.to(t.device))
            if moved.shape == t.shape:
                t.copy_(moved)
            else:
                self.register_buffer(key, moved, persistent=False)


class KeptWhileTraced:
    """``Kept``'s methods over a dict, for a prefix made while a compiled call is traced (a model
    whose first call on the cache is compiled: no module can be made there). Its tensors are the
    compiled calls' inputs, not buffers."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[Tensor, ...]] = {}

    def get(self, name: str) -> tuple[Tensor, ...]:
        return self.tensors.get(name, ())

    def put(self, name: str, tensors: tuple[Tensor, ...]) -> None:
        self.tensors[name] = tensors

    def select_rows(self, rows: Tensor) -> None:
        for name, kept in self.tensors.items():
            self.tensors[name] = tuple(t.index_select(0, rows.to(t.device)) for t in kept)


def new_kept() -> Kept | KeptWhileTraced:
    """A store for a new prefix: ``Kept``, or ``KeptWhileTraced`` while a compiled call is traced."""
    return KeptWhileTraced() if torch.compiler.is_compiling() else Kept()


def _key(name: str) -> str:
    return name.replace(".", "|")


def _kept(state: Kept | KeptWhileTraced, name: str, like: Tensor, capacity: int,
          widths: tuple[int, ...], position: Tensor | int) -> tuple[Tensor, ...]:
    """``state``'s tensors for ``name``: (N, capacity, w) for each width w, zeros where they are made
    (a call at a later ``position`` read eagerly finding none raises: nothing to continue from)."""
    n = like.shape[0]
    kept = state.get(name)
    if len(kept) != len(widths) or any(t.shape != (n, capacity, w) or t.device != like.device
                                       for t, w in zip(kept, widths, strict=True)):
        if isinstance(position, int) and position:
            have = (f"kept for {tuple(kept[0].shape)} on {kept[0].device}" if kept else "none kept")
            raise RuntimeError(f"{name} cannot continue a static cache at position {position} for a batch "
                               f"of {n} on {like.device}: its running statistics are {have} (a cache "
                               f"filled without this model's activations, or moved since); decode with "
                               f"use_cache=False")
        kept = tuple(like.new_zeros(n, capacity, w) for w in widths)
        state.put(name, kept)
    return kept


def running_sums(state: Kept | KeptWhileTraced, name: str, sums: Tensor, counts: Tensor,
                 position: Tensor | int, capacity: int) -> tuple[Tensor, Tensor]:
    """The running ``sums`` (N, T, S) and ``counts`` (N, T) of a call's T positions, which start
    at ``position`` (the positions the cache held before the call: its 0-d tensor, or the number
    read from it in an eager call, which slices instead of indexing), continued from those kept at
    the position before them (nothing before position 0), and kept at the call's positions in
    ``state`` for the calls after."""
    n, t, width = sums.shape
    kept_sums, kept_counts = _kept(state, name, sums, capacity, (width, 1), position)
    if isinstance(position, int):
        if position:
            sums = sums + kept_sums[:, position - 1:position].to(sums.dtype)
            counts = counts + kept_counts[:, position - 1].to(counts.dtype)
        kept_sums[:, position:position + t] = sums.detach()
        kept_counts[:, position:position + t] = counts.detach().unsqueeze(-1)
        return sums, counts
    before = (position - 1).clamp(min=0).reshape(1)
    started = (position > 0).to(sums.dtype)
    sums = sums + kept_sums.index_select(1, before).to(sums.dtype) * started
    counts = counts + kept_counts.index_select(1, before).reshape(n, 1).to(counts.dtype) * started
    at = position + torch.arange(t, device=sums.device)
    kept_sums.index_copy_(1, at, sums.detach().to(kept_sums.dtype))
    kept_counts.index_copy_(1, at, counts.detach().unsqueeze(-1).to(kept_counts.dtype))
    return sums, counts


def kept_window(state: Kept | KeptWhileTraced, name: str, x: Tensor, size: int,
                position: Tensor | int, capacity: int) -> Tensor:
    """Channels-first (N, C, T) ``x`` with the ``size`` inputs kept before ``position`` (as
    ``running_sums`` takes it) in front (zeros before position 0), ``x`` kept at the call's
    positions for the calls after."""
    t = x.shape[-1]
    (inputs,) = _kept(state, name, x, capacity, (x.shape[1],), position)
    if isinstance(position, int):
        low = max(position - size, 0)
        before = nn.functional.pad(inputs[:, low:position].transpose(1, 2), (size - (position - low), 0))
        inputs[:, position:position + t] = x.detach().transpose(1, 2)
        return torch.cat([before.to(x.dtype), x], dim=-1)
    at = position - size + torch.arange(size, device=x.device)
    before = inputs.index_select(1, at.clamp(min=0)) * (at >= 0).to(inputs.dtype).unsqueeze(-1)
    written = position + torch.arange(t, device=x.device)
    inputs.index_copy_(1, written, x.detach().transpose(1, 2).to(inputs.dtype))
    return torch.cat([before.transpose(1, 2).to(x.dtype), x], dim=-1)
