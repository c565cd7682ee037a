"""Put any activation into an existing network: ``replace_activations(model, "acon_c")``.

How it works. The activation sites are found with their producers (``sites``: each holder traced
with torch.fx, each call followed back to the layer that gives its channels). Then:

* A child module whose every call site is replaced with one channel count is swapped in
  place (``setattr``): the module tree and the other parameters keep their names.
* A child called at sites that need different modules (torchvision's Bottleneck calls one
  ``self.relu`` after 64-, 64- and 256-channel tensors; a policy may pick only some sites)
  and functional calls are rewritten in the traced graph, each site getting its own module
  named ``<child>_site<k>`` or ``act_site<k>`` (k: its place among the holder's activation
  calls); the holder is replaced by that ``torch.fx.GraphModule``
  in its parent. The top-level module itself cannot be swapped this way: wrap it
  (``nn.Sequential(model)``) if its own ``forward`` needs rewriting.
* A holder that fx cannot trace falls back to registration order (``sites``), and its
  activation children are swapped.

Anything that cannot be handled raises ValueError naming the layer.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .matching import FIT_TOLERANCE, fitted, frozen_knobs, match
from .nn import track_decoding
from .nn.base import int_at_least
from .nn.tracking import is_hf_model
from .registry import ActivationLike, create, spec
from .sites import Site, find_sites, first_tensor_arg, is_activation_node, left_alone

__all__ = ["POLICIES", "Replaced", "decoder_flag", "is_causal_model", "replace_activations", "token_options"]

Policy = Callable[[str, nn.Module | None], bool]
POLICIES = ("all", "resnet_after_3x3")


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


def _policy(policy: str | Policy) -> Callable[[Site], bool]:
    if callable(policy):
        return lambda s: bool(policy(s.path, _child(s.owner, s.child) if s.child else None))
    if policy == "all":
        return lambda s: True
    if policy == "resnet_after_3x3":
        return lambda s: s.after_3x3
    raise ValueError(f"policy must be one of {POLICIES} or a callable(path, module) -> bool, got {policy!r}")


def _build(activation: ActivationLike, site: Site, old: nn.Module | None, kwargs: dict,
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


def _left(model: nn.Module, sites: list[Site], chosen: list[Site]) -> list[str]:
    skipped = {s.path for s in sites if s not in chosen}
    left = [f"{path} ({type(m).__name__})" for path, m in model.named_modules() if path and left_alone(m)]
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
              sites: list[Site]) -> tuple[Callable[[Site], dict], list[str]]:
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


def _input_ranks(model: nn.Module, sites: list[Site]) -> dict[str, int]:
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


def _channel_override(channels: int | Mapping[str, int] | None, sites: list[Site]) -> dict[str, int]:
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


def _target(site: Site, old: nn.Module | None) -> Callable[[torch.Tensor], torch.Tensor]:
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


def _saturated(model: nn.Module, matched: list[str]) -> str:
    """What a conversion with ``init="match"`` must say where the fit saturated the knobs that make
    the activation learn (``matching.frozen_knobs``): their gradients vanish, so fine-tuning leaves
    it as fitted, the activation it replaced. "" where none is; sites of one kind and fit are
    probed once (``matching.fitted``: a probe of LLaMA-7B's width takes seconds)."""
    frozen: dict[str, list[str]] = {}
    seen: dict[tuple, list[str]] = {}
    for path in matched:
        module = model.get_submodule(path)
        key = fitted(module)
        if key not in seen:
            seen[key] = frozen_knobs(module)
        if seen[key]:
            frozen.setdefault(f"{type(module).__name__}'s {', '.join(seen[key])}", []).append(path)
    if not frozen:
        return ""
    where = "; ".join(f"{knobs} at {len(paths)} site{'s' * (len(paths) > 1)} ({', '.join(paths[:3])}"
                      f"{', ...' if len(paths) > 3 else ''})" for knobs, paths in frozen.items())
    return (f"init='match' reached the activation it replaces by saturating what makes the new one "
            f"learn: {where}. Their gradients vanish, so fine-tuning leaves these activations as "
            f"matched; init='paper' trains them from the papers' values, at the cost of the function")


def _matched(new: nn.Module, site: Site, old: nn.Module | None, init: str, path: str,
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
    sites, graphs, causal_attention = find_sites(model, untraced)
    causal = causal_attention or is_causal_model(model)
    chosen = [s for s in sites if choose(s)]
    override = _channel_override(channels, sites)
    options, notes = _contexts(model, name, kwargs, causal, chosen)

    def build(s: Site, old: nn.Module | None, path: str) -> nn.Module:
        if init == "match" and s.guessed and s.path not in override:
            raise ValueError(f"init='match' needs the channels of the activation at {path!r}, which cannot "
                             f"be traced (torch.fx cannot trace its holder): pass channels=")
        new = _matched(_build(name, s, old, options(s), override.get(s.path)), s, old, init, path, fits)
        return new.train(s.owner.training)  # a model converted in eval mode stays in eval mode

    by_child: dict[tuple[str, str], list[Site]] = {}
    for s in sites:
        if s.child is not None:
            by_child.setdefault((s.owner_path, s.child), []).append(s)

    replaced: list[str] = []
    fits: dict[str, float] = {}
    rewrite: dict[str, list[Site]] = {}
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
    saturated = _saturated(model, list(fits))
    if saturated:
        notes.append(saturated)
        warnings.warn(saturated, RuntimeWarning, stacklevel=2)
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


def _rewrite(model: nn.Module, owner_path: str, graph: fx.Graph, sites: list[Site],
             build: Callable[[Site, nn.Module | None, str], nn.Module],
             undo: list[Callable[[], None]]) -> list[str]:
    if not owner_path:
        where = ", ".join(s.path for s in sites)
        raise ValueError(f"the model's own forward calls activations that need a graph rewrite ({where}); "
                         f"wrap it, e.g. replace_activations(nn.Sequential(model), ...), and the model "
                         f"becomes a torch.fx.GraphModule inside the Sequential (listed in .rewritten)")
    owner = sites[0].owner
    index = {n: k for k, n in enumerate(n for n in graph.nodes if is_activation_node(n, owner))}
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
            new = graph.call_module(new_name, (first_tensor_arg(s.node),))
        s.node.replace_all_uses_with(new)
        graph.erase_node(s.node)
        new_paths.append(path)
    graph.lint()
    parent_path, _, attr = owner_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, fx.GraphModule(owner, graph, class_name=type(owner).__name__))
    undo.append(lambda: setattr(parent, attr, owner))
    return new_paths
