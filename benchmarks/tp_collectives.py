"""What each adaptact activation sends between ranks under tensor parallelism
(``adaptact.parallel.ChannelwiseParallel``): every collective of one forward and one backward,
with the shape of the tensor each rank puts in, on 2 CPU processes (gloo).

    python benchmarks/tp_collectives.py [--batch 3 --tokens 6 --channels 32]

The collectives are DTensor's own; they are recorded below DTensor (a dispatch mode that lets
DTensor desugar first, as torch's CommDebugMode does), where the per-rank tensors are seen.
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

CASES = [("acon_c", {}), ("prelu", {}), ("arelu", {}), ("meta_acon_c", {}),
         ("meta_acon_c", {"granularity": "layer"}), ("meta_acon_c", {"context": "causal"}), ("aprelu", {}),
         ("aprelu", {"context": "causal"}),
         ("dy_relu_a", {}), ("dy_relu_b", {}), ("dy_relu_b", {"context": "causal"}), ("polynorm", {}),
         ("acon_c_glu", {})]


class Collectives(TorchDispatchMode):
    """The c10d collectives issued inside, with the shape of each rank's input."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor

        if any(t is DTensor for t in types):
            return NotImplemented  # let DTensor run and issue its collectives on local tensors
        name = str(func)
        if "c10d" in name and "wait" not in name and "wrap" not in name:
            t = args[0][0] if isinstance(args[0], list | tuple) else args[0]
            self.seen.append(f"{name.split('.')[1]} {tuple(t.shape)}")
        return func(*args, **(kwargs or {}))


def _worker(rank: int, port: int, batch: int, tokens: int, channels: int) -> None:
    import adaptact
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from adaptact.parallel import ChannelwiseParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2,))
    for name, options in CASES:
        torch.manual_seed(0)
        c = 2 * channels if name.endswith("_glu") else channels
        act = parallelize_module(adaptact.create(name, channels=c, channel_dim=-1, **options), mesh,
                                 ChannelwiseParallel())
        x = torch.randn(batch, tokens, c).chunk(2, -1)[rank].requires_grad_(True)
        with Collectives() as forward:
            y = act(x)
        with Collectives() as backward:
            y.sum().backward()
        if rank == 0:
            label = name + "".join(f" {k}={v}" for k, v in options.items())
            seen = [", ".join(mode.seen) or "-" for mode in (forward, backward)]
            print(f"| {label} | {seen[0]} | {seen[1]} |", flush=True)
    dist.destroy_process_group()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=6)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"B={args.batch}, T={args.tokens}, C={args.channels}, 2 ranks; each rank's input to each "
          "collective")
    print("| activation | forward | backward |\n|---|---|---|")
    mp.spawn(_worker, args=(port, args.batch, args.tokens, args.channels), nprocs=2)


if __name__ == "__main__":
    main()
