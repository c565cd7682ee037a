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

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .nn import ActivationModule
from .registry import ActivationLike, create, spec

__all__ = ["ACTIVATION_TYPES", "POLICIES", "Replaced", "replace_activations"]

# Rectifier-like activations that are replaced. Sigmoid, Tanh, Hardsigmoid and Softmax are left
# alone on purpose: in real networks they are gates (SE blocks, LSTMs) or output normalisers.
ACTIVATION_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Hardswish, nn.Mish, nn.Softplus, ActivationModule,
)
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


def producer_channels(m: nn.Module) -> int | None:
    """Channels a producer layer outputs (None if ``m`` is not one)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, (nn.modules.batchnorm._NormBase,)):
        return m.num_features
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.LayerNorm):
        return m.normalized_shape[-1]
    return None


def _last_producer(m: nn.Module) -> int | None:
    c = None
    for sub in m.modules():
        c = producer_channels(sub) or c
    return c


@dataclass(eq=False)  # sites are compared by identity
class _Site:
    owner_path: str
    owner: nn.Module
    node: fx.Node | None  # None when the holder could not be traced
    child: str | None  # the activation child's name in its holder (None: a functional call)
    channels: int | None
    after_3x3: bool

    @property
    def path(self) -> str:
        name = self.child if self.child is not None else f"<{self.node.name}>"
        return f"{self.owner_path}.{name}" if self.owner_path else name


class _ChildrenAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_activation_node(node: fx.Node, owner: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(owner.get_submodule(node.target), ACTIVATION_TYPES)
    if node.op == "call_function":
        return node.target in _FUNCTIONS
    if node.op == "call_method":
        return node.target in _METHODS
    return False


def _first_tensor_arg(node: fx.Node) -> fx.Node | None:
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


def _walk_to_producer(node: fx.Node | None, owner: nn.Module) -> tuple[int | None, bool]:
    """(channels, whether the walk reached the holder's input) for the value ``node`` computes."""
    while node is not None:
        if node.op == "call_module":
            m = owner.get_submodule(node.target)
            c = producer_channels(m)
            if c is not None:
                return c, False
            if isinstance(m, _PASS_MODULES):
                node = _first_tensor_arg(node)
                continue
            return _last_producer(m), False
        if node.op == "call_function":
            if node.target in _NORM_FUNCTIONS:
                return producer_channels(owner), False
            if node.target in _PASS_FUNCTIONS or node.target in _FUNCTIONS:
                node = _first_tensor_arg(node)
                continue
            return None, False
        if node.op == "call_method" and (node.target in _PASS_METHODS or node.target in _METHODS):
            node = _first_tensor_arg(node)
            continue
        return None, node.op == "placeholder"
    return None, False


def _after_3x3(node: fx.Node, owner: nn.Module, residual: bool) -> bool:
    """True when ``node``'s input is BN(conv 3x3(...)) directly, in a residual block."""
    if not residual:
        return False
    bn = _first_tensor_arg(node)
    if bn is None or bn.op != "call_module" or not isinstance(owner.get_submodule(bn.target),
                                                             nn.modules.batchnorm._BatchNorm):
        return False
    conv = _first_tensor_arg(bn)
    if conv is None or conv.op != "call_module":
        return False
    m = owner.get_submodule(conv.target)
    return isinstance(m, nn.modules.conv._ConvNd) and all(k == 3 for k in m.kernel_size)


def _has_residual_add(graph: fx.Graph) -> bool:
    return any((n.op == "call_function" and n.target in (operator.add, operator.iadd, torch.add))
               or (n.op == "call_method" and n.target in ("add", "add_")) for n in graph.nodes)


def _holds_activations(m: nn.Module) -> bool:
    """Activation children, or a forward of its own that may call F.relu (torch's layers do not)."""
    return (any(isinstance(c, ACTIVATION_TYPES) for c in m.children())
            or not type(m).forward.__module__.startswith("torch."))


def _sites(model: nn.Module) -> tuple[list[_Site], dict[str, fx.Graph]]:
    sites: list[_Site] = []
    graphs: dict[str, fx.Graph] = {}
    before: int | None = None  # channels of the last producer registered before the current holder
    for path, owner in model.named_modules():
        holder_input, before = before, producer_channels(owner) or before
        if isinstance(owner, nn.Sequential):
            sites += _registration_order_sites(path, owner, holder_input)
            continue
        if isinstance(owner, (*ACTIVATION_TYPES, nn.ModuleList, nn.ModuleDict)):
            continue
        if not _holds_activations(owner):
            continue
        try:
            graph = _ChildrenAsLeaves().trace(owner)
        except Exception:  # noqa: BLE001 - fx fails in many ways on dynamic code: use registration order
            sites += _registration_order_sites(path, owner, producer_channels(owner) or holder_input)
            continue
        residual = _has_residual_add(graph)
        found = False
        for node in graph.nodes:
            if not _is_activation_node(node, owner):
                continue
            found = True
            channels, reached_input = _walk_to_producer(_first_tensor_arg(node), owner)
            if channels is None and isinstance(owner, nn.modules.batchnorm._NormBase):
                channels = producer_channels(owner)
            if channels is None and reached_input:  # the holder's input: its preceding producer
                channels = holder_input
            child = node.target if node.op == "call_module" else None
            sites.append(_Site(path, owner, node, child, channels, _after_3x3(node, owner, residual)))
        if found:
            graphs[path] = graph
    return sites, graphs


def _registration_order_sites(path: str, owner: nn.Module, channels: int | None) -> list[_Site]:
    """Children taken to run in registration order (nn.Sequential does; the fallback for holders
    fx cannot trace): each activation gets the last producer before it, starting from ``channels``."""
    sites = []
    for name, child in owner.named_children():
        if isinstance(child, ACTIVATION_TYPES):
            sites.append(_Site(path, owner, None, name, channels, False))
        else:
            channels = _last_producer(child) or channels
    return sites


def _policy(policy: str | Policy) -> Callable[[_Site], bool]:
    if callable(policy):
        return lambda s: bool(policy(s.path, s.owner.get_submodule(s.child) if s.child else None))
    if policy == "all":
        return lambda s: True
    if policy == "resnet_after_3x3":
        return lambda s: s.after_3x3
    raise ValueError(f"policy must be one of {POLICIES} or a callable(path, module) -> bool, got {policy!r}")


def _build(activation: ActivationLike, site: _Site, old: nn.Module | None, kwargs: dict) -> nn.Module:
    needs_channels = isinstance(activation, str) and spec(activation).per_channel
    if needs_channels and site.channels is None:
        raise ValueError(f"cannot infer the channels of the activation at {site.path!r}: no Conv, Linear or "
                         f"norm layer produces its input; give that layer its own module or use a policy "
                         f"that skips it")
    if isinstance(activation, str) and spec(activation).channel_factor != 1:
        raise ValueError(f"{spec(activation).name!r} changes the number of channels and cannot replace the "
                         f"activation at {site.path!r}")
    inplace = bool(getattr(old, "inplace", False))
    return create(activation, channels=site.channels, **{"inplace": inplace, **kwargs})


class Replaced(list):
    """The module paths of the new activations, in model order (a list), and in ``rewritten`` the
    paths of the holders whose ``forward`` had to be rewritten: each is now a
    ``torch.fx.GraphModule`` (same parameters and buffers, class name kept) instead of its class."""

    def __init__(self, paths: list[str], rewritten: list[str]) -> None:
        super().__init__(paths)
        self.rewritten = rewritten


def replace_activations(model: nn.Module, name: ActivationLike, policy: str | Policy = "all",
                        **kwargs) -> Replaced:
    """Replace the activations of ``model`` with ``name`` (a registry name, class or callable).

    Args:
        model: changed in place.
        name: the new activation; per-channel ones get ``channels`` from each site's producer.
        policy: "all"; "resnet_after_3x3" (ACON paper: in each residual block only the
            activation right after a 3x3 conv + BatchNorm); or ``callable(path, module) -> bool``
            (module is None for a functional call such as ``F.relu``).
        **kwargs: constructor arguments of the new activation.

    Returns:
        The module paths of the new activations, in model order; ``.rewritten`` lists the holders
        turned into ``torch.fx.GraphModule`` (see ``Replaced``).

    All or nothing: if any site cannot be replaced, the error is raised with the model unchanged.
    """
    choose = _policy(policy)
    sites, graphs = _sites(model)
    chosen = [s for s in sites if choose(s)]
    by_child: dict[tuple[str, str], list[_Site]] = {}
    for s in sites:
        if s.child is not None:
            by_child.setdefault((s.owner_path, s.child), []).append(s)

    replaced: list[str] = []
    rewrite: dict[str, list[_Site]] = {}
    undo: list[Callable[[], None]] = []  # every change made, to take back if a later one fails
    try:
        for s in chosen:
            group = by_child.get((s.owner_path, s.child), [s]) if s.child is not None else [s]
            in_place = (s.child is not None and all(g in chosen for g in group)
                        and len({g.channels for g in group}) == 1)
            if in_place:
                if s is group[0]:
                    old = s.owner.get_submodule(s.child)
                    setattr(s.owner, s.child, _build(name, s, old, kwargs))
                    undo.append(lambda owner=s.owner, child=s.child, old=old: setattr(owner, child, old))
                    replaced.append(s.path)
            else:
                rewrite.setdefault(s.owner_path, []).append(s)
        for owner_path, owner_sites in rewrite.items():
            replaced += _rewrite(model, owner_path, graphs[owner_path], owner_sites, name, kwargs, undo)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    order = {p: i for i, (p, _) in enumerate(model.named_modules())}
    return Replaced(sorted(replaced, key=lambda p: order.get(p, len(order))), list(rewrite))


def _rewrite(model: nn.Module, owner_path: str, graph: fx.Graph, sites: list[_Site], name: ActivationLike,
             kwargs: dict, undo: list[Callable[[], None]]) -> list[str]:
    if not owner_path:
        where = ", ".join(s.path for s in sites)
        raise ValueError(f"the model's own forward calls activations that need a graph rewrite ({where}); "
                         f"wrap it, e.g. replace_activations(nn.Sequential(model), ...), and the model "
                         f"becomes a torch.fx.GraphModule inside the Sequential (listed in .rewritten)")
    owner = sites[0].owner
    index = {n: k for k, n in enumerate(n for n in graph.nodes if _is_activation_node(n, owner))}
    new_paths = []
    for s in sites:
        old = owner.get_submodule(s.child) if s.child else None
        new_name = f"{s.child or 'act'}_site{index[s.node]}"
        while hasattr(owner, new_name):
            new_name += "_"
        owner.add_module(new_name, _build(name, s, old, kwargs))
        undo.append(lambda owner=owner, new_name=new_name: delattr(owner, new_name))
        with graph.inserting_after(s.node):
            new = graph.call_module(new_name, (_first_tensor_arg(s.node),))
        s.node.replace_all_uses_with(new)
        graph.erase_node(s.node)
        new_paths.append(f"{owner_path}.{new_name}")
    graph.lint()
    parent_path, _, attr = owner_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, fx.GraphModule(owner, graph, class_name=type(owner).__name__))
    undo.append(lambda: setattr(parent, attr, owner))
    return new_paths
