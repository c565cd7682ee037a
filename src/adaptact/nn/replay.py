"""Gradient checkpointing recomputes a layer's forward in backward, after its model's call has
ended: each conditioned module then gets again what that call told it (``remember``, ``_replay``),
so the recomputation gives the same numbers and saves the same tensors."""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import RECOMPUTING
from .model_call import CALL, ModelCall, under_way

__all__ = ["end_call", "remember"]

_REPLAY_HOOKED = "adaptact_replay_hooked"  # on a conditioned module: the hooks of ``_replay`` are on it
_REPLAYING = "adaptact_replaying"  # on a conditioned module whose CALL ``_replay`` set for a recomputation
_REMEMBERED = "adaptact_remembered"  # on a conditioned module in a model call in training: its _Remembered
_REMEMBERING = "adaptact_remembering"  # on the model during that call: the modules holding _REMEMBERED
_REPLAYS_KEPT = 64  # model calls in training remembered per module for recomputation
_replays: weakref.WeakKeyDictionary[nn.Module, collections.deque] = weakref.WeakKeyDictionary()


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


def remember(model: nn.Module, modules: list[tuple[str, nn.Module]], call: ModelCall | None) -> None:
    """Keep what a model call in training tells each conditioned module, for the recomputation of
    its forwards in backward (gradient checkpointing: ``_replay``); the module's forwards in this
    call count themselves in (``_replayed``) while ``model`` holds the list (until ``end_call``)."""
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
    if getattr(under_way, "depth", 0) or not module.training or not torch.is_grad_enabled():
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
    elif getattr(under_way, "depth", 0):
        remembered = module.__dict__.get(_REMEMBERED)
        if remembered is not None:  # a forward of the model call that remembered it
            remembered.forwards += 1
            if isinstance(output, Tensor) and output.requires_grad:
                output.register_hook(remembered.reach)  # then a call outside backward is no recomputation


def _tensors(output: Any) -> list[Tensor]:
    """The tensors of a model's output: itself, or the values of a tuple, list or dict (a Hugging
    Face ``ModelOutput`` is one), one level deep."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [v for v in output if isinstance(v, Tensor)] if isinstance(output, (tuple, list)) else []


def end_call(model: nn.Module, output: Any) -> None:
    """At the end of a model call in training that ``remember`` kept: its modules' forwards stop
    counting themselves in, and its backward starts where it reaches the call's outputs."""
    remembering = model.__dict__.pop(_REMEMBERING, None)
    if remembering is None:
        return
    modules, backward = remembering
    for m in modules:
        m.__dict__.pop(_REMEMBERED, None)
    for t in _tensors(output):
        if t.requires_grad:
            t.register_hook(backward.start)
