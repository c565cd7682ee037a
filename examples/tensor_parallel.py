"""A LLaMA-style MLP with causal Meta-ACON-C, tensor parallel over every process torchrun starts:

    torchrun --nproc-per-node 2 examples/tensor_parallel.py

gate_proj and up_proj are column-parallel, down_proj row-parallel, and ``adaptact.parallel.plan``
adds ``ChannelwiseParallel`` for the activation between them. The losses printed are those of
one process (``--nproc-per-node 1``) to float rounding. NCCL on GPUs, gloo on CPUs.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import adaptact
from adaptact.parallel import plan


class MLP(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)
        self.act_fn = adaptact.create("meta_acon_c", channels=hidden, channel_dim=-1, context="causal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def train(model: nn.Module, x: torch.Tensor, steps: int = 3) -> list[float]:
    """AdamW steps on reconstructing ``x``; the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = (model(x) - x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def batch(device: str = "cpu") -> torch.Tensor:
    """The same batch on every rank."""
    return torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(1)).to(device)


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    device = "cuda" if cuda else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    torch.manual_seed(0)
    model = MLP().to(device)
    base = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
    parallelize_module(model, mesh, plan(model, base))
    for step, loss in enumerate(train(model, batch(device))):
        if rank == 0:
            print(f"step {step}: loss {loss:.6f}")
    dist.barrier()  # every rank done with the group before any tears it down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
