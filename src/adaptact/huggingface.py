"""Converted models through Hugging Face's own calls: config names, ``save_pretrained`` and
``from_pretrained``.

With adaptact imported, transformers' activation table (``ACT2FN``) knows every adaptact name,
plainly (``"meta_acon_c"``, where transformers has no activation of that name) and as
``"adaptact.<name>"``. So a config can name one (``hidden_act``, ``activation_function``,
``hidden_activation``) and ``from_config`` builds it. transformers calls ``ACT2FN[name]`` with no
arguments inside a layer's ``__init__``; the entry reads what it needs from the model being built
(the frames of the ``__init__`` calls around it, read-only):

* its channels and channel dim from the recorded conversion where every converted site had the
  same (``config.adaptact["layout"]``: Phi-3's activation takes half of its fused
  ``gate_up_proj``), or every site in layers of its layer's class (``"layouts"``: Qwen2-MoE's
  experts beside its shared expert), else from the producer the layer registered first
  (``gate_proj``, GPT-2's ``c_fc`` ``Conv1D``, BERT's ``dense``); a layer without one gets lazy
  channels;
* the context of a recorded conversion whose sites all had one (OPT's, converted with
  ``channels=``: "token"), else ``context="causal"`` for input-conditioned activations when the
  model is a decoder (as ``replace_activations`` decides it); the model hooked for padding and
  caches (``nn.tracking.track_decoding``);
* the options of a recorded conversion (below).

``replace_activations`` on a Hugging Face model records the conversion in its config
(``config.adaptact``: activation, options, policy, init, sites, their layout where they share
one, the original activation names, a format version) and renames the config's activation to
``"adaptact.<name>"`` when rebuilding the model from that config gives the converted model
exactly (the same state_dict entries and shapes, the same adaptact modules with the same
settings): then ``save_pretrained`` and ``AutoModel...from_pretrained`` (adaptact imported)
return the converted model with its weights.
Where it does not (a policy that picks some sites, activations outside the config, a rewritten
forward), the config's activation becomes ``"adaptact.unrebuildable"`` and loading fails with an
error naming adaptact and the way to load it (rebuild, convert, ``load_state_dict``) — never the
original activation with the trained weights dropped. T5's ``feed_forward_proj``, from which its
config derives ``dense_act_fn``, becomes ``"gated-adaptact.<name>"`` (or ``"adaptact.<name>"``).
Whether the config rebuilds the model is tried on the config as ``from_pretrained`` makes it (from
its saved dict). A config with no activation field to rename (Bloom's) cannot make ``ACT2FN``
raise: every Hugging Face model built from a config that records a conversion checks, after its
``post_init``, that it holds adaptact activations at the recorded sites (``_check_built``).

transformers is never imported here: names are added when transformers' ``activations`` module is
imported (now, if it already is).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.abc
import importlib.machinery
import inspect
import json
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .convert import decoder_flag, is_causal_model, token_options
from .sites import producer_layout
from .errors import described
from .nn import ActivationModule
from .nn.tracking import is_hf_model, track_decoding
from .registry import available, create, spec

__all__ = ["ACTIVATION_FIELDS", "FORMAT", "PREFIX", "RECORD", "UNREBUILDABLE", "config_name", "install",
           "modules_to_save", "record_conversion"]

PREFIX = "adaptact."
UNREBUILDABLE = PREFIX + "unrebuildable"
RECORD = "adaptact"  # the config attribute holding the conversion
FORMAT = 1
ACTIVATION_FIELDS = ("hidden_act", "activation_function", "hidden_activation", "activation",
                     "dense_act_fn", "projector_hidden_act")
# T5's family derives ``dense_act_fn`` from ``feed_forward_proj`` ("<act>" or "gated-<act>") when its
# config is made: that one is renamed too, the "gated-" kept
_DERIVING = "feed_forward_proj"
_GATED = "gated-"
_ACTIVATIONS_MODULE = "transformers.activations"
_MODELING_MODULE = "transformers.modeling_utils"
_rebuilding = threading.local()  # .trial: a conversion's trial rebuild is running (its own checks)


def _is_config(obj: object) -> bool:
    return any(c.__name__ in ("PreTrainedConfig", "PretrainedConfig") for c in type(obj).__mro__)


def config_name(name: str) -> str:
    """The name a converted config gives ``name``'s activation: ``"adaptact.<name>"``."""
    return PREFIX + spec(name).name


