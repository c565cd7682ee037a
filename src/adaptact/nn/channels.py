"""Where an activation's channels are and how many: ``channel_dim`` and lazy ``channels``.

Every module with per-channel state or input conditioning (``ChannelModule``) computes on the
channels-first view ``x.movedim(channel_dim, 1)`` of its input, (N, C, *), and moves the result
back: a view each way, no copy, so a (B, T, C) token tensor is an (N, C, S) tensor with unit
channel stride to every backend. Parameters and state_dict do not depend on ``channel_dim``: a
module trained in one layout loads in the other.

``channels=None`` makes a module lazy, with the semantics of torch's ``LazyModuleMixin``: its
parameters are made at the first forward from the input's size on ``channel_dim`` (or by
``load_state_dict``, from the entries' shapes), in the dtype and on the device the module was
given or since moved to; until then its repr says it is uninitialised. Build the optimizer after
that first forward, as with torch's lazy modules.
"""

from __future__ import annotations

import types
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..ops import small
from .base import ActivationModule, check_input, int_at_least
from .model_call import runs_eagerly
from .offload import layers_loaded

__all__ = ["ChannelModule", "check_channel_dim"]


def check_channel_dim(channel_dim: object) -> int:
    """``channel_dim`` if it is an int other than 0 (the batch dim), else a ValueError."""
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or channel_dim == 0:
        raise ValueError(f"channel_dim must be a non-zero int (1: channels first, -1: channels last), "
                         f"got {channel_dim!r}")
    return channel_dim


class ChannelModule(ActivationModule):
    """An activation whose state has one entry per channel (or whose generator is channel-sized).

    Subclasses call ``_init_channels`` in ``__init__``, make their channel-sized state in
    ``_build(channels, device, dtype)``, compute on channels-first inputs in ``_forward`` and name
    in ``_channels_entry`` the state_dict entry (and its dim) whose size is C.
    """

    channels: int | None
    channel_dim: int
    _channels_entry: tuple[str, int] | None = None  # (state_dict entry, its dim that is C)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each subclass gets ``forward`` with a code object of its own: torch.compile keeps its
        graphs and its recompile limit (8) per code object, which one shared ``forward`` would
        spend on the first few module classes compiled one by one."""
        super().__init_subclass__(**kwargs)
        if "forward" not in cls.__dict__:
            shared = ChannelModule.forward
            cls.forward = types.FunctionType(shared.__code__.replace(), shared.__globals__,  # type: ignore[method-assign]
                                             shared.__name__, shared.__defaults__, shared.__closure__)

    def _init_channels(self, channels: int | None, channel_dim: int, device: Any, dtype: Any) -> None:
        self.channel_dim = check_channel_dim(channel_dim)
        if channels is None:
            self.channels = None
            # follows .to()/.half() until the parameters are made in its device and dtype
            self.register_buffer("_lazy_anchor", torch.empty(0, device=device, dtype=dtype), persistent=False)
            self._lazy_hook = self.register_forward_pre_hook(_materialise_on_forward)
        else:
            self.channels = int_at_least("channels", channels)
            self._build(self.channels, device=device, dtype=dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        raise NotImplementedError

    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def initialized(self) -> bool:
        """False while a lazy module's parameters wait for the first input."""
        return self.channels is not None

    def materialise(self, channels: int) -> None:
        """Make a lazy module's parameters for ``channels`` channels (the first forward and
        ``load_state_dict`` call this)."""
        if self.channels is not None:
            if channels != self.channels:
                raise ValueError(f"{type(self).__name__} has {self.channels} channels, not {channels}")
            return
        anchor = self._lazy_anchor
        del self._lazy_anchor
        self._lazy_hook.remove()
        self.channels = int_at_least("channels", channels)
        self._build(channels, device=anchor.device, dtype=anchor.dtype)
        self.train(self.training)  # layers made now (a generator's BatchNorm) follow eval() given before

    def _before_load(self, state_dict: dict, prefix: str) -> None:
        """A lazy module makes its parameters for the state dict's channel count first."""
        if self.channels is None and self._channels_entry is not None:
            name, dim = self._channels_entry
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.ndim > dim:
                self.materialise(value.numel() if dim < 0 else value.shape[dim])

    def forward(self, x: Tensor) -> Tensor:
        small = self._small_form(x)
        if small is not None:
            return small
        if torch.compiler.is_compiling() and runs_eagerly(self):
            return _forward_eagerly(self, x)
        with layers_loaded(self):  # a generator's layers that accelerate offloads: their weights in
            first = self.channels_first(x)
            if first.ndim == 2 and getattr(self, "context", None) == "token":  # rows (N, C): a position each
                return self._forward(first.unsqueeze(-1)).squeeze(-1)
            y = self._forward(first)
        if self._first(x):
            return y
        y = y.movedim(1, self.channel_dim)
        # the input's layout back (code after a token MLP's activation may .view() it)
        return y.contiguous() if x.is_contiguous() else y

    def _small_form(self, x: Tensor) -> Tensor | None:
        """The output by the class's small-call form (``ops.small``) where this call takes it (see
        ``ActivationModule._small``), else None. Classes without one return None."""
        return None

    def _small_tokens(self, x: Tensor, names: tuple[str, ...],
                      *linears: nn.Module | None) -> list[Tensor] | None:
        """``_small`` for a generated activation (Meta-ACON-C, APReLU, Dynamic ReLU) in eval mode
        with per-position coefficients (context "causal" or "token") of channels-last (B, T, C)
        tokens, its generator's Linear layers ``linears`` (None: none there) with float32 weights:
        a decoded token, or a few (what the decoding of a language model calls them with). The
        parameters ``names`` where it takes it, else None. A layer that is not a plain float32
        nn.Linear (``ops.small.linear``: a dynamically quantized Linear packs its weight, a LoRA
        layer adds its own, an offloaded one loads its weights in its call, a hook watches it) goes
        the usual route, which calls the layer."""
        if (self.training or getattr(self, "context", "sample") == "sample" or x.ndim != 3
                or self.channel_dim not in (-1, 2)
                or not all(layer is None or small.linear(layer) for layer in linears)):
            return None
        return self._small(x, names, self.channels, self.channel_dim)

    def _layers(self, *names: str) -> list[nn.Module]:
        """The generator's layers ``names``, read from the module's dict (nn.Module's attribute lookup
        costs half a microsecond, as much as an operation on one row: see ``ops.small``)."""
        return [cast(nn.Module, self._modules[name]) for name in names]

    def _first(self, x: Tensor) -> bool:
        return self.channel_dim == 1 or (x.ndim == 2 and self.channel_dim == -1)

    def channels_first(self, x: Tensor) -> Tensor:
        """``x`` checked and viewed as (N, C, *): floating point, rank >= 2, ``channels`` on
        ``channel_dim`` (never a silent broadcast)."""
        check_input(self, x, None)
        name, dim = type(self).__name__, self.channel_dim
        if x.ndim < 2 or not -x.ndim <= dim < x.ndim or dim % x.ndim == 0:
            layout = {1: "(N, C, *)", -1: "(N, *, C)"}.get(dim, "(N, ...)")
            raise ValueError(f"{name} has per-channel state and expects input of shape {layout} with "
                             f"channels on dim {dim}, got a {x.ndim}-D tensor of shape {tuple(x.shape)}")
        if x.shape[dim] != self.channels:
            raise ValueError(f"{name} expected {self.channels} channels on dim {dim}, got {x.shape[dim]} "
                             f"(input shape {tuple(x.shape)})")
        return x if self._first(x) else x.movedim(dim, 1)

    def _channels_repr(self) -> str:
        channels = "channels=None (uninitialized)" if self.channels is None else f"channels={self.channels}"
        return channels + ("" if self.channel_dim == 1 else f", channel_dim={self.channel_dim}")


