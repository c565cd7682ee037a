"""The compiled CPU path's first-call cost: forward+backward of each adaptive activation in a
fresh process (compilation included), the second call, then a new shape. Run it twice with
TORCHINDUCTOR_CACHE_DIR set to one new folder (cold, then warm on-disk cache) and once with
ADAPTACT_COMPILE=0 (eager); see benchmarks/RESULTS.md."""

import time

import torch

import adaptact


def timed(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn(shape, requires_grad=True)
    start = time.perf_counter()
    module(x).sum().backward()
    return time.perf_counter() - start


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in ("arelu", "acon_c", "meta_acon_c", "aprelu"):
        m = adaptact.create(name, channels=64)
        first, second = timed(m, (32, 64, 28, 28)), timed(m, (32, 64, 28, 28))
        other = timed(m, (8, 64, 14, 14))
        print(f"{name}: first call {first:.2f} s, second {1e3 * second:.1f} ms, "
              f"new shape {1e3 * other:.1f} ms")
