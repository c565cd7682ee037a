"""Forward+backward of one module, the CPU default (backend="auto") against torch.compile of the
reference composition, nothing else in the rounds: the two alternate, one thread, and the medians
and their ratio are printed. ``adaptact bench-kernels`` times every backend in its rounds (the
eager reference allocates several x-sized tensors), so its ratios also carry the allocator's
state; this isolates the pair. Run it twice, the second time with glibc's malloc keeping freed
memory (MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ large), to see how much of a step is
page faults on freshly mapped memory; see benchmarks/RESULTS.md.

    python benchmarks/step_time.py aprelu 32,64,28,28 [float32|bfloat16] [rounds] [calls]

``calls`` steps per round (default 1; their mean is the round's time): with tiny inputs such as
(2, 4) only the fixed cost of a call remains, which many calls per round time better.
"""

import copy
import statistics
import sys
import time

import torch

import adaptact


def step(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, calls: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        module(x).backward(dy)
    return (time.perf_counter() - start) / calls


def main(name: str, shape: tuple[int, ...], dtype: torch.dtype, rounds: int, calls: int) -> None:
    torch.set_num_threads(1)
    auto = adaptact.create(name, channels=shape[1]).train()
    reference = copy.deepcopy(auto)
    reference.backend = "reference"
    modules = {"auto": auto, "compile": torch.compile(reference)}
    x = torch.randn(shape).to(dtype).requires_grad_()
    dy = torch.randn(shape).to(dtype)
    times: dict[str, list[float]] = {k: [] for k in modules}
    for _ in range(3):  # compile and warm up
        for m in modules.values():
            step(m, x, dy)
    for _ in range(rounds):
        for k, m in modules.items():
            times[k].append(step(m, x, dy, calls))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["auto"], times["compile"])]
    print(f"{name} {shape} {dtype}: auto {1e3 * med['auto']:.3f} ms (min {1e3 * min(times['auto']):.3f}), "
          f"compile {1e3 * med['compile']:.3f} ms (min {1e3 * min(times['compile']):.3f}), "
          f"ratio of medians {med['auto'] / med['compile']:.2f}, per round {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(s) for s in sys.argv[2].split(",")),
         getattr(torch, sys.argv[3]) if len(sys.argv) > 3 else torch.float32,
         int(sys.argv[4]) if len(sys.argv) > 4 else 40, int(sys.argv[5]) if len(sys.argv) > 5 else 1)
