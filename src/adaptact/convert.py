"""Put any activation into an existing network: ``replace_activations(model, "acon_c")``.

How it works. Every module that holds activations (as children, or as functional calls such
as ``F.relu`` in its ``forward``) is traced on its own with torch.fx, its children kept as
leaves. Each call site of an activation is then followed back through pass-through ops
(pooling, dropout, residual adds, ...) to the nearest producer (Conv, Linear, BatchNorm,
GroupNorm, LayerNorm, or the last producer inside a child block), which gives ``channels``.

* A child module whose every call site is replaced with one channel count is swapped in
  place (``setattr``): the module tree and the other parameters keep their names.
* A child called at sites that need different modules (torchvision's Bottleneck calls one
  ``self.relu`` after 64-, 64- and 256-channel tensors; a policy may pick only some sites)
  and functional calls are rewritten in the traced graph, each site getting its own module
  named ``<child>_site<k>`` or ``act_site<k>`` (k: its place among the holder's activation
  calls); the holder is replaced by that ``torch.fx.GraphModule``
  in its parent. The top-level module itself cannot be swapped this way: wrap it
  (``nn.Sequential(model)``) if its own ``forward`` needs rewriting.
* A holder that fx cannot trace falls back to registration order: each activation child gets
  the channels of the last producer registered before it. So does an activation applied to
  its holder's input (the producer registered before the holder).

Anything that cannot be handled raises ValueError naming the layer.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .matching import FIT_TOLERANCE, match
from .nn import ActivationModule, track_decoding
from .nn.tracking import is_hf_model
from .nn.base import int_at_least
from .nn.families import BATCH_NORMS, CHANNEL_NORMS, CONVOLUTIONS
from .registry import ActivationLike, create, spec

__all__ = ["ACTIVATION_TYPES", "HF_ACTIVATIONS", "POLICIES", "Replaced", "activation_producers",
           "is_activation", "is_causal_model", "producer_channels", "producer_layout", "replace_activations"]

# Rectifier-like activations that are replaced. Sigmoid, Tanh, Hardsigmoid and Softmax are left
# alone on purpose: in real networks they are gates (SE blocks, LSTMs) or output normalisers.
ACTIVATION_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Hardswish, nn.Mish, nn.Softplus, ActivationModule,
)
# Hugging Face's activation modules (``transformers.activations.ACT2CLS``), recognised by class so
# that transformers need not be imported. LinearActivation is the identity: reported, never replaced.
HF_ACTIVATIONS = frozenset({
    "GELUActivation", "NewGELUActivation", "GELUTanh", "FastGELUActivation", "AccurateGELUActivation",
    "ClippedGELUActivation", "QuickGELUActivation", "SiLUActivation", "MishActivation",
    "ReLUSquaredActivation", "XIELUActivation", "LaplaceActivation", "SqrtSoftplusActivation",
    "PytorchGELUTanh", "GELUPytorchTanh", "BloomGelu",
})
_HF_IDENTITY = "LinearActivation"
# Activation-like modules left alone on purpose (gates, output normalisers): listed in the report.
_LEFT_TYPES: tuple[type, ...] = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softmax, nn.LogSoftmax, nn.GLU,
                                 nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
                                 nn.Softshrink, nn.Hardshrink, nn.Softmin)


def _from_transformers(m: nn.Module) -> bool:
    return type(m).__module__.startswith("transformers.")


def is_activation(m: nn.Module) -> bool:
    """Whether ``replace_activations`` replaces ``m``: torch's rectifier-like activations, adaptact's
    modules and Hugging Face's activation classes (but its identity, ``LinearActivation``)."""
    return isinstance(m, ACTIVATION_TYPES) or (_from_transformers(m) and type(m).__name__ in HF_ACTIVATIONS)


def _left_alone(m: nn.Module) -> bool:
    """Activation-like modules that are never replaced (reported as left)."""
    if isinstance(m, _LEFT_TYPES):
        return True
    name = type(m).__name__
    return _from_transformers(m) and name.endswith("Activation") and name not in HF_ACTIVATIONS


_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
              F.silu, F.hardswish, F.mish, F.softplus, torch.selu}
_METHODS = {"relu", "relu_"}
_PASS_FUNCTIONS = {operator.add, operator.iadd, torch.add, F.dropout, F.max_pool1d, F.max_pool2d,
                   F.max_pool3d,
                   F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool2d, torch.clone, torch.mean,
                   torch.flatten}
_PASS_METHODS = {"add", "add_", "contiguous", "clone", "mean", "amax", "flatten"}  # keep channels on dim 1
_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.MaxPool1d,
                 nn.MaxPool2d,
                 nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d) + ACTIVATION_TYPES
_NORM_FUNCTIONS = {F.batch_norm, F.group_norm, F.layer_norm, F.instance_norm}

Policy = Callable[[str, nn.Module | None], bool]
POLICIES = ("all", "resnet_after_3x3")