def _being_built() -> tuple[Any, list[nn.Module]]:
    """(the config, the modules whose ``__init__`` is running, innermost first) around an
    ``ACT2FN`` call."""
    config: Any = None
    owners: list[nn.Module] = []
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "__init__":
                owner = frame.f_locals.get("self")
                if isinstance(owner, nn.Module) and all(owner is not o for o in owners):
                    owners.append(owner)
                found = frame.f_locals.get("config")
                if _is_config(found) and (config is None or (getattr(config, RECORD, None) is None
                                                             and getattr(found, RECORD, None) is not None)):
                    config = found  # the innermost, or an outer one with a record (a VLM's, whose
                    # text and vision models are built from its sub-configs)
            frame = frame.f_back
    finally:
        del frame
    return config, owners


class _FromConfig:
    """What ``ACT2FN[name]`` calls for an adaptact name (transformers gives no arguments)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, **kwargs: Any) -> nn.Module:
        config, owners = _being_built()
        recorded = getattr(config, RECORD, None)
        if not (isinstance(recorded, dict) and recorded.get("activation") == self.name):
            recorded = {}  # no conversion to this activation recorded
        options = {**(recorded.get("options") or {}), **kwargs}
        s = spec(self.name)
        flag = decoder_flag(owners)
        causal = any(is_causal_model(o) for o in owners) if flag is None else flag
        layout = (_recorded_layout(recorded, type(owners[0]).__name__ if owners else None)
                  or (_first_producer(owners[0]) if owners else None))
        contexts, by_layer = recorded.get("contexts"), recorded.get("layer_contexts")
        if s.per_sample and "context" not in options and isinstance(contexts, list) and len(contexts) == 1:
            options["context"] = contexts[0]  # the conversion's (OPT's layers, given channels=: "token")
        if s.per_sample and "context" not in options and isinstance(by_layer, dict) and owners \
                and isinstance(by_layer.get(type(owners[0]).__name__), str):
            options["context"] = by_layer[type(owners[0]).__name__]  # a VLM's: its vision tower's "sample"
        if s.per_sample and "context" not in options and causal:  # a layer without a producer may
            options["context"] = "causal" if layout is not None else "token"  # see its tokens as rows
        if s.takes_channel_dim:
            channels, channel_dim = layout if layout is not None else (None, -1)
            options.setdefault("channel_dim", channel_dim)
            if channel_dim != 1:
                options = {**token_options(self.name), **options}
            module = create(self.name, channels=channels, **options)
        else:
            module = create(self.name, **options)
        if hasattr(module, "context"):
            for owner in owners:
                if is_hf_model(owner):
                    track_decoding(owner)
        return module

    def __repr__(self) -> str:
        return f"adaptact activation {self.name!r}"


def _recorded_layout(recorded: dict[str, Any], holder: str | None) -> tuple[int, int] | None:
    """(channels, channel dim) of the activation a layer of class ``holder`` builds, where the record
    holds one: every site's (a layer whose first producer is not its activation's: Phi-3's fused
    gate and up), else the sites' in layers of that class (Qwen2-MoE's experts, whose weights are
    no Linear layers, beside its shared expert's MLP of another width)."""
    by_holder = recorded.get("layouts")
    for layout in (recorded.get("layout"), by_holder.get(holder) if isinstance(by_holder, dict) else None):
        if isinstance(layout, list) and len(layout) == 2 and all(type(v) is int for v in layout):
            return layout[0], layout[1]
    return None


