"""The registry entries a module class declares for itself (``registry_entries``): its name, family
and paper beside the class, so adding an activation touches no table elsewhere. ``adaptact.registry``
makes each into an ``ActivationSpec`` (the class built with ``options``) for every class exported
by ``adaptact.nn``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Entry", "Family"]

Family = Literal["classic", "learnable", "adaptive"]


@dataclass(frozen=True)
class Entry:
    """One registry name of a class (``ActivationSpec`` has the fields' meanings).

    Attributes:
        name: the registry name (lower case, underscores).
        family: "classic" (no trainable parameters), "learnable" (trainable, shared by all
            inputs) or "adaptive" (the library's attention and adaptive activations).
        paper: where it comes from.
        per_channel: built with ``channels`` (the class's first argument); the others ignore it.
        per_sample: its shape adapts to each input sample (a generator).
        options: constructor keywords fixed for this name (DY-ReLU-A's ``granularity="layer"``).
        channel_factor: output channels / input channels.
        ranks: the input ranks it takes (None: any).
        uses_layout: takes ``channel_dim`` without per-channel state (a normalisation over them).
    """

    name: str
    family: Family
    paper: str
    per_channel: bool = False
    per_sample: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    channel_factor: float = 1
    ranks: tuple[int, ...] | None = None
    uses_layout: bool = False