Layout = tuple[int, int]  # (channels, channel_dim) a producer's output has


def producer_layout(m: nn.Module) -> Layout | None:
    """(channels, channel dim) of what a producer layer outputs (None if ``m`` is not one): convolutions
    and batch/group/instance norms put channels on dim 1; Linear (and Hugging Face's GPT-2 ``Conv1D``),
    LayerNorm, RMSNorm and Embedding on the last dim."""
    if isinstance(m, CONVOLUTIONS):
        return m.out_channels, 1
    if isinstance(m, nn.Linear):
        return m.out_features, -1
    if isinstance(m, CHANNEL_NORMS):
        return m.num_features, 1
    if isinstance(m, nn.GroupNorm):
        return m.num_channels, 1
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        return m.normalized_shape[-1], -1
    if isinstance(m, nn.Embedding):
        return m.embedding_dim, -1
    if _from_transformers(m):
        nf = getattr(m, "nf", None)
        if type(m).__name__ == "Conv1D" and isinstance(nf, int):
            return nf, -1  # GPT-2's transposed Linear: (..., nx) -> (..., nf)
        weight = getattr(m, "weight", None)
        if type(m).__name__.endswith(("RMSNorm", "LayerNorm")) and isinstance(weight, torch.Tensor) \
                and weight.ndim == 1:
            return weight.shape[0], -1
    return None


def producer_channels(m: nn.Module) -> int | None:
    """Channels a producer layer outputs (None if ``m`` is not one)."""
    layout = producer_layout(m)
    return None if layout is None else layout[0]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _last_producer_at(m: nn.Module, prefix: str) -> tuple[Layout | None, str | None]:
    """The layout and the path (``prefix`` + its name in ``m``) of the last producer in ``m``."""
    found: tuple[Layout | None, str | None] = (None, None)
    for name, sub in m.named_modules():
        layout = producer_layout(sub)
        if layout is not None:
            found = (layout, _join(prefix, name))
    return found


@dataclass(eq=False)  # sites are compared by identity
class _Site:
    owner_path: str
    owner: nn.Module
    node: fx.Node | None  # None when the holder could not be traced
    child: str | None  # the activation child's path in its holder (None: a functional call)
    layout: Layout | None  # (channels, channel_dim) of its input, from the producer
    after_3x3: bool
    producer: str | None = None  # the producer's path in the model (None: not a module, or not found)
    guessed: bool = False  # layout from registration order in a holder fx cannot trace: not trusted

    @property
    def channels(self) -> int | None:
        return None if self.layout is None else self.layout[0]

    @property
    def path(self) -> str:
        name = self.child if self.child is not None else f"<{self.node.name if self.node else '?'}>"
        return f"{self.owner_path}.{name}" if self.owner_path else name


class _ChildrenAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_activation_node(node: fx.Node, owner: nn.Module) -> bool:
    if node.op == "call_module":
        return is_activation(owner.get_submodule(str(node.target)))
    if node.op == "call_function":
        return node.target in _FUNCTIONS
    if node.op == "call_method":
        return node.target in _METHODS
    return False


def _first_tensor_arg(node: fx.Node) -> fx.Node | None:
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


