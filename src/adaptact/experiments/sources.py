"""Where a comparison's network and data come from: a built-in name, an importable
``module:attribute`` spec (as uvicorn and gunicorn take), or a Python object.

* A model is a built-in name (``adaptact.models.MODELS``) or a factory
  ``activation_name -> nn.Module`` (a callable, or the spec of one).
* Data are a built-in name (``adaptact.datasets.builtin.builtin``), a tuple of tensors
  ``(train_x, train_y, test_x, test_y)`` (labels are class indices), or a callable returning one
  (or the spec of one).

Each is described by a ``Source``: a label for reports, a fingerprint that enters the run's key
(so results of a changed model or changed data are never reused) and a reference a worker
process can resolve. A factory's fingerprint is its qualified name and a hash of its module's
source, or its ``version`` attribute where the user sets one; data's is a hash of the tensors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable
from typing import Any
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InfrastructureError, UserError, described
from ..files import atomic_write
from ..datasets import builtin
from ..datasets.shakespeare import TextData
from ..models.catalogue import MODELS, build

__all__ = ["Source", "build_model", "data_source", "load_data", "model_source"]


@dataclass(frozen=True)
class Source:
    label: str  # for reports: the name, or module:attribute
    fingerprint: str  # enters the run's key
    ref: object = None  # what a worker resolves: None (built-in), a spec string, a callable or a file


def _import(spec: str, what: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"{what} {spec!r}: expected a built-in name or module:attribute")
    try:
        obj = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{what} {spec!r} cannot be imported ({type(err).__name__}: {err})") from None
    if not callable(obj):
        raise UserError(f"{what} {spec!r} is not callable")
    return obj


def _code_fingerprint(fn: Callable) -> str:
    """``version`` if the callable has one, else a hash of its module's source (its own if the
    module's cannot be read)."""
    version = getattr(fn, "version", None)
    if version is not None:
        return f"v{version}"
    try:
        source = inspect.getsource(inspect.getmodule(fn) or fn)
    except (OSError, TypeError):
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            source = repr(fn)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', None) or '__main__'}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def model_source(model: str | Callable) -> Source:
    """The Source of a built-in model name, a ``module:factory`` spec or a factory."""
    if isinstance(model, str) and model in MODELS:
        return Source(model, model)
    if isinstance(model, str):
        factory = _import(model, "model")
        return Source(model, f"{model}@{_code_fingerprint(factory)}", model)
    if callable(model):
        return Source(_qualified(model), f"{_qualified(model)}@{_code_fingerprint(model)}", model)
    raise UserError(f"model must be a built-in name ({', '.join(MODELS)}), a module:attribute spec or a "
                    f"callable activation_name -> nn.Module, got {type(model).__name__}")


def build_model(source: Source, activation: str, sample_shape: tuple[int, ...],
                num_classes: int, policy: str = "all") -> nn.Module:
    """The model of ``source`` with ``activation`` everywhere (policy "all"), or built with ReLU
    and then given ``activation`` where ``policy`` puts it (``replace_activations``)."""
    if policy != "all":
        from ..convert import replace_activations

        model = build_model(source, "relu", sample_shape, num_classes)
        replace_activations(model, activation, policy=policy)
        return model
    if source.ref is None:
        return build(source.label, activation, sample_shape, num_classes)
    factory: Any = _import(source.ref, "model") if isinstance(source.ref, str) else source.ref
    model = factory(activation)
    if not isinstance(model, nn.Module):
        raise UserError(f"model {source.label}: the factory returned {type(model).__name__}, "
                        "not an nn.Module")
    return model


def _as_dataset(label: str, value) -> builtin.Dataset:
    if isinstance(value, builtin.Dataset):
        return value
    tensors = isinstance(value, tuple | list) and all(isinstance(t, torch.Tensor) for t in value)
    if not (tensors and len(value) == 4):
        raise UserError(f"data {label}: expected (train_x, train_y, test_x, test_y) tensors, got "
                        f"{type(value).__name__}")
    train_x, train_y, test_x, test_y = value
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) == 0 or len(x) != len(y) or y.ndim != 1:
            raise UserError(f"data {label}: {split} has {len(x)} samples and labels of shape "
                            f"{tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise UserError(f"data {label}: {split} labels must be class indices (integers), got {y.dtype}")
        if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise UserError(f"data {label}: {split} inputs must be finite floating-point tensors")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"data {label}: train samples {tuple(train_x.shape[1:])} and test samples "
                        f"{tuple(test_x.shape[1:])} differ")
    if int(min(train_y.min(), test_y.min())) < 0:
        raise UserError(f"data {label}: labels must be >= 0")
    classes = int(max(train_y.max(), test_y.max())) + 1
    return builtin.Dataset(label, train_x.float(), train_y.long(), test_x.float(), test_y.long(), classes)


