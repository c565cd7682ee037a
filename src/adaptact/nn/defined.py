"""The module of an activation defined with ``adaptact.define``: its record (``Definition``) and the
class made from it (``defined_class``).

A defined activation is a formula ``fn(x, **params)`` in torch operations and its parameters, each
with an initial value: one value per channel ((C,), on ``channel_dim``) or one value shared by the
layer (0-D). Its class has what the built-ins have: ``channel_dim`` and lazy ``channels`` where it
has per-channel parameters, ``inplace``, ``device``/``dtype``, ``reset_parameters``, every backend
of ``ops.defined`` (the reference, a memory-lean Function keeping x alone, the compiled CPU path),
what ``init="match"`` fits and what tensor parallelism shards.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import described
from ..ops.defined import DefinedOp
from .base import ActivationModule, check_input
from .channels import ChannelModule

__all__ = ["DefinedActivation", "DefinedChannelActivation", "Definition", "defined_class"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Definition:
    """One defined activation.

    Attributes:
        name: its registry name.
        fn: ``fn(x, **params) -> y``, torch operations on x and the parameters (broadcast against
            x: per-channel ones on its channel dim, shared ones 0-D).
        per_channel: parameter name -> initial value, one value per channel.
        scalars: parameter name -> initial value, one value for the layer.
        paper: where the formula comes from (the registry's "paper").
        origin: the module ``fn`` was defined in: a spawned worker imports it to find the name
            (None where it cannot be imported, as for ``__main__``).
    """

    name: str
    fn: Callable[..., Tensor]
    per_channel: dict[str, float]
    scalars: dict[str, float]
    paper: str
    origin: str | None

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter, per-channel ones first: the order the backends take them in."""
        return (*self.per_channel, *self.scalars)

    @property
    def initial(self) -> dict[str, float]:
        return {**self.per_channel, **self.scalars}

    def fingerprint(self) -> str:
        """A hash of the formula's source (its qualified name where the source cannot be read) and
        the initial values: results of a changed definition are never taken for this one's."""
        try:
            source = inspect.getsource(self.fn)
        except (OSError, TypeError):
            source = f"{getattr(self.fn, '__module__', '')}.{getattr(self.fn, '__qualname__', repr(self.fn))}"
        text = repr((self.name, source, sorted(self.per_channel.items()), sorted(self.scalars.items())))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def initial_value(what: str, name: str, value: Any) -> float:
    """``value`` as the initial value of the parameter ``name`` (of ``what``, for the error): a
    finite int or float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: the initial value of {name!r} must be a finite number, got {value!r}")
    return float(value)


_CLASSES: dict[tuple[str, str], type[nn.Module]] = {}
"""Every class ``defined_class`` made in this process, by name and fingerprint: what a pickled
(or deep-copied) module is rebuilt as."""


def _rebuilt(name: str, fingerprint: str, origin: str | None) -> nn.Module:
    """An empty module of the class defined as ``name`` with ``fingerprint`` (unpickling fills it),
    importing ``origin`` first when this process has not defined it; UnpicklingError when no such
    definition is made here."""
    cls = _CLASSES.get((name, fingerprint))
    failed = None
    if cls is None and origin is not None:
        try:
            importlib.import_module(origin)
        except Exception as err:  # noqa: BLE001 - the user's module: any failure, in one line
            failed = described(err)
        cls = _CLASSES.get((name, fingerprint))
    if cls is None:
        where = f"module {origin!r}" if origin else "the script that saved it"
        other = any(known == name for known, _ in _CLASSES)
        why = (f"cannot be imported here ({failed})" if failed
               else "is defined here with another formula or other initial values" if other
               else "is not defined in this process: run its definition before loading")
        raise pickle.UnpicklingError(f"a pickled {name!r} activation (adaptact.define in {where}) {why}")
    return cls.__new__(cls)


class _Defined:
    """What the two defined module classes share: the parameters of the definition, made, reset,
    fitted, run and pickled."""

    definition: ClassVar[Definition]
    fingerprint: ClassVar[str]
    op: ClassVar[DefinedOp]
    per_channel_parameters: ClassVar[tuple[str, ...]] = ()
    initial: dict[str, float]

    def _set_initial(self, given: dict[str, Any]) -> None:
        names = self.definition.names
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"its parameters are {', '.join(names) or 'none'}")
        self.initial = {**self.definition.initial,
                        **{k: initial_value(type(self).__name__, k, v) for k, v in given.items()}}

    def _make(self, channels: int | None, device: Any, dtype: Any) -> None:
        module: nn.Module = self  # type: ignore[assignment]
        for name in self.definition.per_channel:
            value = torch.empty(channels or 1, device=device, dtype=dtype)
            module.register_parameter(name, nn.Parameter(value))
        for name in self.definition.scalars:
            module.register_parameter(name, nn.Parameter(torch.empty((), device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        module: nn.Module = self  # type: ignore[assignment]
        with torch.no_grad():
            for name, p in module.named_parameters(recurse=False):
                p.fill_(self.initial[name])

    def _parameters_in_order(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, name) for name in self.definition.names)

    def fit_parameters(self) -> list[Tensor]:
        """What ``init="match"`` fits: every parameter."""
        return list(self._parameters_in_order())

    def fit_starts(self, negative_slope: float) -> list[list[list[float]]]:
        """``init="match"``'s one start: the initial values."""
        return [[[self.initial[name]] for name in self.definition.names]]

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        """Pickled (and deep-copied) by the definition's name and fingerprint: the class is made by
        ``define`` and cannot be imported by its name, so loading finds it among the definitions
        made in the loading process, importing the module that defined it where that is known."""
        definition = self.definition
        module: nn.Module = self  # type: ignore[assignment]
        return _rebuilt, (definition.name, self.fingerprint, definition.origin), module.__getstate__()

    def _initial_repr(self) -> str:
        changed = {k: v for k, v in self.initial.items() if v != self.definition.initial[k]}
        return "".join(f", {k}={v:g}" for k, v in changed.items())


class DefinedActivation(_Defined, ActivationModule):
    """A defined activation whose parameters are all shared by the layer: any input shape.

    Built by ``adaptact.define`` (a class per definition); see there for the arguments."""

    def __init__(self, channels: int | None = None, inplace: bool = False, backend: str = "auto", *,
                 device: Any = None, dtype: Any = None, **initial: float) -> None:
        super().__init__()
        self.backend = backend
        self.inplace = inplace
        self._set_initial(initial)
        self._make(None, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, None)
        return self._run(self.op, x, *self._parameters_in_order(), triton=False)

    def extra_repr(self) -> str:
        return self._initial_repr().removeprefix(", ") + self._backend_repr()


class DefinedChannelActivation(_Defined, ChannelModule):
    """A defined activation with per-channel parameters: ``channels`` (None: from the first input)
    on ``channel_dim``.

    Built by ``adaptact.define`` (a class per definition); see there for the arguments."""

    def __init__(self, channels: int | None = None, inplace: bool = False, backend: str = "auto", *,
                 channel_dim: int = 1, device: Any = None, dtype: Any = None, **initial: float) -> None:
        super().__init__()
        self.backend = backend
        self.inplace = inplace
        self._set_initial(initial)
        self._init_channels(channels, channel_dim, device, dtype)

    def _build(self, channels: int, device: Any, dtype: Any) -> None:
        self._make(channels, device, dtype)

    def _forward(self, x: Tensor) -> Tensor:
        return self._run(self.op, x, *self._parameters_in_order(), triton=False)

    def extra_repr(self) -> str:
        return self._channels_repr() + self._initial_repr() + self._backend_repr()


def _class_name(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Defined"


def defined_class(definition: Definition) -> type[ActivationModule]:
    """The module class of ``definition``: ``DefinedChannelActivation`` where it has per-channel
    parameters, else ``DefinedActivation``, with the definition's name, formula and backends."""
    cls = _made(definition)
    _CLASSES[definition.name, cls.fingerprint] = cls  # type: ignore[attr-defined]
    return cls


@functools.cache
def reserved_names() -> frozenset[str]:
    """The names a defined activation's parameters cannot take: what its modules already hold by
    that name (nn.Module's and adaptact's attributes and methods, on the class or set when built)
    and their constructors' keywords. A parameter registered under one would shadow it, or fail
    when the module is made."""
    names: set[str] = set()
    for per_channel, scalars in (({"p": 1.0}, {}), ({}, {"p": 1.0})):
        probe = Definition(name="reserved", fn=torch.mul, per_channel=per_channel, scalars=scalars, paper="",
                           origin=None)
        cls = _made(probe)
        names |= set(dir(cls(channels=2))) | set(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"p", "self", "initial"})


def _made(definition: Definition) -> type[ActivationModule]:
    base: type = DefinedChannelActivation if definition.per_channel else DefinedActivation
    name = _class_name(definition.name)
    per_channel = tuple(definition.per_channel)
    fingerprint = definition.fingerprint()
    namespace = {
        "definition": definition,
        "fingerprint": fingerprint,
        "op": DefinedOp(name, definition.fn, definition.names),
        "per_channel_parameters": per_channel,
        "__doc__": f"``{definition.name}``, defined with ``adaptact.define``: {definition.paper}.\n\n"
                   f"Parameters: {', '.join(f'{k}={v:g}' for k, v in definition.initial.items()) or 'none'}"
                   + (f" ({', '.join(per_channel)} per channel)" if per_channel else "") + ".",
        "__module__": definition.origin or __name__,
    }
    if per_channel:
        namespace["_channels_entry"] = (per_channel[0], -1)
    return type(name, (base,), namespace)
