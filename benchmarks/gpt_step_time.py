"""The cost of each activation in the character-level GPT (``--model gpt-char``): one training step
(forward, backward, AdamW) at nanoGPT's CPU batch (12 windows of 64 characters), every activation
in turn within each round so that the machine's drift hits them alike, one thread; the median and
min-max per activation, the ratio of medians to GELU's, and the bytes one step's forward saves for
its backward (distinct storages, parameters included).

    python benchmarks/gpt_step_time.py [rounds] [activation,...]

The default activations are the nanogpt protocol's (``adaptact.experiments.protocols.LM_ACTIVATIONS``).
"""

import statistics
import sys
import time

import torch

from adaptact.experiments.protocols import LM_ACTIVATIONS
from adaptact.experiments.train import ADAMW_BETAS, WEIGHT_DECAY
from adaptact.models.gpt import GPTChar
from adaptact.optim import param_groups

VOCAB, CONTEXT, BATCH = 83, 64, 12  # shakespeare-char's vocabulary, nanoGPT's CPU recipe


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def main(rounds: int, names: list[str]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (BATCH, CONTEXT))
    y = torch.randint(0, VOCAB, (BATCH, CONTEXT))
    models = {n: GPTChar(n, vocab_size=VOCAB, context=CONTEXT).train() for n in names}
    optimizers = {n: torch.optim.AdamW(param_groups(m, WEIGHT_DECAY), lr=1e-4, betas=ADAMW_BETAS)
                  for n, m in models.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(models[name](x).flatten(0, 1), y.flatten())
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        return time.perf_counter() - start

    for _ in range(3):  # compile and warm up
        for n in names:
            step(n)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            times[n].append(step(n))
    base = statistics.median(times[names[0]])
    print(f"one training step, batch {BATCH} x {CONTEXT} characters, {rounds} interleaved rounds, 1 thread")
    print(f"| activation | ms per step, median (min-max) | ratio to {names[0]} | "
          "saved for backward (MiB) |")
    print("|---|---|---|---|")
    for n in names:
        med = statistics.median(times[n])
        print(f"| {n} | {1e3 * med:.1f} ({1e3 * min(times[n]):.1f}-{1e3 * max(times[n]):.1f}) | "
              f"{med / base:.2f} | {saved_bytes(models[n], x) / 2**20:.1f} |")


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(LM_ACTIVATIONS)
    main(rounds, names)