def _loaded(label: str, loader: Callable[[], Any]) -> Any:
    """What the user's ``loader()`` returns; its failure as one line (UserError, from the error)."""
    try:
        return loader()
    except Exception as err:  # the user's code: any failure, named in one line
        raise UserError(f"data {label}: the loader failed ({described(err)}); it is called with no "
                        f"arguments and returns (train_x, train_y, test_x, test_y)") from err


def _tensor_fingerprint(ds: builtin.Dataset) -> str:
    h = hashlib.sha256()
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


def data_source(data, data_dir: str | None = None, cache_dir: str | Path | None = None,
                scale: str = "standard") -> tuple[Source, builtin.Dataset | TextData]:
    """The Source of ``data`` and the data set itself (checked: shapes, labels, finite inputs).
    Tensors given from Python stay in memory, or, with ``cache_dir`` (for worker processes), are
    saved there once as a ``.pt`` file the workers load. ``scale`` applies to built-in data;
    the user's are used as given."""
    if builtin.builtin(data):
        ds = builtin.load(data, data_dir, scale)
        # workers read the files themselves; a generated set they take from this sweep's making
        shipped = (_shipped(ds, _tensor_fingerprint(ds), cache_dir)
                   if cache_dir is not None and builtin.generated(data) and isinstance(ds, builtin.Dataset)
                   else None)
        return Source(data, builtin.fingerprint(data), shipped), ds
    if isinstance(data, str):
        loader = _import(data, "data")
        with builtin.rng_preserved():  # a user's loader may seed random, numpy or torch
            ds = _as_dataset(data, _loaded(data, loader))
        return Source(data, f"{data}@{_tensor_fingerprint(ds)}", data), ds
    label = _qualified(data) if callable(data) else "tensors"
    with builtin.rng_preserved():
        ds = _as_dataset(label, _loaded(label, data) if callable(data) else data)
    digest = _tensor_fingerprint(ds)
    fingerprint = f"{label}@{digest}"
    ref: object = data if callable(data) else ds
    if not callable(data) and cache_dir is not None:
        ref = _shipped(ds, digest, cache_dir)
    return Source(label, fingerprint, ref), ds


def _shipped(ds: builtin.Dataset, digest: str, cache_dir: str | Path) -> Path:
    """``ds`` saved in ``cache_dir`` for worker processes, named by its tensors' fingerprint (a file
    of that name holds those tensors; written whole or not at all), so each sweep makes a data
    set once, however many workers and runs use it."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".adaptact-data-{digest}.pt"
    try:
        if path.exists():
            _verified(path)
            return path
    except InfrastructureError:
        pass  # changed since it was written: made again below
    atomic_write(path, lambda tmp: torch.save(dataclasses.asdict(ds), tmp))
    return path


def _verified(path: Path) -> builtin.Dataset:
    """The data set ``_shipped`` saved at ``path``, checked against the fingerprint in its name (a
    file replaced or damaged since is refused, never trained on)."""
    try:
        ds = builtin.Dataset(**torch.load(path, weights_only=True))
    except Exception as err:  # noqa: BLE001 - unpickling fails in many ways; none may become a result
        raise InfrastructureError(f"the data file {path} cannot be read ({type(err).__name__}: {err}); "
                                  f"the run was not stored: run the command again") from None
    if f".adaptact-data-{_tensor_fingerprint(ds)}.pt" != path.name:
        raise InfrastructureError(f"the data file {path} does not hold the data its name says (changed "
                                  f"since it was written); the run was not stored: run the command again")
    return ds


@functools.lru_cache(maxsize=4)
def _load_ref(ref, label: str) -> builtin.Dataset:
    if isinstance(ref, builtin.Dataset):
        return ref
    if isinstance(ref, Path):  # saved by ``_shipped``: checked against its name
        return _verified(ref)
    loader = _import(ref, "data") if isinstance(ref, str) else ref
    with builtin.rng_preserved():
        return _as_dataset(label, loader())


def load_data(source: Source, data_dir: str | None = None,
              scale: str = "standard") -> builtin.Dataset | TextData:
    """The data set of ``source`` (cached per process); ``scale`` as ``datasets.load``, for
    built-in data."""
    if source.ref is None:
        return builtin.load(source.label, data_dir, scale)
    return _load_ref(source.ref, source.label)
