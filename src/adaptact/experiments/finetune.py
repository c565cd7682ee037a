"""Fine-tuning: a run that starts from another run's trained network instead of from scratch.

The pretraining run (``RunConfig.pretrained``) trained a network on the source data and saved it
(``checkpoints``). The fine-tuning run builds the same network for the target data, copies every
weight whose shape still fits, and starts fresh where it does not: a classifier's head always (the
target's classes are other classes; ``classifier_head``) and any input layer whose shape the
target's samples change. A language model keeps its head: the target's tokens are the source's
characters (the corpora share one vocabulary). Where the run's activation differs from the
pretrained one (the ``convert`` protocols) the activations are then replaced with
``replace_activations(init=...)``, and how far that moves the pretrained network's function is
measured on the source's test set before any step: its accuracy there, or a language model's loss
(nats per character), before and after the conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..convert import replace_activations
from ..datasets.shakespeare import TextData
from .checkpoints import CheckpointError, read_checkpoint
from .evaluate import accuracy
from .language import eval_starts, mean_loss, sample_shape
from .sources import Source, build_model, load_data

if TYPE_CHECKING:
    from .train import RunConfig

__all__ = ["PROBE_SAMPLES", "Start", "classifier_head", "pretrained_checkpoint", "start_from", "transplant"]

PROBE_SAMPLES = 1000  # source test samples a classifier's conversion is measured on


@dataclass
class Start:
    """A fine-tuning run's network before its first step, and what starting it measured:
    ``source_score`` and ``converted_score``, the pretrained network's accuracy on the source's test
    set (a language model's loss, nats per character) before and after its activations were
    replaced (-1 without a conversion); ``fresh``, the parameters that start at their
    initialisation (a classifier's head, layers whose shapes changed)."""

    model: nn.Module
    source_score: float = -1.0
    converted_score: float = -1.0
    fresh: tuple[str, ...] = ()


def classifier_head(model: nn.Module, num_classes: int) -> str:
    """The name of ``model``'s classifier: its last ``nn.Linear`` with ``num_classes`` outputs
    (``classifier``, ``fc``, ``head`` in the built-in networks, timm's and torchvision's)."""
    heads = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to take as its "
                         "classifier head; fine-tuning re-initialises the head")
    return heads[-1]


def transplant(model: nn.Module, state: dict[str, torch.Tensor], *, head: str | None,
               path: str | Path = "the checkpoint") -> tuple[str, ...]:
    """Copy ``state`` (a pretrained network's state_dict) into ``model`` except the parameters and
    buffers of ``head`` (None: none) and those whose shapes differ; returns the names left at
    their initialisation. CheckpointError when ``state`` is another network's (other names)."""
    own = model.state_dict()
    if set(own) != set(state):
        missing = sorted(set(own) - set(state)) or sorted(set(state) - set(own))
        raise CheckpointError(f"checkpoint {path} holds another network than {type(model).__name__} "
                              f"(no {missing[0]!r} in {'it' if set(own) - set(state) else 'the model'})")
    def kept_fresh(name: str) -> bool:
        return (head is not None and name.startswith(f"{head}.")) or own[name].shape != state[name].shape

    fresh = tuple(k for k in own if kept_fresh(k))
    model.load_state_dict({k: (own[k] if k in fresh else state[k]) for k in own})
    return fresh


def pretrained_checkpoint(pre: RunConfig, path: str | Path) -> dict:
    """The checkpoint at ``path`` (``checkpoints.read_checkpoint``), checked to be the network of the
    pretraining run ``pre``: CheckpointError (one line) for another run's."""
    ckpt = read_checkpoint(path)
    saved = ckpt["config"]
    wanted = pre.identity()
    if saved != wanted:
        shown = ("model", "dataset", "activation", "optimizer", "lr", "seed", "epochs")
        held = ", ".join(f"{k} {saved.get(k)!r}" for k in shown if k in saved)
        raise CheckpointError(f"checkpoint {path} is another run's network ({held}); the pretraining run "
                              "wants " + ", ".join(f"{k} {wanted[k]!r}" for k in shown))
    return ckpt


def start_from(config: RunConfig, ds, path: str | Path) -> Start:
    """The network ``config`` fine-tunes on ``ds``, from the checkpoint of ``config.pretrained`` at
    ``path``; CheckpointError (one line) for a checkpoint of another run's network."""
    pre = config.pretrained
    if pre is None:
        raise ValueError("start_from needs a run with a pretrained run")
    ckpt = pretrained_checkpoint(pre, path)
    converting = config.activation != pre.activation
    # the target's network first, so its fresh head is the same for every activation of a seed
    model = _network(pre, sample_shape(ds), ds.num_classes, config.model_source, config.model)
    start = Start(model=model)
    head = None if isinstance(ds, TextData) else classifier_head(model, ds.num_classes)
    start.fresh = transplant(model, ckpt["state_dict"], head=head, path=path)
    if converting:
        start.source_score, start.converted_score = _function_change(config, ckpt, path)
        _convert(model, config)  # draws what the measured conversion drew
    return start


def _function_change(config: RunConfig, ckpt: dict, path: str | Path) -> tuple[float, float]:
    """The pretrained network's accuracy (a language model's loss) on the source's test set before
    and after the conversion ``config`` makes, with the random numbers the conversion of the
    trained network then draws (the RNG is left as it was)."""
    pre = config.pretrained
    assert pre is not None
    source = pre.data_source or Source(pre.dataset, pre.dataset)
    source_ds = load_data(source, pre.data_dir, pre.scale)
    with torch.random.fork_rng(devices=[]):
        state = torch.get_rng_state()
        net = _network(pre, sample_shape(source_ds), source_ds.num_classes)
        transplant(net, ckpt["state_dict"], head=None, path=path)  # the pretrained network itself
        if isinstance(source_ds, TextData):  # on the windows every evaluation of a test split takes
            tokens, (context,) = source_ds.test, sample_shape(source_ds)
            starts = eval_starts(len(tokens), context)

            def score(model: nn.Module) -> float:
                return mean_loss(model, tokens, starts, context)
        else:
            x, y = source_ds.test_x[:PROBE_SAMPLES], source_ds.test_y[:PROBE_SAMPLES]

            def score(model: nn.Module) -> float:
                return accuracy(model, x, y)
        before = score(net)
        torch.set_rng_state(state)
        _convert(net, config)
        return before, score(net)


def _network(pre: RunConfig, shape: tuple[int, ...], num_classes: int, source: Source | None = None,
             name: str | None = None) -> nn.Module:
    """The pretrained run's network (its activation, its policy) for samples of ``shape``."""
    model = source or pre.model_source or Source(name or pre.model, name or pre.model)
    return build_model(model, pre.activation, shape, num_classes, pre.policy)


def _convert(model: nn.Module, config: RunConfig) -> None:
    replace_activations(model, config.activation, policy=config.policy, init=config.init)
