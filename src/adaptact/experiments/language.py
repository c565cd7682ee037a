"""Language modelling in the comparison: batches of character windows and the loss that measures
a model.

Training samples ``batch`` windows of ``context + 1`` tokens at random offsets of the training
split each iteration (nanoGPT's way); the inputs are a window's first ``context`` tokens, the
targets its last ``context``. A split's loss is the mean cross-entropy, in nats per character,
over ``EVAL_WINDOWS`` windows at fixed offsets (the same for every run, so paired runs are
measured on the same text).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..datasets.builtin import Dataset
from ..datasets.shakespeare import TextData

__all__ = ["CONTEXT", "EVAL_WINDOWS", "NATS_PER_BIT", "eval_starts", "mean_loss", "sample_batch",
           "sample_shape", "windows"]

CONTEXT = 64  # characters a built-in language model sees (nanoGPT's CPU recipe)
EVAL_WINDOWS = 256  # windows per split and evaluation (nanoGPT's CPU recipe: 20 batches of 12)
EVAL_BATCH = 64
NATS_PER_BIT = math.log(2.0)  # bits per character = nats per character / ln 2


def windows(tokens: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (len(starts), context): the windows at ``starts`` and the same
    shifted by one token."""
    offsets = starts.unsqueeze(1) + torch.arange(context + 1)
    chunk = tokens[offsets]
    return chunk[:, :-1], chunk[:, 1:]


def sample_batch(tokens: torch.Tensor, batch: int, context: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` windows at offsets drawn from ``generator``."""
    if len(tokens) <= context + 1:
        raise ValueError(f"a split of {len(tokens)} tokens holds no window of {context + 1}")
    starts = torch.randint(len(tokens) - context - 1, (batch,), generator=generator)
    return windows(tokens, starts, context)


def eval_starts(n_tokens: int, context: int, count: int | None = None) -> torch.Tensor:
    """The fixed offsets a split of ``n_tokens`` is measured at (seed 0; the same for every run):
    ``count`` of them, ``EVAL_WINDOWS`` by default."""
    count = EVAL_WINDOWS if count is None else count
    return torch.randint(n_tokens - context - 1, (count,), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def mean_loss(model: torch.nn.Module, tokens: torch.Tensor, starts: torch.Tensor, context: int,
              device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy (nats per character) of ``model`` over the windows at ``starts``."""
    model.eval()
    total, count = 0.0, 0
    for part in starts.split(EVAL_BATCH):
        x, y = windows(tokens, part, context)
        logits = model(x.to(device))
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum"))
        count += y.numel()
    return total / count


def sample_shape(ds: Dataset | TextData) -> tuple[int, ...]:
    """The shape of one sample a network is built for: a window of ``CONTEXT`` tokens for text, an
    image's or a signal's shape otherwise."""
    return (CONTEXT,) if isinstance(ds, TextData) else tuple(ds.train_x.shape[1:])
