"""Optimizer parameter groups for networks with adaptive activations."""

from __future__ import annotations

from torch import nn

from .nn import ActivationModule
from .nn.families import CHANNEL_NORMS

__all__ = ["param_groups"]

NO_DECAY_MODULES = (ActivationModule, nn.PReLU, *CHANNEL_NORMS, nn.GroupNorm, nn.LayerNorm,
                    nn.LocalResponseNorm)  # activations and norms


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups for a torch optimizer: ``weight_decay`` on weights, none on the parameters of
    activations (p1, p2, beta, alpha, PReLU slopes, Meta-ACON/APReLU generators), norms and biases.

    Decaying an activation's parameters pulls them to 0 (ACON-C's p1, p2 -> 0 makes it flat), which
    is how YOLOv5's ACON study lost ACON's gain. Use as
    ``torch.optim.SGD(adaptact.param_groups(model, 5e-4), lr=0.1, momentum=0.9)``.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, NO_DECAY_MODULES):
            no_decay_ids |= {id(p) for p in module.parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