def _by_layer(model: nn.Module, sites: list[str], read: Callable[[nn.Module], Any]) -> dict[str, Any]:
    """``read`` of the activation at each of ``sites``, by the class name of the layer holding it,
    for each class whose sites give one value (None: none)."""
    values: dict[str, list[Any]] = {}
    for path in sites:
        holder = type(model.get_submodule(path.rpartition(".")[0])).__name__
        value = read(model.get_submodule(path))
        if value not in values.setdefault(holder, []):
            values[holder].append(value)
    return {k: v[0] for k, v in values.items() if len(v) == 1 and v[0] is not None}


def _sites_layouts(model: nn.Module, sites: list[str]) -> tuple[list[int] | None, dict[str, list[int]]]:
    """[channels, channel dim] of the converted activations at ``sites`` where all have the same, and
    by the class of the layer holding them, for each class whose sites have the same."""
    def layout(m: nn.Module) -> list[int] | None:
        channels, channel_dim = getattr(m, "channels", None), getattr(m, "channel_dim", None)
        return [channels, channel_dim] if isinstance(channels, int) and isinstance(channel_dim, int) else None

    layouts = [layout(model.get_submodule(path)) for path in sites]
    if any(v is None for v in layouts):
        return None, {}
    common = layouts[0] if layouts and all(v == layouts[0] for v in layouts) else None
    return common, _by_layer(model, sites, layout)


def _first_producer(holder: nn.Module) -> tuple[int, int] | None:
    """(channels, channel dim) of the first producer the layer under construction registered."""
    for child in holder.children():
        layout = producer_layout(child)
        if layout is not None:
            return layout
    return None


def _refusal(recorded: dict[str, Any], reason: str | None = None) -> RuntimeError:
    """The error of a load that cannot give back the converted model, with the way to load it."""
    original = recorded.get("original")
    build = f"with its original activation {original}" if original else "as it was before the conversion"
    return RuntimeError(
        f"this model was converted by adaptact.replace_activations to {recorded.get('activation')!r} in "
        f"a way its config cannot rebuild ({reason or recorded.get('reason', 'no record')}); load it as it "
        f"was made: build the model {build}, call "
        f"adaptact.replace_activations with the recorded options {recorded.get('options')} and policy "
        f"{recorded.get('policy')!r}, then model.load_state_dict(safetensors.torch.load_file(...)) of "
        f"the checkpoint's weights")


class _Unrebuildable:
    """``ACT2FN["adaptact.unrebuildable"]``: a converted model its config cannot rebuild."""

    def __call__(self, **kwargs: Any) -> nn.Module:
        config, _ = _being_built()
        raise _refusal(getattr(config, RECORD, None) or {})

    def __repr__(self) -> str:
        return "adaptact: a conversion its config cannot rebuild"


def _register(activations: types.ModuleType) -> None:
    """Add adaptact's names to transformers' ``ACT2CLS`` and ``ACT2FN`` (names it has are kept)."""
    tables = [t for t in (getattr(activations, "ACT2CLS", None), getattr(activations, "ACT2FN", None))
              if isinstance(t, dict)]
    for name in available():
        if spec(name).channel_factor != 1:
            continue  # a gated form changes the width: no elementwise hidden_act
        for table in tables:
            table.setdefault(name, (_FromConfig(name), {}))
            table[PREFIX + name] = (_FromConfig(name), {})
    for table in tables:
        table[UNREBUILDABLE] = (_Unrebuildable(), {})
    act2fn = getattr(activations, "ACT2FN", None)
    if isinstance(act2fn, dict) and not isinstance(act2fn, _Defines):
        with contextlib.suppress(TypeError):  # a table whose class cannot take a subclass: left as it is
            act2fn.__class__ = type("AdaptactACT2FN", (_Defines, type(act2fn)), {})


