"""The forms "auto" runs for small inference calls: a decoded token, a few rows under ``no_grad``.

There a call's cost is the number of torch operations, not the bytes: each costs about a microsecond
whatever its size, and the reference's composition (``adaptact.functional``) spends several on
views and casts of the parameters. These compute the reference's maths in as few operations as
torch has for it, on x as given (the channels on ``dim``, no view of x moved), with the
parameters' small transforms done on the parameters. They equal the reference up to float32
rounding (tests/ops/test_small.py) and run where ``ActivationModule._small`` says: eagerly, on
float32 CPU tensors of at most ``EAGER_NUMEL`` elements, nothing recorded for backward, no
torch.func transform over x or the parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["acon_a", "acon_b", "acon_c", "along", "aprelu", "arelu", "dy_relu", "meta_acon_c"]


def along(x: Tensor, dim: int, *params: Tensor) -> tuple[Tensor, ...]:
    """Per-channel (C,) parameters viewed so that they broadcast on ``dim`` of ``x`` (as they are
    for the last dim)."""
    if dim == -1 or dim == x.ndim - 1:
        return params
    shape = (-1,) + (1,) * (x.ndim - 1 - dim % x.ndim)
    return tuple(p.view(shape) for p in params)


def arelu(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """AReLU: gain x where x > 0, slope x elsewhere (gain = 1 + sigmoid(beta), slope = clamp(alpha)),
    as leaky_relu(x, slope / gain) gain. ``alpha`` and ``beta`` are single values of CPU tensors that
    no transform wraps (``.item()`` reads them: two operations on x in all)."""
    gain = 1 + 1 / (1 + math.exp(-beta.item()))
    slope = min(max(alpha.item(), 0.01), 0.99)
    return F.leaky_relu(x, slope / gain).mul_(gain)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """ACON-C: x lerp(p2, p1, sigmoid(beta (p1 - p2) x)) = x ((p1 - p2) sigmoid(.) + p2), parameters
    viewed against x."""
    switch = torch.mul(x, torch.sub(p1, p2).mul_(beta)).sigmoid_()
    return torch.lerp(p2, p1, switch).mul_(x)


def acon_b(x: Tensor, p: Tensor, beta: Tensor) -> Tensor:
    """ACON-B: x ((1 - p) sigmoid(beta (1 - p) x) + p)."""
    d = 1 - p
    switch = torch.mul(x, beta * d).sigmoid_()
    return torch.addcmul(p, d, switch).mul_(x)


def meta_acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """ACON-C with ``beta`` per position, (N, T, C or 1) for channels-last (N, T, C) ``x``."""
    switch = torch.mul(x, torch.sub(p1, p2)).mul_(beta).sigmoid_()
    return torch.lerp(p2, p1, switch).mul_(x)


def aprelu(negative: Tensor, positive: Tensor, alpha: Tensor) -> Tensor:
    """APReLU, max(x, 0) + alpha min(x, 0), from x's two parts (which its statistics pool too)."""
    return torch.addcmul(positive, alpha, negative)


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Dynamic ReLU, max_k (a_k x + b_k), with pieces (N, T, C or 1, K) for (N, T, C) ``x``."""
    return torch.addcmul(b, a, x.unsqueeze(-1)).amax(-1)


def acon_a(x: Tensor, beta: Tensor) -> Tensor:
    """ACON-A: x sigmoid(beta x)."""
    return torch.mul(x, beta).sigmoid_().mul_(x)
