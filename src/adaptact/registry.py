"""Names of every activation: ``available()``, ``get()`` and ``create()``.

A spec says how to build the module and what kind of activation it is, so generic code
(model conversion, the comparison harness, the CLI table) never special-cases a name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from . import nn as ann
from .nn.defined import Definition

__all__ = ["ALIASES", "FAMILIES", "GATED", "ActivationSpec", "available", "catalogue", "create", "get",
           "get_act_layer", "register", "spec"]

Family = Literal["classic", "learnable", "adaptive"]
FAMILIES: tuple[str, ...] = ("classic", "learnable", "adaptive")
ActivationLike = str | type | Callable[..., nn.Module]


@dataclass(frozen=True, kw_only=True)
class ActivationSpec:
    """What the registry knows of one activation.

    Attributes:
        name: registry name (lower case, underscores).
        factory: ``factory(channels, **kwargs) -> nn.Module``.
        family: "classic" (fixed shape), "learnable" (trainable parameters shared by all
            inputs) or "adaptive" (the library's attention/adaptive activations).
        learnable: has trainable parameters.
        per_sample: its shape adapts to each input sample (Meta-ACON, APReLU).
        per_channel: needs ``channels`` (parameters of shape (C,) or a channel-sized generator).
        paper: where it comes from.
        channel_factor: output channels / input channels (2 for CReLU, 1/2 for gated forms, else 1).
        ranks: the input ranks it takes (None: any; FReLU's spatial condition needs 2-D maps).
        uses_layout: takes ``channel_dim`` without per-channel state (PolyNorm normalises over
            the channels; a gated form splits them).
        gated: a GLU form, act(gate) * up: the input holds gate and up on ``channel_dim``.
        lazy_channels: a per-channel entry that takes ``channels`` from its first input when built
            without them ("prelu" makes one shared slope instead).
        lazy: per-channel and able to take ``channels`` from its first input.
        takes_channel_dim: the layout matters to it (per-channel state, normalisation or gating).
        elementwise: it has a curve y = f(x) (not PolyNorm, not a gated form).
        definition: the record of an activation made by ``adaptact.define`` (None for built-ins).
    """

    name: str
    factory: Callable[..., nn.Module]
    family: Family
    paper: str
    learnable: bool = False
    per_sample: bool = False
    per_channel: bool = False
    channel_factor: float = 1
    ranks: tuple[int, ...] | None = None
    uses_layout: bool = False
    gated: bool = False
    lazy_channels: bool = True
    definition: Definition | None = None

    @property
    def lazy(self) -> bool:
        return self.per_channel and self.lazy_channels

    @property
    def takes_channel_dim(self) -> bool:
        return self.per_channel or self.uses_layout

    @property
    def elementwise(self) -> bool:
        """Each output element a function of its input element (given the parameters or generated
        coefficients): what curves and their properties describe. PolyNorm (a normalisation over
        the channels) and the gated forms (a product of two channels) are not."""
        return not self.uses_layout


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` explicitly (``**kwargs`` alone does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _torch(cls: type, **fixed) -> Callable[..., nn.Module]:
    """Factory for a torch.nn class without per-channel state (``channels`` is ignored)."""
    takes_inplace = _accepts(cls, "inplace")

    def build(channels: int | None = None, inplace: bool = False, **kwargs) -> nn.Module:
        if takes_inplace:
            kwargs["inplace"] = inplace
        return cls(**{**fixed, **kwargs})

    return build


def _shared(cls: type, **fixed) -> Callable[..., nn.Module]:
    """Factory for an adaptact class without per-channel state (``channels`` is ignored)."""

    def build(channels: int | None = None, **kwargs) -> nn.Module:
        return cls(**{**fixed, **kwargs})

    return build


def _per_channel(cls: type, **fixed) -> Callable[..., nn.Module]:
    def build(channels: int, **kwargs) -> nn.Module:
        return cls(channels, **{**fixed, **kwargs})

    return build


def _prelu(channels: int | None, inplace: bool = False, **kwargs) -> nn.Module:
    """One slope per channel; without ``channels`` one shared slope (torch's ``nn.PReLU()``, and
    transformers' "prelu")."""
    return ann.PReLU(num_parameters=1 if channels is None else channels, **kwargs)


def _prelu_shared(channels: int | None = None, inplace: bool = False, **kwargs) -> nn.Module:
    return ann.PReLU(num_parameters=1, **kwargs)


def _classic(name: str, factory: Callable[..., nn.Module], paper: str, **more: Any) -> ActivationSpec:
    """A fixed-shape activation: no trainable parameters, nothing per sample or per channel."""
    return ActivationSpec(name=name, factory=factory, family="classic", paper=paper, **more)


def _learnable(name: str, factory: Callable[..., nn.Module], paper: str, **more: Any) -> ActivationSpec:
    """Trainable parameters shared by all inputs (per channel where ``per_channel=True``)."""
    return ActivationSpec(name=name, factory=factory, family="learnable", paper=paper, learnable=True, **more)


def _adaptive(name: str, factory: Callable[..., nn.Module], paper: str, **more: Any) -> ActivationSpec:
    """The library's attention/adaptive activations (trainable; ``per_sample`` where generated)."""
    return ActivationSpec(name=name, factory=factory, family="adaptive", paper=paper, learnable=True, **more)


def _specs() -> dict[str, ActivationSpec]:
    specs = [
        _classic("sigmoid", _torch(nn.Sigmoid), "logistic function"),
        _classic("tanh", _torch(nn.Tanh), "hyperbolic tangent"),
        _classic("relu", _torch(nn.ReLU), "Nair & Hinton, ICML 2010"),
        _classic("relu6", _torch(nn.ReLU6), "Krizhevsky 2010"),
        _classic("leaky_relu", _torch(nn.LeakyReLU), "Maas et al., ICML-W 2013"),
        _classic("rrelu", _torch(nn.RReLU), "Xu et al., arXiv 1505.00853"),
        _classic("elu", _torch(nn.ELU), "Clevert et al., arXiv 1511.07289"),
        _classic("selu", _torch(nn.SELU), "Klambauer et al., NeurIPS 2017"),
        _classic("celu", _torch(nn.CELU), "Barron, arXiv 1704.07483"),
        _classic("gelu", _torch(nn.GELU), "Hendrycks & Gimpel, arXiv 1606.08415"),
        _classic("gelu_tanh", _torch(nn.GELU, approximate="tanh"),
                 "Hendrycks & Gimpel, arXiv 1606.08415 (tanh form)"),
        _classic("silu", _torch(nn.SiLU), "Elfwing et al., arXiv 1702.03118"),
        _classic("hardswish", _torch(nn.Hardswish), "Howard et al., ICCV 2019"),
        _classic("hardsigmoid", _torch(nn.Hardsigmoid), "Courbariaux et al. 2015"),
        _classic("mish", _torch(nn.Mish), "Misra, arXiv 1908.08681"),
        _classic("softplus", _torch(nn.Softplus), "Dugas et al., NeurIPS 2001"),
        _classic("softmax", _torch(nn.Softmax, dim=1), "softmax over dim 1"),
        _learnable("prelu", _prelu, "He et al., ICCV 2015", per_channel=True, lazy_channels=False),
        _learnable("prelu_shared", _prelu_shared,
                   "He et al., ICCV 2015; one slope for all channels (torch.nn.PReLU())"),
        _classic("identity", _torch(nn.Identity), "no activation (transformers' linear)"),
        *_declared(),
    ]
    return dict(sorted((s.name, s) for s in specs))


def _declared() -> list[ActivationSpec]:
    """The entries adaptact's own classes declare (``registry_entries``), each class built with the
    entry's options (and ``channels`` where it is per channel)."""
    specs = []
    for cls in (getattr(ann, name) for name in ann.__all__):
        for e in vars(cls).get("registry_entries", ()) if isinstance(cls, type) else ():
            build = (_per_channel if e.per_channel else _shared)(cls, **e.options)
            specs.append(ActivationSpec(
                name=e.name, factory=build, family=e.family, paper=e.paper, learnable=e.family != "classic",
                per_sample=e.per_sample, per_channel=e.per_channel, channel_factor=e.channel_factor,
                ranks=e.ranks, uses_layout=e.uses_layout))
    return specs


_REGISTRY: dict[str, ActivationSpec] = _specs()

ALIASES: dict[str, str] = {
    # transformers' ACT2CLS names for entries registered under another name (the same numbers)
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "sqrtsoftplus": "sqrt_softplus",
    "linear": "identity",
    "swiglu": "silu_glu",
    "geglu": "gelu_glu",
    "reglu": "relu_glu",
}
"""Other names of registered entries: transformers' ``ACT2CLS`` names and the GLU variants' own."""

GLU_SUFFIX = "_glu"
GATED: tuple[str, ...] = ("swiglu", "geglu", "reglu", "swiglu_oss")
"""The gated forms with names of their own; any entry ``name`` also resolves as ``name_glu``, the
GLU with ``name`` as its gate (``acon_c_glu``, ``meta_acon_c_glu``)."""


def _gated(channels: int | None, gate: str, channel_dim: int = -1, interleaved: bool = False,
           inplace: bool = False, **kwargs) -> nn.Module:
    """act(gate) * up with ``gate`` built for half of ``channels`` (the input's 2H)."""
    if channels is not None and channels % 2:
        raise ValueError(f"a gated activation splits its {channels} input channels into gate and up: "
                         f"it needs an even number")
    half = None if channels is None else channels // 2
    act = create(gate, channels=half, channel_dim=channel_dim, inplace=inplace, **kwargs)
    return ann.GatedActivation(act, channel_dim=channel_dim, interleaved=interleaved)


def _swiglu_oss(channels: int | None = None, inplace: bool = False, **kwargs) -> nn.Module:
    return ann.SwiGLUOSS(**kwargs)


def _gated_spec(key: str) -> ActivationSpec | None:
    """The spec of a gated name (``swiglu_oss`` or ``<entry>_glu``), None for other names."""
    if key == "swiglu_oss":
        return _classic("swiglu_oss", _swiglu_oss,
                        "GPT-OSS's clamped SwiGLU (OpenAI 2025; transformers' GptOssExperts)",
                        channel_factor=0.5, uses_layout=True, gated=True)
    if not key.endswith(GLU_SUFFIX) or key[: -len(GLU_SUFFIX)] not in _REGISTRY:
        return None
    gate = _REGISTRY[key[: -len(GLU_SUFFIX)]]
    if gate.channel_factor != 1:
        raise ValueError(f"{gate.name!r} changes the number of channels and cannot be a GLU's gate")
    return dataclasses.replace(
        gate, name=key, factory=functools.partial(_gated, gate=gate.name), channel_factor=0.5,
        uses_layout=True, gated=True, ranks=None,
        paper=f"Shazeer, arXiv 2002.05202 (GLU variants), gate: {gate.name}")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_BUILT_IN = frozenset(_REGISTRY)


def register(entry: ActivationSpec) -> None:
    """Add ``entry`` (made by ``adaptact.define``) to the registry under its name; it replaces an
    entry of that name made the same way (a notebook cell run again), never a built-in, an alias
    or a gated form's name."""
    name = entry.name
    if name in _BUILT_IN or name in ALIASES or name in GATED or name.endswith(GLU_SUFFIX):
        raise ValueError(f"{name!r} is a built-in activation's name (or an alias, or a gated form's): "
                         "choose another")
    _REGISTRY[name] = entry


def _imported(name: str) -> str:
    """``module:name``: import ``module`` (which defines ``name`` with ``adaptact.define``), then
    ``name``; ValueError when it does not import or defines no such name."""
    module_name, _, entry = name.partition(":")
    entry = _normalise(entry)
    if not module_name.strip() or not entry:
        raise ValueError(f"activation {name!r}: expected a name or module:name")
    try:
        importlib.import_module(module_name.strip())
    except Exception as err:  # noqa: BLE001  (any failure of the user's module, in one line)
        raise ValueError(f"activation {name!r}: module {module_name.strip()!r} cannot be imported "
                         f"({type(err).__name__}: {err})") from None
    if entry not in _REGISTRY or _REGISTRY[entry].definition is None:
        raise ValueError(f"activation {name!r}: module {module_name.strip()!r} defines no activation "
                         f"{entry!r} (adaptact.define)")
    return entry


def spec(name: str) -> ActivationSpec:
    """The spec of a registered activation (or of one of its ``ALIASES``, or of a gated form:
    ``swiglu_oss`` or ``<entry>_glu``, or ``module:name``: ``name`` as ``module`` defines it with
    ``adaptact.define``, importing it first); unknown names raise ValueError with suggestions."""
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a str, got {type(name).__name__}")
    if ":" in name:
        return _REGISTRY[_imported(name)]
    asked = _normalise(name)
    key = ALIASES.get(asked, asked)
    gated = _gated_spec(key)
    if gated is not None:
        return dataclasses.replace(gated, name=asked) if asked in GATED else gated
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, [*_REGISTRY, *ALIASES, "swiglu_oss"], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
        raise ValueError(
            f"unknown activation {name!r}{hint} (adaptact.available() lists all {len(_REGISTRY)})"
        )
    return _REGISTRY[key]


def available(family: str | None = None) -> list[str]:
    """Registered names, sorted; ``family`` is one of "classic", "learnable", "adaptive". Aliases and
    gated forms (``ALIASES``, ``GATED``, ``<entry>_glu``) resolve in ``spec``/``create`` but are not
    listed: a gated form maps 2H channels to H and is no elementwise function of its input."""
    if family is None:
        return sorted(_REGISTRY)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    return sorted(n for n, s in _REGISTRY.items() if s.family == family)


def create(activation: ActivationLike, channels: int | None = None, **kwargs) -> nn.Module:
    """Build an activation module.

    Args:
        activation: a registry name (``"acon_c"``), an ``nn.Module`` class, or any callable
            returning a module (e.g. ``functools.partial``).
        channels: the number of channels of the input. Per-channel activations left without it
            take it from their first input (lazy), but "prelu", which then has one shared slope
            (torch's ``nn.PReLU()``, transformers' "prelu"); the rest accept and ignore
            it, so generic code can always pass it. Classes and callables get it only when their
            signature takes ``channels``.
        **kwargs: constructor arguments (``inplace`` is accepted by every registry entry;
            ``channel_dim`` by every entry too, ignored where the layout does not matter). A gated
            form's ``channels`` are its input's 2H (its gate is built for H); its ``channel_dim``
            defaults to -1 (token MLPs).
    """
    if isinstance(activation, str):
        s = spec(activation)
        if not s.takes_channel_dim:
            kwargs.pop("channel_dim", None)  # nothing per channel: any layout
        return s.factory(channels, **kwargs)
    if callable(activation):
        if channels is not None and _accepts(activation, "channels"):
            kwargs["channels"] = channels
        if "channel_dim" in kwargs and not _accepts(activation, "channel_dim"):
            kwargs.pop("channel_dim")
        module = activation(**kwargs)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{activation!r} returned {type(module).__name__}, not an nn.Module")
        return module
    raise TypeError(
        f"activation must be a name, an nn.Module class or a callable, got {type(activation).__name__}"
    )


def get(activation: ActivationLike) -> Callable[..., nn.Module]:
    """A factory ``f(channels=None, **kwargs) -> nn.Module`` for a name, class or callable.

    Names are checked now (ValueError with suggestions), so a typo fails at configuration
    time rather than at model construction.
    """
    if isinstance(activation, str):
        return functools.partial(create, spec(activation).name)
    if callable(activation):
        return functools.partial(create, activation)
    raise TypeError(
        f"activation must be a name, an nn.Module class or a callable, got {type(activation).__name__}"
    )


def catalogue(family: str | None = None, probe: int = 64) -> tuple[tuple[str, ...], list[tuple]]:
    """(header, rows) of the catalogue (``adaptact list``): family, learnable, per sample, parameters
    per channel counted on a ``probe``-channel instance, paper."""
    rows = []
    for name in available(family):
        s = spec(name)
        n = sum(p.numel() for p in create(name, channels=probe).parameters())
        params = f"{n / probe:g}" if s.per_channel else (f"0 (+{n} shared)" if n else "0")
        rows.append((name, s.family, "yes" if s.learnable else "no", "yes" if s.per_sample else "no",
                     params, s.paper))
    header = ("name", "family", "learnable", "adapts per sample", f"params per channel (C={probe})", "paper")
    return header, rows


def get_act_layer(activation: ActivationLike, **kwargs) -> Callable[..., nn.Module]:
    """A constructor for timm-style ``act_layer=`` arguments: ``get_act_layer("acon_c")`` builds
    like a class (``act_layer()``, ``act_layer(inplace=True)``), with ``kwargs`` bound. Per-channel
    activations called without ``channels=`` take it from their first input (lazy); for token
    MLPs bind ``channel_dim=-1``: ``get_act_layer("meta_acon_c", channel_dim=-1, context="causal")``.

    Examples:
        >>> act_layer = get_act_layer("acon_c", channel_dim=-1)
        >>> act = act_layer(inplace=True)
        >>> act(torch.randn(2, 7, 96)).shape
        torch.Size([2, 7, 96])
    """
    return functools.partial(get(activation), **kwargs)
