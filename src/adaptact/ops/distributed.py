"""DTensors (torch's tensor parallelism, ``adaptact.parallel``) and our backends: the memory-lean
Functions, their compiled entries and the Triton kernels take plain tensors, so a module given
DTensors runs the reference (plain torch ops, which DTensor shards and reduces itself) under
``backend="auto"``, and a named fused backend is refused with one line."""

from __future__ import annotations

import sys

import torch
from torch import Tensor

__all__ = ["assign", "batch_norm_on_shards", "refusal", "replicated_like", "sharded"]


def sharded(*tensors: object) -> bool:
    """Whether any of ``tensors`` is a ``torch.distributed.tensor.DTensor``. None can be unless its
    module was imported, so nothing is imported here (it takes over half a second) and nothing is
    cached (torch.compile traces this, and warns of a cached function)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def refusal(name: str, backend: str) -> ValueError:
    """The one-line error for a fused ``backend`` given DTensors."""
    return ValueError(f"{name}: backend={backend!r} takes plain tensors; with DTensors (tensor parallel) "
                      "use backend='auto' or 'reference'")


def replicated_like(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (a plain tensor every rank computes alike, such as position counts) as a replicated
    DTensor on ``like``'s mesh when ``like`` is a DTensor; else ``t`` itself."""
    if not sharded(like):
        return t
    from torch.distributed.tensor import DTensor, Replicate

    assert isinstance(like, DTensor)
    return DTensor.from_local(t, like.device_mesh, [Replicate()] * like.device_mesh.ndim, run_check=False)


@torch.no_grad()
def assign(t: Tensor, values: Tensor) -> None:
    """``t.copy_(values)`` (``values`` broadcast to ``t``'s shape), also where ``t`` is a sharded
    or replicated DTensor (FSDP2 and tensor parallel call ``reset_parameters`` on those): each
    rank writes its own part of ``values``, with no communication."""
    values = values.to(dtype=t.dtype, device=t.device)
    if not sharded(t):
        t.copy_(values)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    assert isinstance(t, DTensor)
    whole = values.expand(t.shape).contiguous()
    t.copy_(distribute_tensor(whole, t.device_mesh, t.placements, src_data_rank=None))


def batch_norm_on_shards(bn: torch.nn.Module, h: Tensor, training: bool) -> Tensor | None:
    """``bn`` of (N, C, *) ``h``, a DTensor sharded on its channels whose BatchNorm tensors are
    sharded alike (tensor parallel): each channel's statistics are its own, so each rank
    normalises its own channels (DTensor's batch_norm would gather them). ``training``: normalise
    with the batch's statistics (and update the running ones). None where the layouts differ."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(h, DTensor) or h.device_mesh.ndim != 1 or h.placements != (Shard(1),):
        return None
    names = ("weight", "bias", "running_mean", "running_var")
    tensors = [getattr(bn, name, None) for name in names]
    if any(t is not None and not (isinstance(t, DTensor) and t.placements == (Shard(0),)) for t in tensors):
        return None
    if training and bn.momentum is None:
        return None  # the cumulative average: DTensor's batch_norm keeps it
    weight, bias, mean, var = (None if t is None else t.to_local() for t in tensors)
    tracked = getattr(bn, "num_batches_tracked", None)
    if training and mean is not None and tracked is not None:
        with torch.no_grad():
            tracked.add_(1)
    momentum, eps = float(getattr(bn, "momentum", None) or 0.0), float(getattr(bn, "eps", 1e-5))
    y = torch.nn.functional.batch_norm(h.to_local(), mean, var, weight, bias, training or mean is None,
                                       momentum, eps)
    return DTensor.from_local(y, h.device_mesh, h.placements, run_check=False)
