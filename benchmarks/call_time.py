"""The time of one call where calls are small: each activation's backends and torch's SiLU at
decoding shapes, no grad, one thread, every variant in turn in each round (interleaved), many calls
per round (their mean is the round's time); prints the median per call, its min-max over rounds,
the ratio of medians to SiLU's and the median of the per-round ratios (each variant against SiLU in
the same round).

    python benchmarks/call_time.py [C] [rounds] [calls] [names]

The shapes are (1, 1, C) (one decoded token), (8, 1, C) (eight sequences decoding) and (8, 512, C)
(a training-sized batch), C = 688 by default (the intermediate width of the converted LLaMA in
RESULTS.md); channels last (channel_dim=-1), the generated activations causal (their context in a
decoder). Each module is called a few times first, so compiled entries are built before timing.
"""

import statistics
import sys
import time

import torch

import adaptact

NAMES = ("arelu", "acon_c", "meta_acon_c", "aprelu", "dy_relu_b")
BACKENDS = ("auto", "reference", "autograd", "compiled")
CAUSAL = {"meta_acon_c", "aprelu", "dy_relu_b"}  # the pooling ones: causal in a decoder


def module(name: str, channels: int, backend: str) -> torch.nn.Module:
    options = {"context": "causal"} if name in CAUSAL else {}
    m = adaptact.create(name, channels=channels, channel_dim=-1, **options).eval()
    m.backend = backend
    return m


def per_call(fn, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls


def main(channels: int, rounds: int, calls: int, names: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for shape in ((1, 1, channels), (8, 1, channels), (8, 512, channels)):
        x = torch.randn(shape)
        n = calls if shape[1] == 1 else max(1, calls // 50)
        variants = {"silu": torch.nn.SiLU()}
        for name in names:
            for backend in BACKENDS:
                variants[f"{name} {backend}"] = module(name, channels, backend)
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            for fn in variants.values():  # build compiled entries, warm caches
                for _ in range(3):
                    fn(x)
            for _ in range(rounds):
                for k, fn in variants.items():
                    times[k].append(per_call(fn, x, n))
        silu = statistics.median(times["silu"])
        print(f"\n{shape}, no grad, float32, one thread; {rounds} rounds of {n} calls; median per call "
              "[min-max over rounds], x SiLU's median, and the median of each round's ratio to SiLU's")
        for k, v in times.items():
            med = statistics.median(v)
            paired = statistics.median(t / s for t, s in zip(v, times["silu"], strict=True))
            print(f"  {k:<24} {1e6 * med:9.1f} us [{1e6 * min(v):.1f}-{1e6 * max(v):.1f}]  {med / silu:6.2f}x  "
                  f"paired {paired:6.2f}x")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 688, int(args[1]) if len(args) > 1 else 15,
         int(args[2]) if len(args) > 2 else 200, tuple(args[3].split(",")) if len(args) > 3 else NAMES)
