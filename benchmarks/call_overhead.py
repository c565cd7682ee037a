"""What a compiled call costs beyond its kernels: forward+backward of one module through the CPU
default with its entries compiled ahead of time (as shipped), the same with torch.compile's own
entries (dynamo evaluates the frame and its guards on every call; forced by failing the
ahead-of-time compile), and torch.compile of the reference composition, alternating in each
round, one thread; the medians over rounds of the mean of ``calls`` steps. With tiny inputs only
the fixed cost remains. See benchmarks/RESULTS.md.

    python benchmarks/call_overhead.py arelu 2,4 [float32|bfloat16] [rounds] [calls]
"""

import copy
import statistics
import sys
import time

import torch

import adaptact
from adaptact.ops import compiled as CP


def _no_ahead_of_time(self, args):
    raise RuntimeError("forced: torch.compile's own entry")


def main(name: str, shape: tuple[int, ...], dtype: torch.dtype, rounds: int, calls: int) -> None:
    torch.set_num_threads(1)
    auto = adaptact.create(name, channels=shape[1]).train()
    reference = copy.deepcopy(auto)
    reference.backend = "reference"
    compiled_reference = torch.compile(reference)
    x = torch.randn(shape).to(dtype).requires_grad_()
    dy = torch.randn(shape).to(dtype)
    ahead, jit = {}, {}
    shipped = CP._Entry._ahead_of_time

    def ours(entries: dict, build) -> None:
        CP._entries, CP._Entry._ahead_of_time = entries, build
        auto(x).backward(dy)

    steps = {"ahead of time": lambda: ours(ahead, shipped),
             "torch.compile entries": lambda: ours(jit, _no_ahead_of_time),
             "torch.compile(reference)": lambda: compiled_reference(x).backward(dy)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():  # compile and warm up
        for _ in range(3):
            step()
    for _ in range(rounds):
        for k, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            times[k].append((time.perf_counter() - start) / calls)
    print(f"{name} {shape} {dtype}, forward+backward, median of {rounds} rounds x {calls} calls:")
    for k, v in times.items():
        print(f"  {k:26s} {1e6 * statistics.median(v):8.1f} us")


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(s) for s in sys.argv[2].split(",")),
         getattr(torch, sys.argv[3]) if len(sys.argv) > 3 else torch.float32,
         int(sys.argv[4]) if len(sys.argv) > 4 else 30, int(sys.argv[5]) if len(sys.argv) > 5 else 100)
