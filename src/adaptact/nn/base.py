"""Shared plumbing of adaptact's activation modules: input checks and state_dict loading."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ActivationModule", "batch_norm", "check_input"]


def check_input(module: nn.Module, x: torch.Tensor, channels: int | None) -> None:
    """Raise a clear error for inputs an activation cannot take.

    Floating-point tensors only; with ``channels`` set, the input must be (N, C, *) with
    C == channels on dim 1 (never a silent broadcast).
    """
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
    if channels is None:
        return
    if x.ndim < 2:
        raise ValueError(
            f"{name} has per-channel state and expects input of shape (N, C, *) with "
            f"channels on dim 1, got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} expected {channels} channels on dim 1, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, h: torch.Tensor) -> torch.Tensor:
    """Apply ``bn`` to (N, C) statistics, also for a single sample in training mode.

    Batch statistics of one sample are undefined (``nn.BatchNorm1d`` raises). For N == 1 in
    training mode we normalise with the running statistics and leave them unchanged, which
    is what the module does in eval mode. ``nn.SyncBatchNorm`` is left alone: its batch is
    the global one.
    """
    if bn.training and h.shape[0] == 1 and not isinstance(bn, nn.SyncBatchNorm):
        return nn.functional.batch_norm(
            h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    return bn(h)


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


class ActivationModule(nn.Module):
    """Base of adaptact's modules.

    ``load_state_dict`` accepts the official implementations' layouts: a tensor whose shape
    equals ours once size-1 dims are dropped (ACON's (1, C, 1, 1) for our (C,), a 1x1 conv's
    (out, in, 1, 1) for a Linear's (out, in)) is reshaped to ours. Non-finite values are
    refused with an error naming the entry.
    """

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        for name, tensor in own.items():
            key = prefix + name
            value = state_dict.get(key)
            if not isinstance(value, torch.Tensor):
                continue
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                error_msgs.append(f"{type(self).__name__}: entry '{key}' has non-finite values")
                state_dict.pop(key)
                continue
            if value.shape != tensor.shape and _squeezed(value.shape) == _squeezed(tensor.shape):
                state_dict[key] = value.reshape(tensor.shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
