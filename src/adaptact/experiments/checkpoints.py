"""Trained comparison models on disk: what ``adaptact compare --save-checkpoints`` writes and
``adaptact inspect`` / ``adaptact plot --checkpoint`` read."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write
from ..models.catalogue import build

__all__ = ["CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint"]


class CheckpointError(UserError):
    """A file that is not a comparison checkpoint adaptact can rebuild."""


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, sample_shape: tuple[int, ...],
                    num_classes: int) -> Path:
    """Save a comparison model with what :func:`load_checkpoint` needs to rebuild it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": config, "sample_shape": list(sample_shape), "num_classes": num_classes,
             "state_dict": model.state_dict()}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))  # never a half-written checkpoint


def read_checkpoint(path: str | Path) -> dict:
    """The contents of the checkpoint at ``path``: ``config`` (the run's identity), ``sample_shape``,
    ``num_classes`` and ``state_dict``. CheckpointError naming the file for anything else."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"cannot load checkpoint {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001  (torch.load fails in many ways on a foreign file)
        why = str(err).split(". ")[0].splitlines()[0] if str(err) else ""  # (torch's advice not ours)
        raise CheckpointError(f"cannot load checkpoint {path}: not one of `adaptact compare "
                              f"--save-checkpoints` ({type(err).__name__}: {why})") from None
    fields = ("config", "sample_shape", "num_classes", "state_dict")
    if not (isinstance(ckpt, dict) and all(k in ckpt for k in fields) and isinstance(ckpt["config"], dict)):
        raise CheckpointError(f"cannot load checkpoint {path}: not one of `adaptact compare "
                              "--save-checkpoints` (it lacks the run's config or weights)")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the comparison model saved at ``path``: (model in eval mode, its config). Anything
    else (a missing, truncated, foreign or tampered file) is a CheckpointError naming the file."""
    ckpt = read_checkpoint(path)
    try:
        return _rebuild(ckpt)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (a tampered dict fails in many ways)
        raise CheckpointError(f"cannot load checkpoint {path}: not one of `adaptact compare "
                              f"--save-checkpoints` ({type(err).__name__}: {err})") from None


def _rebuild(ckpt: dict) -> tuple[nn.Module, dict]:
    config = ckpt["config"]
    policy = config.get("policy", "all")
    model = build(config["model"], config["activation"] if policy == "all" else "relu",
                  tuple(ckpt["sample_shape"]), ckpt["num_classes"])
    if policy != "all":
        from ..convert import replace_activations

        replace_activations(model, config["activation"], policy=policy)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), config