class _Defines:
    """What transformers' ``ACT2FN`` gets beside its own class: an ``"adaptact.<name>"`` it does not
    know is an activation defined with ``adaptact.define``. The conversion record names the module
    that defined it, which is imported (defining it) where it can be; otherwise the error says what
    to import, instead of a bare KeyError."""

    def __missing__(self, key: object) -> Any:
        if not (isinstance(key, str) and key.startswith(PREFIX)):
            raise KeyError(key)
        config, _ = _being_built()
        recorded = getattr(config, RECORD, None)
        name = key[len(PREFIX):]
        origin = recorded.get("defined_in") if isinstance(recorded, dict) and \
            recorded.get("activation") == name else None
        where = f"module {origin!r}" if isinstance(origin, str) else "the script that converted the model"
        why = "which has not defined it in this process"
        if isinstance(origin, str):
            try:
                importlib.import_module(origin)  # its define() adds the name to this table
            except Exception as err:  # noqa: BLE001 - the user's module: any failure, in one line
                why = f"which cannot be imported here ({described(err)})"
            if key in self:  # type: ignore[operator]
                return dict.__getitem__(self, key)  # type: ignore[index]
        raise RuntimeError(f"this model's activation {name!r} was defined with adaptact.define in {where}, "
                           f"{why}: make its definition run before loading")


def _check_built(model: nn.Module) -> None:
    """A model built from a config that records a conversion holds adaptact activations at the
    recorded sites, or its building fails: a config that cannot name the activation (Bloom's is a
    class of its own, T5's is derived from another field) would otherwise build the original
    activation, and loading would drop the trained weights with a log line at most."""
    recorded = getattr(getattr(model, "config", None), RECORD, None)
    if not isinstance(recorded, dict) or getattr(_rebuilding, "trial", False):
        return
    modules = dict(model.named_modules())
    original = sorted(p for p in recorded.get("sites") or () if p in modules
                      and not isinstance(modules[p], ActivationModule))
    if original:  # (a model inside the converted one finds none of its paths: nothing to check)
        raise _refusal(recorded, recorded.get("reason") or f"{original[0]} would be "
                                                           f"{type(modules[original[0]]).__name__}")


def _record_again(model: nn.Module) -> None:
    """Before ``save_pretrained``: each conversion in ``model`` its config could not rebuild is
    recorded again. One whose activations took their channels from their first input (torch.fx
    could not see their producers: OPT's, Mixtral's experts) becomes rebuildable once a forward has
    made them: the record then holds their layout."""
    for m in model.modules():
        config = getattr(m, "config", None)
        recorded = getattr(config, RECORD, None)
        if not (isinstance(recorded, dict) and recorded.get("reason")
                and isinstance(recorded.get("activation"), str) and is_hf_model(m)):
            continue
        if any(getattr(a, "initialized", True) is False for a in m.modules()):
            continue  # still lazy: the reason stands
        # the activation no longer defined here (ValueError), a recorded site gone from the model
        # (AttributeError): the record stands, and loading refuses as it says
        with contextlib.suppress(ValueError, AttributeError):
            record_conversion(m, recorded["activation"], options=recorded.get("options") or {},
                              policy=recorded.get("policy"), init=str(recorded.get("init")),
                              sites=list(recorded.get("sites") or ()), contexts=recorded.get("contexts"))


