"""Trained comparison models on disk: what ``adaptact compare --save-checkpoints`` writes and
``adaptact inspect`` / ``adaptact plot --checkpoint`` read."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .models import build

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, sample_shape: tuple[int, ...],
                    num_classes: int) -> Path:
    """Save a comparison model with what :func:`load_checkpoint` needs to rebuild it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": config, "sample_shape": list(sample_shape), "num_classes": num_classes,
                "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)  # never a half-written checkpoint
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the comparison model saved at ``path``: (model in eval mode, its config)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt["config"]
    policy = config.get("policy", "all")
    model = build(config["model"], config["activation"] if policy == "all" else "relu",
                  tuple(ckpt["sample_shape"]), ckpt["num_classes"])
    if policy != "all":
        from ..convert import replace_activations

        replace_activations(model, config["activation"], policy=policy)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), config
