"""How a classifier is scored: the share of samples whose highest score is the label's."""

from __future__ import annotations

import torch

__all__ = ["accuracy"]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """The accuracy of ``model`` (put in eval mode) on ``(x, y)``, in batches of ``batch``."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(y)