def _argument(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def _part(node: fx.Node, owner: nn.Module) -> tuple[Layout | None, bool, str | None]:
    """The walk for ``parts[i]`` of ``parts = x.chunk(n, dim)`` or ``x.split(size, dim)`` (Phi-3's
    fused ``gate_up_proj``, chunked into gate and up): x's producer with the part's channels where
    ``dim`` is x's channel dim as the producer names it (-1 after a Linear, 1 after a convolution);
    unknown for any other dim, which cannot be told apart from the channel dim without shapes."""
    parts, index = node.args[0], node.args[1]
    assert isinstance(parts, fx.Node)
    layout, reached, path = _walk_to_producer(_first_tensor_arg(parts), owner)
    if layout is None or not isinstance(index, int):
        return None, False, None
    channels, channel_dim = layout
    dim = _argument(parts, 2, "dim", 0)
    if dim != channel_dim:
        return None, False, None  # another dim, or the channel dim counted from the other end
    if parts.target == "chunk" or parts.target is torch.chunk:
        n = _argument(parts, 1, "chunks")
        sizes = [channels // n] * n if isinstance(n, int) and n > 0 and channels % n == 0 else None
    else:
        size = _argument(parts, 1, "split_size_or_sections", _argument(parts, 1, "split_size"))
        if isinstance(size, int) and size > 0 and channels % size == 0:
            sizes = [size] * (channels // size)
        else:
            sizes = list(size) if isinstance(size, (list, tuple)) and sum(size) == channels else None
    if sizes is None or not -len(sizes) <= index < len(sizes):
        return None, False, None
    return (sizes[index], channel_dim), reached, path


def _is_part(node: fx.Node) -> bool:
    """``parts[i]`` of a chunk or split."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return False
    parts = node.args[0]
    return isinstance(parts, fx.Node) and (
        (parts.op == "call_method" and parts.target in ("chunk", "split"))
        or (parts.op == "call_function" and parts.target in (torch.chunk, torch.split)))


def _walk_to_producer(node: fx.Node | None, owner: nn.Module) -> tuple[Layout | None, bool, str | None]:
    """(layout, whether the walk reached the holder's input, the producer's path in ``owner``) for
    the value ``node`` computes."""
    while node is not None:
        if _is_part(node):
            return _part(node, owner)
        if node.op == "call_module":
            m = owner.get_submodule(str(node.target))
            layout = producer_layout(m)
            if layout is not None:
                return layout, False, str(node.target)
            if isinstance(m, _PASS_MODULES) or is_activation(m):
                node = _first_tensor_arg(node)
                continue
            last, at = _last_producer_at(m, str(node.target))
            return last, False, at
        if node.op == "call_function":
            if node.target in _NORM_FUNCTIONS:
                return producer_layout(owner), False, ""
            if node.target in _PASS_FUNCTIONS or node.target in _FUNCTIONS:
                node = _first_tensor_arg(node)
                continue
            return None, False, None
        if node.op == "call_method" and (node.target in _PASS_METHODS or node.target in _METHODS):
            node = _first_tensor_arg(node)
            continue
        return None, node.op == "placeholder", None
    return None, False, None


def _after_3x3(node: fx.Node, owner: nn.Module, residual: bool) -> bool:
    """True when ``node``'s input is BN(conv 3x3(...)) directly, in a residual block."""
    if not residual:
        return False
    bn = _first_tensor_arg(node)
    if bn is None or bn.op != "call_module" or not isinstance(owner.get_submodule(str(bn.target)),
                                                             BATCH_NORMS):
        return False
    conv = _first_tensor_arg(bn)
    if conv is None or conv.op != "call_module":
        return False
    m = owner.get_submodule(str(conv.target))
    return isinstance(m, CONVOLUTIONS) and all(k == 3 for k in m.kernel_size)


def _has_residual_add(graph: fx.Graph) -> bool:
    return any((n.op == "call_function" and n.target in (operator.add, operator.iadd, torch.add))
               or (n.op == "call_method" and n.target in ("add", "add_")) for n in graph.nodes)


def _holds_activations(m: nn.Module) -> bool:
    """Activation children, or a forward of its own that may call F.relu (torch's layers do not)."""
    return (any(is_activation(c) for c in m.children())
            or not type(m).forward.__module__.startswith("torch."))


def _causal_attention_call(node: fx.Node) -> bool:
    """``F.scaled_dot_product_attention(..., is_causal=True)`` (by keyword or as its 6th argument)."""
    if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
        return False
    return node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False) is True


def _sites(model: nn.Module,
           untraced: list[str] | None = None) -> tuple[list[_Site], dict[str, fx.Graph], bool]:
    """The activation sites of ``model``, the traced graphs of their holders, and whether any traced
    forward calls causal attention (a decoder that marks itself nowhere else). ``untraced`` collects
    the activations that holders fx cannot trace call without holding them (``.left``)."""
    sites: list[_Site] = []
    graphs: dict[str, fx.Graph] = {}
    causal = False
    before: Layout | None = None  # the last producer registered before the current holder
    before_at: str | None = None  # and its path
    for path, owner in model.named_modules():
        holder_input, holder_input_at = before, before_at
        if producer_layout(owner) is not None:
            before, before_at = producer_layout(owner), path
        if isinstance(owner, nn.Sequential):
            sites += _registration_order_sites(path, owner, holder_input, holder_input_at)
            continue
        if isinstance(owner, _TORCH_TRANSFORMER_LAYERS):  # activation(linear1(x)), a module or a function
            sites.append(_Site(path, owner, None, "activation", producer_layout(owner.linear1), False,
                               _join(path, "linear1")))
            continue
        if is_activation(owner) or _left_alone(owner) or isinstance(owner, (nn.ModuleList, nn.ModuleDict)):
            continue
        if not _holds_activations(owner):
            continue
        try:
            graph = _ChildrenAsLeaves().trace(owner)
        except Exception:  # noqa: BLE001 - fx fails in many ways on dynamic code: use registration order
            own = producer_layout(owner)
            found_sites = _registration_order_sites(path, owner, own or holder_input,
                                                    path if own is not None else holder_input_at)
            # a norm that applies its own activation (timm's BatchNormAct2d) is its producer; else a guess
            sites += found_sites if own is not None else [dataclasses.replace(s, guessed=True)
                                                          for s in found_sites]
            if untraced is not None:
                untraced += _called_unheld(path, owner)
            continue
        causal = causal or any(_causal_attention_call(n) for n in graph.nodes)
        residual = _has_residual_add(graph)
        found = False
        for node in graph.nodes:
            if not _is_activation_node(node, owner):
                continue
            found = True
            layout, reached_input, at = _walk_to_producer(_first_tensor_arg(node), owner)
            producer = None if at is None else _join(path, at)
            if layout is None and isinstance(owner, CHANNEL_NORMS):
                layout, producer = producer_layout(owner), path
            if layout is None and reached_input:  # the holder's input: its preceding producer
                layout, producer = holder_input, holder_input_at
            child = node.target if node.op == "call_module" else None
            sites.append(_Site(path, owner, node, child, layout, _after_3x3(node, owner, residual), producer))
        if found:
            graphs[path] = graph
    return sites, graphs, causal


def _called_unheld(path: str, owner: nn.Module) -> list[str]:
    """Activations that ``owner``'s forward calls through a module-level name (RoBERTa's LM head
    calls transformers' ``gelu`` object): neither a child nor a traced call, so not replaced."""
    forward = type(owner).forward
    names = getattr(getattr(forward, "__code__", None), "co_names", ())
    scope = getattr(forward, "__globals__", {})
    found = []
    for name in names:
        obj = scope.get(name)
        if (isinstance(obj, nn.Module) and is_activation(obj)) or any(obj is f for f in _FUNCTIONS):
            found.append(f"{_join(path, f'<{name}>')} ({type(obj).__name__} called by a forward fx cannot "
                         f"trace: not replaced)")
    return found


def _registration_order_sites(path: str, owner: nn.Module, layout: Layout | None,
                              at: str | None = None) -> list[_Site]:
    """Children taken to run in registration order (nn.Sequential does; the fallback for holders
    fx cannot trace): each activation gets the last producer before it, starting from ``layout``
    (at the path ``at``)."""
    sites = []
    for name, child in owner.named_children():
        if is_activation(child):
            sites.append(_Site(path, owner, None, name, layout, False, at))
        else:
            last, last_at = _last_producer_at(child, _join(path, name))
            if last is not None:
                layout, at = last, last_at
    return sites


# torch's own transformer layers: their activation (a module or a function such as F.relu) is applied
# to linear1's output; their forward is not traceable by fx (its fast path checks).
_TORCH_TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _child(owner: nn.Module, path: str) -> Any:
    """``owner``'s attribute at the dotted ``path`` (a module, or a function such as torch's
    TransformerEncoderLayer's ``activation``)."""
    return functools.reduce(getattr, path.split("."), owner)


def _swap(owner: nn.Module, child: str, new: nn.Module) -> Callable[[], None]:
    """``owner.child = new``; returns the undo. ``child`` may be a dotted path (a forward that calls
    ``self.mlp.act`` of an ``nn.ModuleDict``). torch's TransformerEncoderLayer also drops its flag
    for the fused fast path, which would otherwise run its built-in relu/gelu instead."""
    holder, _, child = child.rpartition(".")
    owner = _child(owner, holder) if holder else owner
    old = getattr(owner, child)
    fast = owner.__dict__.get("activation_relu_or_gelu")
    setattr(owner, child, new)
    if fast is not None:
        owner.__dict__["activation_relu_or_gelu"] = 0

    def undo() -> None:
        setattr(owner, child, old)
        if fast is not None:
            owner.__dict__["activation_relu_or_gelu"] = fast

    return undo


def _policy(policy: str | Policy) -> Callable[[_Site], bool]:
    if callable(policy):
        return lambda s: bool(policy(s.path, _child(s.owner, s.child) if s.child else None))
    if policy == "all":
        return lambda s: True
    if policy == "resnet_after_3x3":
        return lambda s: s.after_3x3
    raise ValueError(f"policy must be one of {POLICIES} or a callable(path, module) -> bool, got {policy!r}")


def _build(activation: ActivationLike, site: _Site, old: nn.Module | None, kwargs: dict,
           channels: int | None = None) -> nn.Module:
    """The new activation at ``site``: ``channels`` (given) or the producer's; a site whose producer
    was only guessed (registration order in a holder fx cannot trace) takes them from its first
    input (lazy) rather than from a guess."""
    # per-channel state, or a normalisation over the channels (PolyNorm): the layout must be known
    per_channel = isinstance(activation, str) and spec(activation).takes_channel_dim
    lazy = per_channel and channels is None and site.guessed
    if lazy and isinstance(activation, str) and spec(activation).per_channel and not spec(activation).lazy:
        raise ValueError(f"the channels of the activation at {site.path!r} cannot be traced (torch.fx cannot "
                         f"trace its holder) and {spec(activation).name!r} takes no lazy channels: pass "
                         f"channels=")
    if per_channel and site.layout is None and channels is None and not lazy:
        raise ValueError(f"cannot infer the channels of the activation at {site.path!r}: no Conv, Linear or "
                         f"norm layer produces its input; pass channels= (with channel_dim= for tokens, "
                         f"(..., C)), give that layer its own module, or use a policy that skips it")
    if isinstance(activation, str) and spec(activation).channel_factor != 1:
        raise ValueError(f"{spec(activation).name!r} changes the number of channels and cannot replace the "
                         f"activation at {site.path!r}")
    kwargs = {"inplace": bool(getattr(old, "inplace", False)), **kwargs}
    if site.layout is not None and site.layout[1] != 1 and (per_channel or not isinstance(activation, str)):
        kwargs.setdefault("channel_dim", site.layout[1])
        if isinstance(activation, str):
            kwargs = {**token_options(activation), **kwargs}
    return create(activation, channels=channels if channels is not None else None if lazy else site.channels,
                  **kwargs)


def token_options(name: str) -> dict[str, Any]:
    """What ``name`` needs besides ``channel_dim=-1`` on tokens (B, T, C): FReLU's funnel window
    runs along the sequence (``dims=1``)."""
    return {"dims": 1} if spec(name).name == "frelu" else {}


def activation_producers(model: nn.Module) -> dict[str, str | None]:
    """Each activation module of ``model`` (by path) with the path of the layer that produces its
    input, found as ``replace_activations`` finds it (None: no module found). Functional calls
    (``F.relu``) are left out: they have no path of their own."""
    return {site.path: site.producer for site in _sites(model)[0] if site.child is not None}


def is_causal_model(model: nn.Module) -> bool:
    """Whether ``model`` is an autoregressive decoder: a Hugging Face ``*ForCausalLM`` or ``*LMHeadModel``,
    a config with ``is_decoder``, attention modules marked ``is_causal = True`` (LLaMA's, GPT-2's,
    adaptact's own blocks), or attention modules named ``Causal...Attention`` (nanoGPT's and
    minGPT's ``CausalSelfAttention``, which mark nothing)."""
    name = type(model).__name__
    if name.endswith("ForCausalLM") or "LMHeadModel" in name:
        return True
    if getattr(getattr(model, "config", None), "is_decoder", False) is True:
        return True
    return any(getattr(m, "is_causal", None) is True or _CAUSAL_ATTENTION.fullmatch(type(m).__name__)
               for m in model.modules())


_CAUSAL_ATTENTION = re.compile(r"Causal\w*Attention")


class Replaced(list):
    """The module paths of the new activations, in model order (a list), and in ``rewritten`` the
    paths of the holders whose ``forward`` had to be rewritten: each is now a
    ``torch.fx.GraphModule`` (same parameters and buffers, class name kept) instead of its class.
    ``left``: "path (ClassName)" of the activation-like modules not replaced (gates, output
    normalisers, identities, sites the policy skipped). ``notes``: decisions taken for the user
    (such as the causal context of a decoder's input-conditioned activations). ``fits``: with
    ``init="match"``, each new activation's fit error, max |new - old| on [-3, 3], by path."""

    def __init__(self, paths: list[str], rewritten: list[str], left: list[str] | None = None,
                 notes: list[str] | None = None, fits: dict[str, float] | None = None) -> None:
        super().__init__(paths)
        self.rewritten = rewritten
        self.left = left or []
        self.notes = notes or []
        self.fits = fits or {}


def _left(model: nn.Module, sites: list[_Site], chosen: list[_Site]) -> list[str]:
    skipped = {s.path for s in sites if s not in chosen}
    left = [f"{path} ({type(m).__name__})" for path, m in model.named_modules() if path and _left_alone(m)]
    return left + [f"{path} (not chosen by the policy)" for path in sorted(skipped)]


def decoder_flag(chain: list[nn.Module]) -> bool | None:
    """Whether the innermost of ``chain`` (modules, innermost first) that says ``is_decoder`` (T5's
    and BERT's stacks and layers do) is a decoder; None when none says."""
    for m in chain:
        flag = getattr(m, "is_decoder", None)
        if isinstance(flag, bool):
            return flag
    return None


def _ancestors(model: nn.Module, path: str) -> list[nn.Module]:
    """The module at ``path`` and its ancestors up to ``model``, innermost first."""
    parts = path.split(".") if path else []
    return [model.get_submodule(".".join(parts[:k])) for k in range(len(parts), -1, -1)]


def _contexts(model: nn.Module, name: ActivationLike, kwargs: dict, causal: bool,
              sites: list[_Site]) -> tuple[Callable[[_Site], dict], list[str]]:
    """Each site's constructor arguments: input-conditioned activations in a decoder get
    context="causal" unless ``context`` is given; a site inside a stack that says it is no decoder
    (T5's encoder), or inside a model whose attention is marked not causal (a VLM's vision tower,
    BART's encoder), keeps the papers' "sample" although the model is causal (``causal``). A
    decoder's site fed rows of tokens (B*T, C) gets "token" (each position alone: no prefix is known
    in rows), as a dry forward of a Hugging Face model's dummy inputs shows (``_input_ranks``: OPT's
    MLP, Qwen2-MoE's experts and shared expert); without that forward, a site in a layer torch.fx
    cannot trace gets "token", since such layers often flatten tokens to rows."""
    if not isinstance(name, str) or not spec(name).per_sample or "context" in kwargs:
        return (lambda s: kwargs), []
    decoding = []
    for s in sites:
        chain = _ancestors(model, s.owner_path)
        flag = decoder_flag(chain)
        if flag or (flag is None and causal and not _in_encoder_model(chain, model)):
            decoding.append(s)
    ranks = _input_ranks(model, decoding) if decoding else {}
    context = {s.path: "token" if ranks.get(s.path, 2 if s.guessed else 3) == 2 else "causal"
               for s in decoding}
    if not context:
        return (lambda s: kwargs), []
    where = "" if len(context) == len(sites) else " (its encoder's keep context='sample')"
    notes = [f"{spec(name).name} pools over positions; {type(model).__name__} is a causal decoder, so its "
             f"generators see positions <= t only (context='causal'{where}; pass context= to choose)"]
    tokens = [p for p, c in context.items() if c == "token"]
    if tokens and spec(name).name == "frelu":
        raise ValueError(f"frelu cannot replace the activation at {tokens[0]!r}: it sees rows of tokens "
                         f"(B*T, C), or torch.fx cannot trace the layer holding it and whether it sees "
                         f"sequences (B, T, C) is unknown, and FReLU's window needs sequences; where they "
                         f"are sequences, pass context='causal'")
    if tokens:
        notes.append(f"{', '.join(tokens)}: context='token' (each position alone), since they see tokens "
                     f"as rows (B*T, C), or may (torch.fx cannot trace the layers holding them)")
    return (lambda s: {**kwargs, "context": context[s.path]} if s.path in context else kwargs), notes


def _in_encoder_model(chain: list[nn.Module], model: nn.Module) -> bool:
    """Whether the nearest Hugging Face model around a site, inside ``model``, is an encoder by its
    own attention (a VLM's vision tower: CLIP's attention says ``is_causal = False``): some module
    marked not causal and none marked causal. Where nothing is marked the model's own causality
    stands, so a decoder never gets "sample" by a missing mark."""
    inner = next((m for m in chain if m is not model and is_hf_model(m)), None)
    if inner is None:
        return False
    marks = {getattr(m, "is_causal", None) for m in inner.modules()}
    return False in marks and True not in marks


def _input_ranks(model: nn.Module, sites: list[_Site]) -> dict[str, int]:
    """The rank of the input each activation module at ``sites`` gets in one forward of a Hugging
    Face model's own ``dummy_inputs`` (eval mode, no gradients; 2 where any call gets rows), before
    the conversion: a decoder's layer may flatten its tokens to rows (B*T, C) before its MLP
    (Qwen2-MoE's shared expert, OPT's MLP), where no prefix is known. Empty where the model has no
    dummy inputs or that forward fails; functional sites are not seen."""
    dummy = getattr(model, "dummy_inputs", None) if is_hf_model(model) else None
    modules = {s.path: model.get_submodule(s.path) for s in sites if s.child is not None}
    if not isinstance(dummy, dict) or not modules:
        return {}
    ranks: dict[str, int] = {}

    def seen(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                ranks[path] = min(ranks.get(path, args[0].ndim), args[0].ndim)
        return hook

    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dummy.items()}
    # on meta, some ops take only half precision (grouped matmuls): then a bfloat16 copy (no memory there)
    for half in (False, True) if device.type == "meta" else (False,):
        hooks = []
        try:
            tried = copy.deepcopy(model).to(torch.bfloat16) if half else model
            hooks = [tried.get_submodule(path).register_forward_pre_hook(seen(path)) for path in modules]
            _run_example(tried, inputs)
            return ranks
        except Exception:  # noqa: BLE001 - no forward here (inputs it needs, ops meta lacks): nothing seen
            ranks.clear()
        finally:
            for h in hooks:
                h.remove()
    return ranks


def _channel_override(channels: int | Mapping[str, int] | None, sites: list[_Site]) -> dict[str, int]:
    """``replace_activations(channels=...)`` as {site path: channels}."""
    if channels is None:
        return {}
    if isinstance(channels, Mapping):
        known = {s.path for s in sites}
        unknown = sorted(set(channels) - known)
        if unknown:
            raise ValueError(f"channels= names no activation site: {unknown}; the sites are {sorted(known)}")
        return {path: int_at_least(f"channels[{path!r}]", c) for path, c in channels.items()}
    count = int_at_least("channels", channels)
    return {s.path: count for s in sites}


def _run_example(model: nn.Module, example_inputs: object) -> None:
    """One forward of ``example_inputs`` (a tensor, a tuple of arguments or a dict of keywords) in
    eval mode without gradients (no BatchNorm statistic moves); lazy activations are made here."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, tuple):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for m, training in modes:
            m.training = training


INITS = ("paper", "match")


def _target(site: _Site, old: nn.Module | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the activation at ``site`` computed: its module, or its functional call with the call's
    constant arguments."""
    if old is not None:
        return old
    node = site.node
    extra = tuple(node.args[1:]) if node is not None else ()
    options = dict(node.kwargs) if node is not None else {}
    if node is None or any(isinstance(a, fx.Node) for a in (*extra, *options.values())):
        raise ValueError(f"init='match' cannot read the activation at {site.path!r}: its call takes "
                         "arguments computed in the forward")
    options.pop("inplace", None)
    if node.op == "call_method":
        method = str(node.target)
        return lambda t: getattr(t.clone(), method)(*extra, **options)
    function = node.target
    assert callable(function)
    if function in (F.relu, F.relu6, F.silu, F.hardswish, F.elu, F.selu, F.celu, F.mish) and extra:
        extra = ()  # their second positional argument is inplace
    return lambda t: function(t.clone(), *extra, **options)


_FITTED: dict[tuple, list[torch.Tensor]] = {}  # matching.match's fits, shared by conversions in a process


def _matched(new: nn.Module, site: _Site, old: nn.Module | None, init: str, path: str,
             fits: dict[str, float]) -> nn.Module:
    """``new``, fitted to what it replaces when ``init="match"`` (its fit error kept in ``fits``)."""
    if init == "match":
        try:
            fits[path] = match(new, _target(site, old), _FITTED)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return new


def replace_activations(model: nn.Module, name: ActivationLike, policy: str | Policy = "all",
                        *, example_inputs: object = None, init: str = "paper",
                        channels: int | Mapping[str, int] | None = None, **kwargs) -> Replaced:
    """Replace the activations of ``model`` with ``name`` (a registry name, class or callable).

    Recognised: torch's rectifier-like activations (``ACTIVATION_TYPES``), adaptact's modules and
    Hugging Face's activation classes (``HF_ACTIVATIONS``; ``transformers`` is not imported), as
    child modules or functional calls. Each new per-channel activation gets its channel count and
    channel dim from the layer producing its input: a convolution or BatchNorm gives dim 1, a
    Linear (GPT-2's ``Conv1D``, LayerNorm, RMSNorm) the last dim (``channel_dim=-1``); in a gated
    MLP, ``act(gate_proj(x)) * up_proj(x)``, the gate projection.

    Args:
        model: changed in place.
        name: the new activation; per-channel ones get ``channels`` from each site's producer.
        policy: "all"; "resnet_after_3x3" (ACON paper: in each residual block only the
            activation right after a 3x3 conv + BatchNorm); or ``callable(path, module) -> bool``
            (module is None for a functional call such as ``F.relu``).
        example_inputs: run ``model`` on these once after converting (a tensor, a tuple of
            arguments or a dict of keywords; eval mode, no gradients): if that fails, the whole
            conversion is taken back and the error raised. Lazy activations are made here.
        init: "paper" (each activation at its paper's initialisation) or "match": each new
            activation's parameters fitted so that it computes, as closely as its family allows,
            the activation it replaces (``adaptact.matching``), so a pretrained network keeps its
            function; the fit errors are in ``.fits`` and a site past ``FIT_TOLERANCE`` (0.05)
            warns by name. Needs the channels of each site (no lazy modules).
        **kwargs: constructor arguments of the new activation (``context="causal"``, ...).

    Returns:
        The module paths of the new activations, in model order; ``.rewritten`` lists the holders
        turned into ``torch.fx.GraphModule``, ``.left`` the activation-like modules not replaced and
        ``.notes`` the choices made, ``.fits`` the fit errors (see ``Replaced``).

    In a causal decoder (``is_causal_model``, or a forward traced here that calls
    ``F.scaled_dot_product_attention(..., is_causal=True)``), input-conditioned activations
    (Meta-ACON-C, APReLU, Dynamic ReLU, FReLU) get ``context="causal"`` unless ``context`` is
    given; those fed rows of tokens (B*T, C) get ``context="token"``, and those in an encoder inside
    the model keep "sample" (``_contexts``). A decoder or a Hugging Face model with such activations is hooked
    (``nn.track_decoding``): padding (``attention_mask``) is left out of their statistics, and cached
    generation continues their prefix statistics from the cache.
    Replacing nothing warns. All or nothing: if any site cannot be replaced (or ``example_inputs``
    fail), the error is raised with the model unchanged.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    choose = _policy(policy)
    untraced: list[str] = []
    sites, graphs, causal_attention = _sites(model, untraced)
    causal = causal_attention or is_causal_model(model)
    chosen = [s for s in sites if choose(s)]
    override = _channel_override(channels, sites)
    options, notes = _contexts(model, name, kwargs, causal, chosen)

    def build(s: _Site, old: nn.Module | None, path: str) -> nn.Module:
        if init == "match" and s.guessed and s.path not in override:
            raise ValueError(f"init='match' needs the channels of the activation at {path!r}, which cannot "
                             f"be traced (torch.fx cannot trace its holder): pass channels=")
        new = _matched(_build(name, s, old, options(s), override.get(s.path)), s, old, init, path, fits)
        return new.train(s.owner.training)  # a model converted in eval mode stays in eval mode

    by_child: dict[tuple[str, str], list[_Site]] = {}
    for s in sites:
        if s.child is not None:
            by_child.setdefault((s.owner_path, s.child), []).append(s)

    replaced: list[str] = []
    fits: dict[str, float] = {}
    rewrite: dict[str, list[_Site]] = {}
    undo: list[Callable[[], None]] = []  # every change made, to take back if a later one fails
    try:
        for s in chosen:
            group = by_child.get((s.owner_path, s.child), [s]) if s.child is not None else [s]
            in_place = (s.child is not None and all(g in chosen for g in group)
                        and len({g.layout for g in group}) == 1)
            if in_place:
                if s is group[0] and s.child is not None:
                    old = _child(s.owner, s.child)
                    new = build(s, old, s.path)
                    undo.append(_swap(s.owner, s.child, new))
                    replaced.append(s.path)
            else:
                rewrite.setdefault(s.owner_path, []).append(s)
        for owner_path, owner_sites in rewrite.items():
            replaced += _rewrite(model, owner_path, graphs[owner_path], owner_sites, build, undo)
        conditioned = any(hasattr(model.get_submodule(p), "context") for p in replaced)
        if conditioned and (causal or is_hf_model(model)):
            undo.append(track_decoding(model))
        if example_inputs is not None:
            _run_example(model, example_inputs)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    left = _left(model, sites, chosen) + untraced
    lazy = [p for p in replaced if getattr(model.get_submodule(p), "channels", 0) is None]
    if lazy:
        notes.append(f"{', '.join(lazy)}: channels from the first input (torch.fx cannot trace the layer "
                     f"holding them, so no producer is trusted); run one forward (or pass example_inputs=) "
                     f"before building an optimizer, or pass channels=")
    if not replaced:
        found = f"; left: {', '.join(left)}" if left else ""
        warnings.warn(f"replace_activations replaced nothing in {type(model).__name__}: no activation it "
                      f"replaces was found{found}", RuntimeWarning, stacklevel=2)
    for path, error in fits.items():
        if error > FIT_TOLERANCE:
            warnings.warn(f"{path}: the new activation comes within {error:.3f} of the one it replaces, not "
                          f"{FIT_TOLERANCE} (max |new - old| on [-3, 3]; its family cannot match it)",
                          RuntimeWarning, stacklevel=2)
    paths = sorted(replaced, key=lambda p: order.get(p, len(order)))
    if replaced and is_hf_model(model):
        from .huggingface import record_conversion  # it reads this module's analysis

        contexts = {str(getattr(model.get_submodule(p), "context", "")) for p in paths} - {""}
        why = record_conversion(model, name, options=kwargs, policy=policy, init=init, sites=paths,
                                contexts=sorted(contexts))
        notes.append(f"saved with save_pretrained, this conversion loads with from_pretrained only where "
                     f"adaptact can rebuild it from the config: not here ({why}); use load_state_dict"
                     if why else "the conversion is recorded in model.config (config.adaptact, activation "
                     "'adaptact.<name>'): save_pretrained/from_pretrained rebuild it with adaptact imported")
    return Replaced(paths, list(rewrite), left, notes, fits)


def _rewrite(model: nn.Module, owner_path: str, graph: fx.Graph, sites: list[_Site],
             build: Callable[[_Site, nn.Module | None, str], nn.Module],
             undo: list[Callable[[], None]]) -> list[str]:
    if not owner_path:
        where = ", ".join(s.path for s in sites)
        raise ValueError(f"the model's own forward calls activations that need a graph rewrite ({where}); "
                         f"wrap it, e.g. replace_activations(nn.Sequential(model), ...), and the model "
                         f"becomes a torch.fx.GraphModule inside the Sequential (listed in .rewritten)")
    owner = sites[0].owner
    index = {n: k for k, n in enumerate(n for n in graph.nodes if _is_activation_node(n, owner))}
    new_paths = []
    for s in sites:
        assert s.node is not None  # sites to rewrite come from a traced graph
        old = _child(owner, s.child) if s.child else None
        new_name = f"{(s.child or 'act').replace('.', '_')}_site{index[s.node]}"
        while hasattr(owner, new_name):
            new_name += "_"
        path = f"{owner_path}.{new_name}"
        owner.add_module(new_name, build(s, old, path))
        undo.append(functools.partial(delattr, owner, new_name))
        with graph.inserting_after(s.node):
            new = graph.call_module(new_name, (_first_tensor_arg(s.node),))
        s.node.replace_all_uses_with(new)
        graph.erase_node(s.node)
        new_paths.append(path)
    graph.lint()
    parent_path, _, attr = owner_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, fx.GraphModule(owner, graph, class_name=type(owner).__name__))
    undo.append(lambda: setattr(parent, attr, owner))
    return new_paths
