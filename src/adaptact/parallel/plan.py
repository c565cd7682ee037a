"""``plan``: a ``parallelize_module`` plan extended with ``ChannelwiseParallel`` for each adaptact
activation whose input a column-parallel layer of the plan produces."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle

from ..sites import activation_producers
from ..nn.base import ActivationModule
from .style import ChannelwiseParallel

__all__ = ["plan"]


def _matches(path: str, key: str) -> bool:
    """Whether the plan key ``key`` names the module at ``path``: atom by atom, with ``*`` and
    the other fnmatch patterns in an atom, as ``parallelize_module`` reads its plan."""
    atoms, keys = path.split("."), key.split(".")
    return len(atoms) == len(keys) and all(fnmatch.fnmatchcase(a, k) for a, k in zip(atoms, keys))


def _style(base_plan: Mapping[str, ParallelStyle], path: str | None) -> ParallelStyle | None:
    if path is None:
        return None
    return next((style for key, style in base_plan.items() if _matches(path, key)), None)


def plan(model: nn.Module, base_plan: Mapping[str, ParallelStyle]) -> dict[str, ParallelStyle]:
    """``base_plan`` (names relative to ``model``, wildcards as ``parallelize_module`` takes them)
    with ``ChannelwiseParallel()`` added for each adaptact activation of ``model`` whose input a
    ``ColwiseParallel`` layer of the plan produces (the producer found as ``replace_activations``
    finds it). An adaptact activation after anything else is a ValueError naming it: its input
    would be sharded, or not, without it knowing. Activations the plan already names are left as
    given.

    Examples::

        >>> # xdoctest: +SKIP("needs a process group")
        >>> base = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
        ...         "down_proj": RowwiseParallel()}
        >>> parallelize_module(mlp, mesh, adaptact.parallel.plan(mlp, base))
    """
    out = dict(base_plan)
    for path, producer in activation_producers(model).items():
        module = model.get_submodule(path)
        torch_own = type(module).__module__.startswith("torch.")
        if torch_own or not isinstance(module, ActivationModule | nn.PReLU):
            continue  # torch's own activations: nothing of adaptact's to shard
        if _style(base_plan, path) is not None:
            continue
        if not isinstance(_style(base_plan, producer), ColwiseParallel):
            after = f"after {producer!r}" if producer else "after no layer that it could find"
            raise ValueError(f"{path} ({type(module).__name__}) sits {after}, which the plan does not make "
                             "column-parallel (ColwiseParallel): shard its producer, or name it in the plan")
        out[path] = ChannelwiseParallel()
    return out
