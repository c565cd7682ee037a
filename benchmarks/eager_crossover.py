"""Where the eager reference stops beating the compiled entry for calls that record no gradient:
each adaptive activation, channels last (C = 688), at 1 to 1024 positions, reference and compiled
in turn (interleaved), 7 rounds, one thread; prints the medians and their ratio. The basis of
``ops.dispatch.EAGER_NUMEL`` (see benchmarks/RESULTS.md, "Small calls").

    python benchmarks/eager_crossover.py [names]
"""

import statistics
import sys
import time

import torch

import adaptact

C = 688
CAUSAL = {"meta_acon_c", "aprelu", "dy_relu_b"}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name in names:
        for positions in (1, 8, 64, 256, 1024):
            x = torch.randn(1, positions, C)
            modules = {}
            for backend in ("reference", "compiled"):
                m = adaptact.create(name, channels=C, channel_dim=-1,
                                    **({"context": "causal"} if name in CAUSAL else {})).eval()
                m.backend = backend
                modules[backend] = m
            times: dict[str, list[float]] = {b: [] for b in modules}
            calls = max(1, 2000 // positions)
            with torch.no_grad():
                for m in modules.values():
                    for _ in range(3):
                        m(x)
                for _ in range(7):
                    for b, m in modules.items():
                        start = time.perf_counter()
                        for _ in range(calls):
                            m(x)
                        times[b].append((time.perf_counter() - start) / calls)
            ref, comp = (statistics.median(times[b]) for b in ("reference", "compiled"))
            print(f"{name} {positions * C} elements: reference {1e6 * ref:.0f} us, compiled {1e6 * comp:.0f} us, "
                  f"reference / compiled {ref / comp:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["arelu", "acon_c", "meta_acon_c", "aprelu", "dy_relu_b"])