def _guard(modeling: types.ModuleType) -> None:
    """Make every Hugging Face model check, when built, that it holds the converted activations its
    config records (``_check_built``, after ``post_init``, which every model's ``__init__`` calls),
    and record its conversion again before ``save_pretrained`` (``_record_again``)."""
    base = getattr(modeling, "PreTrainedModel", None)
    post_init = getattr(base, "post_init", None)
    save_pretrained = getattr(base, "save_pretrained", None)
    if base is None or post_init is None or getattr(post_init, "_adaptact", False):
        return

    @functools.wraps(post_init)
    def checked(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = post_init(self, *args, **kwargs)
        _check_built(self)
        return out

    checked._adaptact = True  # type: ignore[attr-defined]
    base.post_init = checked
    if save_pretrained is not None:
        @functools.wraps(save_pretrained)
        def saved(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            _record_again(self)
            return save_pretrained(self, *args, **kwargs)

        base.save_pretrained = saved


_ON_IMPORT = {_ACTIVATIONS_MODULE: _register, _MODELING_MODULE: _guard}


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers the names once ``transformers.activations`` has been imported, and the check of
    rebuilt models once ``transformers.modeling_utils`` has (no import of either here)."""

    def __init__(self) -> None:
        self._loaders: dict[str, importlib.abc.Loader] = {}  # by module (one imports the other)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _ON_IMPORT:
            return None
        found = importlib.machinery.PathFinder.find_spec(fullname, path)
        if found is None or found.loader is None:
            return None
        self._loaders[fullname] = found.loader
        found.loader = self
        return found

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loaders[spec.name].create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loaders[module.__name__].exec_module(module)
        _ON_IMPORT[module.__name__](module)


def install() -> None:
    """Make adaptact's names known to transformers and its models check what they rebuild
    (``import adaptact`` calls this): now for the modules of transformers already imported, on
    import for the others."""
    for name, then in _ON_IMPORT.items():
        loaded = sys.modules.get(name)
        if loaded is not None:
            then(loaded)
    if any(name not in sys.modules for name in _ON_IMPORT) and \
            not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def modules_to_save(model: nn.Module) -> list[str]:
    """The names to give PEFT's ``LoraConfig(modules_to_save=...)`` so that LoRA trains the
    parameters of ``model``'s adaptact activations too (PEFT freezes every module it is not told
    about): the attribute name of each activation with parameters ("act_fn", "act"), once each.

    Example::

        config = peft.LoraConfig(target_modules=["q_proj", "v_proj"],
                                 modules_to_save=adaptact.huggingface.modules_to_save(model))
    """
    names = {path.rpartition(".")[2] for path, m in model.named_modules()
             if path and isinstance(m, ActivationModule) and any(True for _ in m.parameters())}
    return sorted(names)


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _difference(model: nn.Module, rebuilt: nn.Module) -> str | None:
    """Why ``rebuilt`` is not ``model`` (None: the same entries, shapes and adaptact modules)."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if ours != theirs:
        missing = sorted(set(ours) - set(theirs))[:3]
        extra = sorted(set(theirs) - set(ours))[:3]
        shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])[:3]
        return (f"the config builds other weights (missing {missing}, unexpected {extra}, other shapes "
                f"{shapes})")
    built = dict(rebuilt.named_modules())
    for path, m in model.named_modules():
        other = built.get(path)
        if not isinstance(m, ActivationModule) and not isinstance(other, ActivationModule):
            continue
        if other is None:
            return f"the config builds no module at {path}"
        if type(m) is not type(other) or m.extra_repr() != other.extra_repr():
            return f"{path or 'the model'} would be {_brief(other)} instead of {_brief(m)}"
    return None


def _brief(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})"


