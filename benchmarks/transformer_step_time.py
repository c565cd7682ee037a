"""The cost of each activation in the built-in transformers: one training step (forward, backward,
AdamW) of ``gpt-char`` at nanoGPT's CPU batch (12 windows of 64 characters) or of ``vit`` /
``vit-token`` at the ViT sweep's batch (128 Fashion-MNIST-sized images, 28x28), every activation
in turn within each round so that the machine's drift hits them alike, one thread; the median and
min-max per activation, the ratio of medians to the first activation's, and the bytes one step's
forward saves for its backward (distinct storages, parameters included).

    python benchmarks/transformer_step_time.py [rounds] [activation,...] [model]

The default activations are the nanogpt protocol's (``adaptact.experiments.protocols.LM_ACTIVATIONS``)
and the default model ``gpt-char``.
"""

import statistics
import sys
import time

import torch

from adaptact.experiments.protocols import LM_ACTIVATIONS
from adaptact.experiments.train import ADAMW_BETAS, WEIGHT_DECAY
from adaptact.models.catalogue import build
from adaptact.optim import param_groups

VOCAB, CONTEXT, BATCH = 83, 64, 12  # shakespeare-char's vocabulary, nanoGPT's CPU recipe
IMAGE, IMAGE_BATCH, CLASSES = (1, 28, 28), 128, 10  # the ViT sweep on Fashion-MNIST


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def batch(model: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(inputs, targets, what a batch is) of ``model``."""
    if model == "gpt-char":
        x, y = torch.randint(0, VOCAB, (BATCH, CONTEXT)), torch.randint(0, VOCAB, (BATCH, CONTEXT))
        return x, y, f"batch {BATCH} x {CONTEXT} characters"
    x, y = torch.randn(IMAGE_BATCH, *IMAGE), torch.randint(0, CLASSES, (IMAGE_BATCH,))
    return x, y, f"batch {IMAGE_BATCH} images of {IMAGE[1]}x{IMAGE[2]}"


def main(rounds: int, names: list[str], model: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, what = batch(model)
    shape, classes = ((CONTEXT,), VOCAB) if model == "gpt-char" else (IMAGE, CLASSES)
    models = {n: build(model, n, shape, classes).train() for n in names}
    optimizers = {n: torch.optim.AdamW(param_groups(m, WEIGHT_DECAY), lr=1e-4, betas=ADAMW_BETAS)
                  for n, m in models.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(models[name](x).flatten(0, -2), y.flatten())
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
    print(f"{model}: one training step, {what}, {rounds} interleaved rounds, 1 thread")
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
    main(rounds, names, sys.argv[3] if len(sys.argv) > 3 else "gpt-char")
