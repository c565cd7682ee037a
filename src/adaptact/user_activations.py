"""``adaptact.define``: a researcher's own activation, from its formula, with everything the built-ins get.

    >>> import torch, adaptact
    >>> spec = adaptact.define("scaled_swish", lambda x, beta, gain: gain * x * torch.sigmoid(beta * x),
    ...                        per_channel={"beta": 1.0}, scalars={"gain": 1.0})
    >>> act = adaptact.create("scaled_swish", channels=16, channel_dim=-1)
    >>> act(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])

The name is then a registry entry like any other: ``create``, ``get_act_layer``,
``replace_activations`` (``init="match"`` fits its parameters), tensor parallelism (its per-channel
parameters are sharded with the channels), the analysis, transformers' ``ACT2FN`` (a converted
model's ``save_pretrained``/``from_pretrained``, once the defining module is imported), and
``adaptact compare --activations module:name`` from the command line (the module defines it when
imported), and pickling (``torch.save(model)``, ``copy.deepcopy``: ``nn.defined`` finds the
definition again by name and fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from . import huggingface
from .nn.defined import Definition, defined_class, initial_value, reserved_names
from .registry import ActivationSpec, register

__all__ = ["define"]

_PROBE = (2, 3, 4)  # (N, C, S): the probe call that checks a formula at definition time


def _parameters(what: str, given: Mapping[str, float] | None) -> dict[str, float]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"{what} must map parameter names to initial values, got {type(given).__name__}")
    out = {}
    for name, value in given.items():
        if not isinstance(name, str) or not name.isidentifier() or name == "x" or name.startswith("_"):
            raise ValueError(f"{what}: parameter names must be Python identifiers other than 'x', not "
                             f"starting with '_', got {name!r}")
        if name in reserved_names():
            raise ValueError(f"{what}: {name!r} is a name the activation's module already has (an attribute, "
                             f"method or argument of nn.Module or adaptact's modules): choose another")
        out[name] = initial_value(what, name, value)
    return out


def _origin(fn: Callable) -> str | None:
    """The importable module ``fn`` comes from (a spawned worker imports it), None for ``__main__``."""
    module = getattr(fn, "__module__", None)
    return None if module in (None, "__main__", "__mp_main__") else module


def _probe(definition: Definition, cls: type) -> None:
    """Call the formula once on a small input through its module ``cls``: it must take the
    parameters by name and return a floating-point tensor of x's shape that depends differentiably
    on x."""
    with torch.inference_mode(False), torch.enable_grad():  # also where define runs under no_grad
        module = cls(_PROBE[1], backend="reference")
        x = torch.randn(_PROBE, generator=torch.Generator().manual_seed(0), requires_grad=True)
        try:
            y = module(x)
        except Exception as err:  # noqa: BLE001  (the user's formula: any failure, in one line)
            raise ValueError(f"define({definition.name!r}): fn(x, {', '.join(definition.names)}) failed on "
                             f"a {tuple(x.shape)} input ({type(err).__name__}: {err})") from None
    if not isinstance(y, Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"define({definition.name!r}): fn must return a tensor of x's shape (elementwise "
                         f"in x), got {got} for {tuple(x.shape)}")
    if not y.requires_grad:
        raise ValueError(f"define({definition.name!r}): fn's result does not depend differentiably on x "
                         "(write it in torch operations on x)")


def define(name: str, fn: Callable[..., Tensor], *, per_channel: Mapping[str, float] | None = None,
           scalars: Mapping[str, float] | None = None, paper: str = "defined with adaptact.define",
           family: str | None = None) -> ActivationSpec:
    """Make ``name`` a registry entry computing ``fn(x, **params)``.

    ``fn`` is written in torch operations and is elementwise in x: y has x's shape. Its parameters
    arrive as keyword tensors that broadcast against x: a per-channel one holds one value per
    channel (on the module's ``channel_dim``), a scalar one is 0-D.

    The entry's module takes ``channels`` (None: from the first input) and ``channel_dim`` where
    it has per-channel parameters, ``inplace``, ``backend``, ``device``, ``dtype`` and initial
    values by parameter name (``create(name, channels=64, beta=2.0)``); ``reset_parameters``
    restores them. Its backends: "reference" (``fn`` itself), "autograd" (a memory-lean Function
    that keeps x alone and recomputes ``fn`` in backward, differentiated by ``torch.func.vjp``),
    "compiled" (that Function compiled by Inductor, the CPU default), under "auto" as the built-ins.
    It has no Triton kernel: "triton" is refused and "auto" runs the autograd Function on a GPU.

    Args:
        name: the registry name (lower case, underscores); not a built-in's. Defining a name again
            replaces its earlier definition.
        fn: ``fn(x, **params) -> Tensor``.
        per_channel: parameter name -> initial value, one value per channel. A name is an
            identifier other than ``x``, not private (``_``) and not one the module has already
            (``channels``, ``training``, ``forward``, ...: ``nn.defined.reserved_names()``).
        scalars: parameter name -> initial value, one value for the layer (names as above).
        paper: where the formula comes from, for the catalogue and the reports.
        family: "classic", "learnable" or "adaptive"; by default "learnable" where it has
            parameters, "classic" where it has none.

    Returns:
        The entry's ``ActivationSpec`` (``spec.definition`` is the record).

    Raises:
        ValueError: a bad name or parameter, or a formula that fails on a probe input (called once
            at definition time) or does not return a differentiable tensor of x's shape.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"define: name must be a non-empty str, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if not key.isidentifier():
        raise ValueError(f"define: name must be letters, digits and underscores, got {name!r}")
    if not callable(fn):
        raise TypeError(f"define({key!r}): fn must be callable, got {type(fn).__name__}")
    channel_params, shared = _parameters("per_channel", per_channel), _parameters("scalars", scalars)
    if both := sorted(set(channel_params) & set(shared)):
        raise ValueError(f"define({key!r}): {', '.join(both)} given both per channel and as scalars")
    learnable = bool(channel_params or shared)
    family = family or ("learnable" if learnable else "classic")
    if family not in ("classic", "learnable", "adaptive"):
        raise ValueError(f"define({key!r}): family must be 'classic', 'learnable' or 'adaptive', "
                         f"got {family!r}")
    definition = Definition(name=key, fn=fn, per_channel=channel_params, scalars=shared, paper=str(paper),
                            origin=_origin(fn))
    cls = defined_class(definition)
    _probe(definition, cls)
    entry = ActivationSpec(name=key, factory=cls, family=family, paper=str(paper),  # type: ignore[arg-type]
                           learnable=learnable, per_channel=bool(channel_params), definition=definition)
    register(entry)
    huggingface.install()  # its name in transformers' ACT2FN, where transformers is loaded already
    return entry