def _materialise_on_forward(module: ChannelModule, args: tuple) -> None:
    x = args[0] if args else None
    if not isinstance(x, Tensor):
        raise TypeError(f"{type(module).__name__} expects a torch.Tensor, got {type(x).__name__}")
    check_input(module, x, None)
    dim = module.channel_dim
    if x.ndim < 2 or not -x.ndim <= dim < x.ndim or dim % x.ndim == 0:
        raise ValueError(f"{type(module).__name__} takes its channels from dim {dim} of its first input, "
                         f"which has shape {tuple(x.shape)}")
    module.materialise(x.shape[dim])


def generator_dtype(fc1: nn.Module) -> torch.dtype:
    """The dtype of the statistics a generator whose first layer is ``fc1`` takes: that layer's
    weight's (a parameter, or a tensor computed by a parametrization or a wrapper such as PEFT's
    LoRA layer), float32 for a layer without a floating weight tensor
    (``torch.ao.quantization.quantize_dynamic``'s Linear keeps an int8 weight packed and takes
    float32)."""
    weight = fc1._parameters.get("weight")
    if weight is None:
        weight = getattr(fc1, "weight", None)
    return weight.dtype if isinstance(weight, Tensor) and weight.is_floating_point() else torch.float32


@torch.compiler.disable
def _forward_eagerly(module: ChannelModule, x: Tensor) -> Tensor:
    """``module``'s forward run eagerly from a traced call (``model_call.ModelCall.eager``): a graph
    break, and no guard on the Python state it reads."""
    return module.forward(x)
