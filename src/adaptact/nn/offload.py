"""Layers whose weights accelerate offloads (``from_pretrained(device_map=...)`` with "cpu" or
"disk" entries, ``accelerate.cpu_offload``, ``disk_offload``): each such layer holds its weights on
the meta device and gets them, through the hook accelerate attaches to it (``_hf_hook``), for its
own call alone. A conditioned activation reads some of its layers' tensors without calling them
(a BatchNorm normalising each position on its own, the causal FReLU's window convolved with its
Conv1d's weight), so it brings its offloaded layers' weights in for its whole call: what
accelerate's ``preload_module_classes`` does for classes named to it, which ``from_pretrained``
names none of."""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

__all__ = ["layers_loaded"]

_NOTHING = contextlib.nullcontext()


def layers_loaded(module: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which the weights of ``module``'s offloaded layers (its children that carry
    accelerate's offloading hook) are in, sent back on leaving it (also where it raises); nothing
    where none is offloaded."""
    hooked: list[tuple[nn.Module, Any]] = []
    for layer in module._modules.values():  # (a loop: torch.compile traces no walrus in a comprehension)
        hook = None if layer is None else _offloading(layer.__dict__.get("_hf_hook"))
        if layer is not None and hook is not None:
            hooked.append((layer, hook))
    return _Loaded(hooked) if hooked else _NOTHING


class _Loaded:
    """The offloaded layers' weights in, through each one's own hook (``pre_forward``), and back out
    (``post_forward``); in between, the hooks leave them in where the module calls a layer (its
    ``offload`` off), so no weight is read from the CPU or the disk twice in one call."""

    def __init__(self, hooked: list[tuple[nn.Module, Any]]) -> None:
        self.hooked = hooked

    def __enter__(self) -> None:
        for layer, hook in self.hooked:
            hook.pre_forward(layer)
            hook.offload = False  # a layer the module calls keeps the weights in, not loading them again

    def __exit__(self, *exc: object) -> None:
        for layer, hook in self.hooked:
            hook.offload = True
            hook.post_forward(layer, None)


def _offloading(hook: Any) -> Any:
    """The hook of ``hook`` that offloads (an ``AlignDevicesHook`` itself, or one inside a
    ``SequentialHook``), or None."""
    if getattr(hook, "offload", False):
        return hook
    for inner in getattr(hook, "hooks", ()):
        found = _offloading(inner)
        if found is not None:
            return found
    return None
