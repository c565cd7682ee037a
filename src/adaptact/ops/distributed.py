"""DTensors (torch's tensor parallelism, ``adaptact.parallel``) and our backends: the memory-lean
Functions, their compiled entries and the Triton kernels take plain tensors, so a module given
DTensors runs the reference (plain torch ops, which DTensor shards and reduces itself) under
``backend="auto"``, and a named fused backend is refused with one line."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["assign", "refusal", "replicated_like", "sharded"]


@functools.cache
def _dtensor() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def sharded(*tensors: object) -> bool:
    """Whether any of ``tensors`` is a ``torch.distributed.tensor.DTensor``."""
    dtensor = _dtensor()
    return dtensor is not None and any(isinstance(t, dtensor) for t in tensors)


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
