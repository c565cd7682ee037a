"""Where a model's activations are, and what produces each one's input: the sites
``replace_activations`` replaces.

Every module that holds activations (as children, or as functional calls such as ``F.relu`` in
its ``forward``) is traced on its own with torch.fx, its children kept as leaves. Each call site
of an activation is then followed back through pass-through ops (pooling, dropout, residual adds,
chunks of a fused projection, ...) to the nearest producer (Conv, Linear, BatchNorm, GroupNorm,
LayerNorm, RMSNorm, Embedding, or the last producer inside a child block), which gives its
``channels`` and the dim they are on. A holder that fx cannot trace falls back to registration
order: each activation child gets the channels of the last producer registered before it (a
guess, ``Site.guessed``). So does an activation applied to its holder's input (the producer
registered before the holder).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .nn import ActivationModule
from .nn.families import BATCH_NORMS, CHANNEL_NORMS, CONVOLUTIONS

__all__ = ["ACTIVATION_TYPES", "HF_ACTIVATIONS", "Layout", "Site", "activation_producers", "find_sites",
           "first_tensor_arg", "is_activation", "is_activation_node", "left_alone", "producer_channels",
           "producer_layout"]

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


def left_alone(m: nn.Module) -> bool:
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
class Site:
    """One call of an activation: the module holding it (``owner``, at ``owner_path``), its node in
    the holder's traced graph, its child's path in the holder (None: a functional call such as
    ``F.relu``), the (channels, channel_dim) of its input and the producer they come from."""

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


def is_activation_node(node: fx.Node, owner: nn.Module) -> bool:
    if node.op == "call_module":
        return is_activation(owner.get_submodule(str(node.target)))
    if node.op == "call_function":
        return node.target in _FUNCTIONS
    if node.op == "call_method":
        return node.target in _METHODS
    return False


def first_tensor_arg(node: fx.Node) -> fx.Node | None:
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
    layout, reached, path = _walk_to_producer(first_tensor_arg(parts), owner)
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
                node = first_tensor_arg(node)
                continue
            last, at = _last_producer_at(m, str(node.target))
            return last, False, at
        if node.op == "call_function":
            if node.target in _NORM_FUNCTIONS:
                return producer_layout(owner), False, ""
            if node.target in _PASS_FUNCTIONS or node.target in _FUNCTIONS:
                node = first_tensor_arg(node)
                continue
            return None, False, None
        if node.op == "call_method" and (node.target in _PASS_METHODS or node.target in _METHODS):
            node = first_tensor_arg(node)
            continue
        return None, node.op == "placeholder", None
    return None, False, None


def _after_3x3(node: fx.Node, owner: nn.Module, residual: bool) -> bool:
    """True when ``node``'s input is BN(conv 3x3(...)) directly, in a residual block."""
    if not residual:
        return False
    bn = first_tensor_arg(node)
    if bn is None or bn.op != "call_module" or not isinstance(owner.get_submodule(str(bn.target)),
                                                             BATCH_NORMS):
        return False
    conv = first_tensor_arg(bn)
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


def find_sites(model: nn.Module,
           untraced: list[str] | None = None) -> tuple[list[Site], dict[str, fx.Graph], bool]:
    """The activation sites of ``model``, the traced graphs of their holders, and whether any traced
    forward calls causal attention (a decoder that marks itself nowhere else). ``untraced`` collects
    the activations that holders fx cannot trace call without holding them (``.left``)."""
    sites: list[Site] = []
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
            sites.append(Site(path, owner, None, "activation", producer_layout(owner.linear1), False,
                               _join(path, "linear1")))
            continue
        if is_activation(owner) or left_alone(owner) or isinstance(owner, (nn.ModuleList, nn.ModuleDict)):
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
            if not is_activation_node(node, owner):
                continue
            found = True
            layout, reached_input, at = _walk_to_producer(first_tensor_arg(node), owner)
            producer = None if at is None else _join(path, at)
            if layout is None and isinstance(owner, CHANNEL_NORMS):
                layout, producer = producer_layout(owner), path
            if layout is None and reached_input:  # the holder's input: its preceding producer
                layout, producer = holder_input, holder_input_at
            child = node.target if node.op == "call_module" else None
            sites.append(Site(path, owner, node, child, layout, _after_3x3(node, owner, residual), producer))
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
                              at: str | None = None) -> list[Site]:
    """Children taken to run in registration order (nn.Sequential does; the fallback for holders
    fx cannot trace): each activation gets the last producer before it, starting from ``layout``
    (at the path ``at``)."""
    sites = []
    for name, child in owner.named_children():
        if is_activation(child):
            sites.append(Site(path, owner, None, name, layout, False, at))
        else:
            last, last_at = _last_producer_at(child, _join(path, name))
            if last is not None:
                layout, at = last, last_at
    return sites


# torch's own transformer layers: their activation (a module or a function such as F.relu) is applied
# to linear1's output; their forward is not traceable by fx (its fast path checks).
_TORCH_TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def activation_producers(model: nn.Module) -> dict[str, str | None]:
    """Each activation module of ``model`` (by path) with the path of the layer that produces its
    input, found as ``replace_activations`` finds it (None: no module found). Functional calls
    (``F.relu``) are left out: they have no path of their own."""
    return {site.path: site.producer for site in find_sites(model)[0] if site.child is not None}
