"""``ChannelwiseParallel``: tensor parallelism for an adaptact activation between a column-parallel
producer and a row-parallel consumer, as a torch ``ParallelStyle`` beside ``ColwiseParallel`` and
``RowwiseParallel`` in a ``parallelize_module`` plan.

The producer leaves each rank C / world of the channels (its output sharded on the last dim). The
activation's per-channel tensors (``sharding.channel_shards``) become DTensors sharded the same
way, every other tensor a replicated DTensor, and its input a DTensor sharded on its channel dim;
the module then runs its reference maths on DTensors (``backend="auto"`` does so by itself), and
torch's DTensor does what crosses the ranks: nothing for the elementwise activations, an
all-reduce of the generators' (N, hidden) partial sums (Meta-ACON-C, DY-ReLU), a gather of
APReLU's (N, 2C) statistics, an all-reduce of PolyNorm's per-token sums of squares, and a
redistribution of a fused gate/up input that a gate and its up half do not share on a rank. The
output goes back to the local shard the row-parallel consumer expects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from ..nn.base import ActivationModule
from ..nn.channels import ChannelModule
from ..nn.gated import GatedActivation
from .sharding import channel_shards

__all__ = ["ChannelwiseParallel", "channels_of"]


def channels_of(module: nn.Module) -> int | None:
    """The channels ``module`` holds per-channel state for on its input's channel dim (a gated
    activation's 2H), None when it holds none."""
    if isinstance(module, GatedActivation):
        inner = channels_of(module.gate)
        return None if inner is None else 2 * inner
    if isinstance(module, ChannelModule):
        return module.channels
    if isinstance(module, nn.PReLU):
        return module.num_parameters if module.num_parameters > 1 else None
    return None


class ChannelwiseParallel(ParallelStyle):
    """Shard an adaptact activation's channels over a 1-D device mesh, as the column-parallel
    layer before it shards its output.

    Keyword Args:
        use_local_output: return the local shard (a ``torch.Tensor``, what ``RowwiseParallel``
            takes by default) rather than the DTensor. Default: True.

    The channel dim is the module's own ``channel_dim`` (-1 for modules without one: a
    column-parallel Linear shards its last dim). A lazy module (``channels=None``) must have met
    its first input before it is parallelised; anything but an adaptact activation (or
    ``torch.nn.PReLU``) is refused.

    Example::

        >>> # xdoctest: +SKIP("needs a process group")
        >>> plan = {"gate_proj": ColwiseParallel(), "act_fn": ChannelwiseParallel(),
        ...         "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
        >>> parallelize_module(mlp, mesh, plan)
    """

    def __init__(self, *, use_local_output: bool = True) -> None:
        super().__init__()
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        name = type(module).__name__
        if not isinstance(module, ActivationModule | nn.PReLU):
            raise ValueError(f"ChannelwiseParallel is for adaptact's activations, not {name}")
        lazy = [m for m in module.modules() if isinstance(m, ChannelModule) and not m.initialized]
        if lazy:
            raise ValueError(f"{name} has not made its parameters yet (channels=None): run one forward (or "
                             "give channels) before parallelising it")
        if device_mesh.ndim != 1:
            raise ValueError("ChannelwiseParallel shards over a 1-D mesh (a 2-D mesh's tensor-parallel dim), "
                             f"got {device_mesh.ndim} dims")
        channels = channels_of(module)
        shards = channel_shards(module, channels) if channels else {}
        persistent = set(module.state_dict())
        for full, tensor in [*module.named_parameters(), *module.named_buffers()]:
            holder_name, _, leaf = full.rpartition(".")
            holder = module.get_submodule(holder_name)
            placement = Shard(shards[full]) if full in shards else Replicate()
            dtensor = distribute_tensor(tensor.detach(), device_mesh, [placement],
                                        src_data_rank=self.src_data_rank)
            if isinstance(tensor, nn.Parameter):
                holder.register_parameter(leaf, nn.Parameter(dtensor, requires_grad=tensor.requires_grad))
            else:
                holder.register_buffer(leaf, dtensor, persistent=full in persistent)
        dim = getattr(module, "channel_dim", -1)
        module.register_forward_pre_hook(lambda m, args: _sharded_input(args, device_mesh, dim))
        module.register_forward_hook(lambda m, args, out: _local_output(out, dim, self.use_local_output))
        return module

    def __repr__(self) -> str:
        return f"{type(self).__name__}(use_local_output={self.use_local_output})"


def _placement(x: torch.Tensor, dim: int) -> Shard:
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"ChannelwiseParallel: channel dim {dim} is out of range for an input of shape "
                         f"{tuple(x.shape)}")
    return Shard(dim % x.ndim)


def _sharded_input(args: tuple[Any, ...], mesh: DeviceMesh, dim: int) -> tuple[Any, ...]:
    x = args[0]
    if isinstance(x, DTensor):
        placement = _placement(x, dim)
        x = x if x.placements == (placement,) else x.redistribute(mesh, [placement])
    elif isinstance(x, torch.Tensor):
        x = DTensor.from_local(x, mesh, [_placement(x, dim)], run_check=False)
    return (x, *args[1:])


def _local_output(out: Any, dim: int, local: bool) -> Any:
    if not isinstance(out, DTensor):
        return out
    placement = _placement(out, dim)
    if out.placements != (placement,):
        out = out.redistribute(out.device_mesh, [placement])
    return out.to_local() if local else out
