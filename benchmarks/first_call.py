"""The per-process cost of compiling: forward+backward of each adaptive activation in a fresh
process (compilation included), the second call, then a new shape and a new width. ``auto`` runs
the CPU default; ``reference`` runs torch.compile of the reference composition, the comparison.
Run each twice with TORCHINDUCTOR_CACHE_DIR set to one new folder (cold, then warm on-disk cache),
and ``auto`` once with ADAPTACT_COMPILE=0 (eager); see benchmarks/RESULTS.md.

    python benchmarks/first_call.py [auto|reference]
"""

import sys
import time

import torch

import adaptact


def timed(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.randn(shape, requires_grad=True)
    start = time.perf_counter()
    module(x).sum().backward()
    return time.perf_counter() - start


def build(name: str, channels: int, path: str) -> torch.nn.Module:
    if path == "auto":
        return adaptact.create(name, channels=channels)
    return torch.compile(adaptact.create(name, channels=channels, backend="reference"))


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "auto"
    torch.set_num_threads(1)
    for name in ("arelu", "acon_c", "meta_acon_c", "aprelu"):
        m = build(name, 64, path)
        first, second = timed(m, (32, 64, 28, 28)), timed(m, (32, 64, 28, 28))
        other = timed(m, (8, 64, 14, 14))
        wider = timed(build(name, 96, path), (8, 96, 14, 14))
        print(f"{path} {name}: first call {first:.2f} s, second {1e3 * second:.1f} ms, "
              f"new shape {1e3 * other:.1f} ms, new width {1e3 * wider:.1f} ms")