def record_conversion(model: nn.Module, name: object, *, options: dict[str, Any], policy: object, init: str,
                      sites: list[str], contexts: list[str] | None = None) -> str | None:
    """Record a conversion of ``model`` (a Hugging Face model) in its config and name its activation
    so that ``from_pretrained`` rebuilds it, or refuses loudly (module docstring). Returns why the
    config cannot rebuild the model, or None."""
    config = getattr(model, "config", None)
    if not _is_config(config):
        return None
    fields = _fields(config)
    before = getattr(config, RECORD, None)
    original = before["original"] if isinstance(before, dict) and "original" in before \
        else {f: functools.reduce(getattr, f.split("."), config) for f in fields}
    entry: dict[str, Any] = {
        "format": FORMAT, "activation": spec(name).name if isinstance(name, str) else None,
        "options": options, "policy": policy if isinstance(policy, str) else repr(policy), "init": init,
        "sites": sites, "contexts": contexts or [],
        "original": original}
    layout, layouts = _sites_layouts(model, sites)
    if layout is not None:
        entry["layout"] = layout
    elif layouts:
        entry["layouts"] = layouts
    if len(entry["contexts"]) > 1:  # each layer class's, where its sites have one
        entry["layer_contexts"] = _by_layer(model, sites, lambda m: getattr(m, "context", None))
    definition = spec(name).definition if isinstance(name, str) else None
    if definition is not None:
        entry["defined_in"] = definition.origin  # None: in a script (``__main__``)
    reason = _why_not_rebuilt(model, config, name, options, policy, fields, entry)
    _name(config, fields, UNREBUILDABLE if reason else config_name(str(name)))
    if reason:
        entry["reason"] = reason
    setattr(config, RECORD, entry)
    return reason


def _fields(config: Any, depth: int = 2) -> list[str]:
    """The fields of ``config`` that name its activation, and those of its sub-configs (a VLM's
    ``text_config`` and ``vision_config``) as dotted paths."""
    fields = [f for f in ACTIVATION_FIELDS if isinstance(getattr(config, f, None), str)]
    if "dense_act_fn" in fields and isinstance(getattr(config, _DERIVING, None), str):
        fields.append(_DERIVING)
    if depth:
        for key, sub in vars(config).items():
            if _is_config(sub):
                fields += [f"{key}.{f}" for f in _fields(sub, depth - 1)]
    return fields


def _name(config: Any, fields: list[str], value: str) -> None:
    """Set the activation ``fields`` (dotted paths) of ``config`` to ``value`` (T5's
    ``feed_forward_proj`` keeps its "gated-")."""
    for path in fields:
        *parents, f = path.split(".")
        owner = functools.reduce(getattr, parents, config)
        gated = f == _DERIVING and str(getattr(owner, f)).startswith(_GATED)
        setattr(owner, f, _GATED + value if gated else value)


def _why_not_rebuilt(model: nn.Module, config: Any, name: object, options: dict[str, Any], policy: object,
                     fields: list[str], entry: dict[str, Any]) -> str | None:
    if not isinstance(name, str):
        return "the activation is a class or callable, not an adaptact name"
    if not _jsonable(options):
        return f"options {options!r} do not fit in a JSON config"
    if not fields:
        return f"{type(config).__name__} names no activation ({', '.join(ACTIVATION_FIELDS)})"
    if spec(name).channel_factor != 1:
        return f"{name!r} changes the width"
    lazy = [p for p, m in model.named_modules() if getattr(m, "initialized", True) is False]
    if lazy:
        return (f"{lazy[0]} takes its channels from its first input, which the config cannot say before "
                f"a forward has made them (save_pretrained after one records them); "
                f"replace_activations(..., channels=) gives them")
    trial = copy.deepcopy(config)
    _name(trial, fields, config_name(name))
    setattr(trial, RECORD, entry)
    try:  # as from_pretrained makes it: from the saved dict (fields derived from others derived again)
        trial = type(config).from_dict(trial.to_dict())
    except Exception as err:  # noqa: BLE001 - a config that cannot be saved and loaded cannot rebuild
        return f"{type(config).__name__} does not load back from its dict: {described(err)}"
    _rebuilding.trial = True  # _difference says how it differs
    try:
        with torch.device("meta"):
            rebuilt = type(model)(trial)
    except Exception as err:  # noqa: BLE001 - any failure to rebuild is a reason to refuse later loads
        return f"rebuilding {type(model).__name__} from its config fails: {type(err).__name__}: {err}"
    finally:
        _rebuilding.trial = False
    return _difference(model, rebuilt)
