"""One call of a tracked model as its conditioned activations see it (``ModelCall``): ``tracking``
reads it from the call's keywords and sets it on each of them for the length of the call
(``CALL``); ``call_of`` reads it back."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .running import Prefix

__all__ = ["CALL", "ModelCall", "Paged", "call_of", "refuse_paged", "runs_eagerly", "tracing", "under_way"]

CALL = "adaptact_call"  # (ModelCall, the module's name in the model) on each conditioned module during a call
under_way = threading.local()  # .depth: tracked model calls under way in this thread


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
    starts at (None: one sequence per row; ``tracking.sequence_starts``); ``paged``, a continuous batching
    call's (``Paged``). On a static cache (``static_cache``), ``position`` (0-d) is the positions it
    holds before the call, of ``capacity``, and ``offset`` the number read from it in an eager call
    only (None while traced): nothing about a traced call is a Python number read from a tensor,
    so a compiled decoding step is one graph for every position. ``eager``: the call is given a
    dynamic cache (any other than a static one), whose running sums are Python state read at
    Python offsets: traced (a compiled ``forward``), its activations run eagerly
    (``runs_eagerly``), so the graphs around them are the same for every position."""

    offset: int | None
    prefix: Prefix | None
    mask: Tensor | None
    starts: Tensor | None = None
    paged: Paged | None = None
    position: Tensor | None = None
    capacity: int = 0
    eager: bool = False

    @property
    def cached(self) -> bool:
        """Whether the call writes to a cache (of any kind)."""
        return self.offset is not None or self.position is not None

    @property
    def continues(self) -> bool:
        """Whether positions the call's cache holds come before its own (or may: a static cache's
        count is not read while a compiled call is traced)."""
        return (self.position is not None and tracing()) or bool(self.offset)


def call_of(module: nn.Module) -> tuple[ModelCall, str] | None:
    """The call under way that told ``module`` (and the module's name in that model); None outside
    one, or where the call had nothing to tell."""
    return module.__dict__.get(CALL)


def runs_eagerly(module: nn.Module) -> bool:
    """Whether ``module``, traced, is to run eagerly in the call under way (``ModelCall.eager``)."""
    entry = call_of(module)
    return entry is not None and entry[0].eager


def refuse_paged(name: str) -> None:
    """The one-line error of an activation (``name`` in the model) whose statistics cannot continue
    on a paged cache: only running means are kept there (``context._paged_statistics``)."""
    raise ValueError(f"{name} cannot continue a request of continuous batching: only running means are "
                     f"kept with its paged cache (not a window, nor a whole sample); use model.generate, or "
                     f"convert with context='token'")


def tracing() -> bool:
    """Whether the call is being traced (torch.compile, torch.export, torch.jit.trace): no decision
    may read a tensor's values, so a mask is applied whatever it holds and a packing is found
    from the position ids by the ops themselves."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()
