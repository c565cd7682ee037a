"""What a generated activation's generator costs one decoded token before anything else: each of
its Linear layers called on one row (batch 1, one thread, torch's own module call), the whole
generator (the module's own, eval mode) on one token's statistics, and the bytes of its weights,
beside torch's SiLU module on the same (1, 1, C) token and the weights of the converted LLaMA's
MLP (hidden 256, intermediate C; gate, up and down). Every variant in turn in each round
(interleaved); prints the median per call and its min-max over rounds.

    python benchmarks/generator_floor.py [C] [rounds] [calls]
"""

import statistics
import sys
import time

import torch

import adaptact

NAMES = ("meta_acon_c", "aprelu", "dy_relu_b")
GENERATORS = {"meta_acon_c": ("beta_from_mean", 1), "aprelu": ("alpha_from_stats", 2),
              "dy_relu_b": ("coefficients_from_mean", 1)}  # the generator, and its input's width in C
HIDDEN = 256  # the converted LLaMA's hidden size (benchmarks/decode_time.py)


def per_call(fn, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls


def main(channels: int, rounds: int, calls: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    variants = {"silu": (torch.nn.SiLU(), torch.randn(1, 1, channels))}
    weights = {}
    for name in NAMES:
        m = adaptact.create(name, channels=channels, channel_dim=-1, context="causal").eval()
        layers = [(n, layer) for n, layer in m.named_modules() if isinstance(layer, torch.nn.Linear)]
        for n, layer in layers:
            row = torch.randn(1, layer.in_features)
            variants[f"{name} {n} {layer.in_features}x{layer.out_features}"] = (layer, row)
        generator, width = GENERATORS[name]
        variants[f"{name} whole generator"] = (getattr(m, generator), torch.randn(1, 1, width * channels))
        weights[name] = sum(p.numel() * p.element_size() for _, layer in layers for p in layer.parameters())
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn, x in variants.values():
            fn(x)
        for _ in range(rounds):
            for k, (fn, x) in variants.items():
                times[k].append(per_call(fn, x, calls))
    silu = statistics.median(times["silu"])
    print(f"one row, no grad, float32, one thread; {rounds} rounds of {calls} calls; median per call "
          "[min-max over rounds], x SiLU's median")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:<34} {1e6 * med:8.1f} us [{1e6 * min(v):.1f}-{1e6 * max(v):.1f}]  {med / silu:6.2f}x")
    mlp = 3 * HIDDEN * channels * 4  # gate, up, down: float32 weights, no biases
    print(f"weights per layer: LLaMA MLP {mlp / 2**20:.2f} MiB; "
          + "; ".join(f"{n} generator {b / 2**20:.2f} MiB ({b / mlp:.2f}x the MLP)"
                      for n, b in weights.items()))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 688, int(args[1]) if len(args) > 1 else 15,
         int(args[2]) if len(args) > 2 else 200)
