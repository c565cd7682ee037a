"""The forms "auto" runs for small inference calls: a decoded token, a few rows under ``no_grad``.

There a call's cost is the number of torch operations, not the bytes: each costs about a microsecond
whatever its size, and the reference's composition (``adaptact.functional``) spends several on
views and casts of the parameters. These compute the reference's maths in as few operations as
torch has for it, on x as given (no view of x moved; per-channel parameters come viewed against
it), with the parameters' small transforms done on the parameters. A generator's layers are
called as torch's operations on their tensors, read from the modules' dicts: nn.Module's attribute
lookup and call cost as much as an operation on one row. That is done only where a layer's call is
those operations and nothing else (``linear``, ``evaluating``, ``plain``). They equal the
reference up to float32 rounding (tests/ops/test_small.py) and run where
``ActivationModule._small`` says: eagerly, on float32 CPU tensors of at most ``EAGER_NUMEL``
elements, nothing recorded for backward, no torch.func transform over x or the parameters.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["acon_a", "acon_b", "acon_c", "aprelu", "arelu", "dy_relu", "dy_relu_coefficients",
           "evaluating", "linear", "linear_norm", "meta_acon_c", "plain"]


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


def evaluating(*norms: nn.Module | None) -> bool:
    """Whether each of a generator's BatchNorms (None: none there) normalises with its running
    statistics, as ``linear_norm`` does: a BatchNorm1d (a SyncBatchNorm goes the usual route, which
    refuses it in a decoder's contexts) in eval mode that keeps its statistics, called plainly
    (``plain``)."""
    return all(bn is None or (type(bn) is nn.BatchNorm1d and not bn.training and bn.track_running_stats
                              and plain(bn)) for bn in norms)


def linear(layer: nn.Module) -> bool:
    """Whether a generator's ``layer`` is what ``linear_norm`` computes: an nn.Linear (not a
    subclass, nor a quantized or adapted layer) with float32 weights, called plainly (``plain``)."""
    weight = layer._parameters.get("weight") if type(layer) is nn.Linear else None
    return weight is not None and weight.dtype is torch.float32 and plain(layer)


def plain(module: nn.Module) -> bool:
    """Whether calling ``module`` runs its class's forward and nothing else, so that its operations on
    its tensors are its call: no hooks of its own, no forward set on the instance (accelerate's
    offloading sets one, which brings the weights in from the CPU or the disk for the call alone).
    Anything else goes the usual route, which calls the module. (Global module hooks,
    ``register_module_forward_hook``, which torch offers no public way to read, see the activation's
    call but not its generator's layers in this form.)"""
    own = module.__dict__
    return not (own["_forward_hooks"] or own["_forward_pre_hooks"] or "forward" in own)


def linear_norm(rows: Tensor, linear: nn.Module, bn: nn.Module | None = None) -> Tensor:
    """A generator's ``bn(linear(rows))`` for rows (R, in): ``linear`` an nn.Linear, ``bn`` (None:
    none) an eval-mode BatchNorm1d (see ``evaluating``). Torch's two operations, without the modules'
    calls; their tensors are read from the modules' dicts, since nn.Module's attribute lookup
    (half a microsecond) costs as much as an operation on one row."""
    weights = linear._parameters
    h = F.linear(rows, cast(Tensor, weights["weight"]), weights["bias"])
    if bn is None:
        return h
    affine, stats = bn._parameters, bn._buffers
    return torch.batch_norm(h, affine["weight"], affine["bias"], stats["running_mean"], stats["running_var"],
                            False, 0.0, cast(float, bn.eps), False)


def dy_relu_coefficients(means: Tensor, fc1: nn.Module, fc2: nn.Module, lambdas: Tensor, init_v: Tensor,
                         k: int) -> tuple[Tensor, Tensor]:
    """Dynamic ReLU's pieces (a, b), each (..., C or 1, K), from the means (..., C):
    (2 sigmoid(z) - 1) lambdas + init_v with z = fc2(relu(fc1(means))) (``fc1``, ``fc2``: its
    nn.Linear layers), as sigmoid(z) 2 lambdas + (init_v - lambdas): the two small terms are of
    2K values, and torch's sigmoid costs a seventh of its tanh here (tanh(z / 2) took 7 us more on
    DY-ReLU-B's 2752 values at C = 688)."""
    switch = linear_norm(linear_norm(means, fc1).relu_(), fc2).sigmoid_()
    coefficients = torch.addcmul(init_v - lambdas, switch.unflatten(-1, (-1, 2 * k)), lambdas * 2)
    a, b = coefficients.split(k, dim=-1)
    return a, b


def aprelu(negative: Tensor, positive: Tensor, alpha: Tensor) -> Tensor:
    """APReLU, max(x, 0) + alpha min(x, 0), from x's two parts (which its statistics pool too)."""
    return torch.addcmul(positive, alpha, negative)


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Dynamic ReLU, max_k (a_k x + b_k), with pieces (N, T, C or 1, K) for (N, T, C) ``x``."""
    return torch.addcmul(b, a, x.unsqueeze(-1)).amax(-1)


def acon_a(x: Tensor, beta: Tensor) -> Tensor:
    """ACON-A: x sigmoid(beta x)."""
    return torch.mul(x, beta).sigmoid_().mul_(x)
