"""Which of an activation's tensors are per channel, and on which of their dims: what tensor
parallelism shards like the channels of the producer's output; everything else is replicated.

Per-channel tensors are the parameters of one value per channel (ACON's p1, p2, beta; PReLU's
weight; Meta-ACON's p1, p2; a defined activation's per-channel parameters), the generators' layers
that read the channels (the first fully connected layer of Meta-ACON-C and DY-ReLU, sharded on its
input dim: its partial sums are reduced over the ranks) and those that write them (the last layer
with one output per channel, or DY-ReLU-B's 2K per channel, and the BatchNorm over them, sharded on
their output dim). APReLU's first layer reads the positive and the negative halves together (2C
inputs) and is replicated: its (N, 2C) input is gathered. Scalar and per-layer parameters (AReLU,
xIELU, PAU, Swish, PolyNorm) are replicated. Each class names its own (``per_channel_parameters``,
``generated_per_channel``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.families import BATCH_NORMS
from ..nn.gated import GatedActivation

__all__ = ["channel_shards"]


def channel_shards(module: nn.Module, channels: int) -> dict[str, int]:
    """The names (as in ``module.state_dict()``) of the tensors of ``module`` that hold ``channels``
    channels, each with the dim its channels are on; a gated activation's are its gate's (of
    ``channels // 2``: it maps 2H channels to H). What each class shards it says itself:
    ``per_channel_parameters`` and ``generated_per_channel`` (``nn.base.ActivationModule``)."""
    if isinstance(module, GatedActivation):
        return {f"gate.{k}": d for k, d in channel_shards(module.gate, channels // 2).items()}
    shards: dict[str, int] = {}
    for name in getattr(module, "per_channel_parameters", ()):
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == channels:
            shards[name] = 0
    fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
    outputs: int | None = getattr(module, "generated_per_channel", None)
    if outputs is None or not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
        return shards
    if fc1.in_features == channels:  # Meta-ACON-C, DY-ReLU: reads the channels; partial sums reduced
        shards["fc1.weight"] = 1
    if outputs and fc2.out_features == outputs * channels:  # writes the channels (DY-ReLU-B: 2K each)
        shards["fc2.weight"] = shards["fc2.bias"] = 0
        bn2 = getattr(module, "bn2", None)
        if isinstance(bn2, BATCH_NORMS) and bn2.num_features == channels:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shards[f"bn2.{name}"] = 0
    return shards
