"""The hooks that tell a model's conditioned activations what each of its calls says.

Inside a model (``track_decoding``; ``replace_activations`` installs it on decoders and on Hugging
Face models, and a model rebuilt from its config gets it too), every call of the model tells its
conditioned activations (those of the innermost Hugging Face model holding them: a T5 decoder's
call tells the decoder's) three things, read from the call's keywords as Hugging Face models take
them:

* which positions are padding (``attention_mask``, (B, L), 0 at pads; or the 4-D mask made from
  it, such as generate passes with a static cache: ``_from_4d``): the "sample" and "causal"
  statistics and the per-position BatchNorm statistics leave them out, so a sequence's numbers do
  not depend on how its batch is padded;
* which sequence each position belongs to, where the call packs several sequences in a row
  (``position_ids`` restarting within it, no ``attention_mask``: padding-free training, as
  transformers' ``DataCollatorWithFlattening`` makes it): "causal" statistics, and causal FReLU's
  window, restart at each sequence's first position, so a packed sequence's numbers are its numbers
  alone ("sample" pools a whole sample and refuses such a call);
* how many positions the KV cache already holds (``cache_position``, ``cache`` or its older name
  ``past_key_values``). A causal generator's running sums at every position are kept on the cache
  object they extend (not on the module, not in call order): a reordered cache (beam search), a
  cropped one (assisted decoding), two generations interleaved, a deep-copied or pickled model all
  continue from the right prefix (``running``).
  A reorder is recognised by the cache's own keys (each row's per-position key sums) and followed.
  Causal FReLU keeps its inputs there the same way, for the window of the next positions. On a
  static cache (fixed capacity, its length a tensor: what compiled decoding uses) they are kept as
  tensors by position instead, read and written by tensor index (``static_cache``), so a compiled
  decoding step is one graph for every token; its rows' moves are followed through the cache's
  own methods. An exported program cannot carry them from call to call: its export is refused.
  "sample" modules raise in a cached decode instead of computing other numbers than the full
  sequence's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from . import static_cache
from .context import CONTEXTS
from .model_call import CALL, ModelCall, Paged, refuse_paged, tracing, under_way
from .replay import end_call, remember
from .running import PREFIX, Prefix, follow, follow_row_moves, prefix_of

__all__ = ["is_hf_model", "sequence_starts", "track_decoding"]

_OWNER = "adaptact_owns_call"  # on the hooked model whose call set CALL on its conditioned modules
_HOOKED = "adaptact_hooked"
_CONDITIONED = "adaptact_conditioned"  # (structure, conditioned modules it tells), kept


def _decode_offset(kwargs: dict[str, Any]) -> int | None:
    """Positions already in the cache a Hugging Face model is called with; None when the call
    neither gives nor asks for one."""
    position = kwargs.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    cache = _cache(kwargs)
    if cache is None:
        return 0 if kwargs.get("use_cache") else None
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # the legacy tuple of (key, value) per layer
    return 0


def _readable(kwargs: dict[str, Any]) -> bool:
    """Whether ``_decode_offset`` reads how many positions the call's cache holds (from
    ``cache_position``, the cache's ``get_seq_length`` or a legacy tuple), rather than taking 0."""
    position, cache = kwargs.get("cache_position"), _cache(kwargs)
    return ((isinstance(position, Tensor) and position.numel() > 0) or hasattr(cache, "get_seq_length")
            or (isinstance(cache, (tuple, list)) and bool(cache) and isinstance(cache[0], (tuple, list))))


def _refuse_unreadable(modules: list[tuple[str, nn.Module]], cache: Any, positions: object,
                       starts: Tensor | None, mask: Tensor | None) -> None:
    """A one-line error where a call gives a cache whose length cannot be read (a paged cache:
    transformers' continuous batching) with ``position_ids`` not 0 at a sequence's first (real)
    position: it continues sequences whose earlier positions' statistics were never kept with that
    cache, and a pooling activation would start them afresh. A prompt's first call passes."""
    if not isinstance(positions, Tensor) or positions.ndim != 2 or not any(
            m.__dict__.get("context") != "token" for _, m in modules):
        return
    t = positions.shape[1]
    if starts is not None and starts.shape[1] == t:
        first = starts.expand(positions.shape[0], t) == torch.arange(t, device=positions.device)
        if mask is not None and mask.shape == first.shape:
            first = first & mask.to(first.device)
        at = positions[first.to(positions.device)]
    elif mask is not None and mask.shape[1] == t and mask.shape[0] == positions.shape[0]:
        at = positions.gather(1, mask.int().argmax(1, keepdim=True).to(positions.device))
    else:
        at = positions[:, :1]
    if bool((at != 0).any()):
        raise ValueError(f"this call continues sequences (their position_ids do not start at 0) from a "
                         f"{type(cache).__name__}, whose length adaptact cannot read (continuous batching): "
                         f"the statistics of their earlier positions were never kept there; use "
                         f"model.generate, or convert with context='token'")


def _paged(modules: list[tuple[str, nn.Module]], kwargs: dict[str, Any]) -> Paged | None:
    """``Paged`` from the keywords transformers' continuous batching calls a model with (one row of
    its requests' new positions, ``cu_seq_lens_q`` between them, and the first slot group's
    ``read_index`` (every key of each request, in order, its new ones last; empty where no request
    has earlier positions) and ``write_index`` (its new keys' slots)); None for other calls. Only
    running sums continue so: an activation pooling a whole sample refuses such a call in one line,
    as a causal FReLU's window does (``causal_window``)."""
    positions, bounds = kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q")
    reads, writes, keys = kwargs.get("read_index"), kwargs.get("write_index"), kwargs.get("cu_seq_lens_k")
    if not (isinstance(positions, Tensor) and positions.ndim == 2 and positions.shape[0] == 1
            and isinstance(bounds, Tensor) and isinstance(reads, (list, tuple)) and reads
            and isinstance(writes, (list, tuple)) and writes and isinstance(keys, dict)):
        return None
    t = positions.shape[1]
    read, slots = reads[0].long(), writes[0].long()
    if slots.numel() != t or bounds.numel() < 2 or int(bounds[-1]) != t:  # (a padded batch: refused)
        return None
    whole = [name for name, m in modules if m.__dict__.get("context") == "sample"]
    if whole:
        refuse_paged(whole[0])
    device = positions.device
    bounds = bounds.long().to(device)
    lengths = bounds.diff()
    request = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    firsts, ends = bounds[:-1].tolist(), bounds[1:].tolist()
    starting = positions[0].index_select(0, bounds[:-1]).tolist()  # each request's first new position
    before = [-1] * len(firsts)
    if any(starting):
        key_bounds = [v for v in keys.values() if isinstance(v, Tensor) and int(v[-1]) == read.numel()]
        if not key_bounds:
            return None  # the slots before cannot be found: refused by ``_refuse_unreadable``
        keys_end = key_bounds[0].long()[1:].tolist()
        at_key = [end - (stop - first) - 1 if at else 0  # the key before each request's first new one
                  for at, first, stop, end in zip(starting, firsts, ends, keys_end, strict=True)]
        found = read.index_select(0, torch.tensor(at_key, device=read.device)).tolist()
        before = [slot if at else -1 for slot, at in zip(found, starting, strict=True)]
    starts = bounds[:-1].index_select(0, request).unsqueeze(0)
    return Paged(starts=starts, positions=positions, request=request, before=before,
                 last=[stop - 1 for stop in ends], slots=slots.tolist())


def _refuse_exporting(modules: list[tuple[str, nn.Module]]) -> None:
    """A one-line error where a call on a static cache is exported (ExecuTorch's decoding program):
    an exported program does not carry the running statistics kept beside the cache from one call
    to the next, so each call would start them afresh."""
    pooling = [name for name, m in modules if m.__dict__.get("context") != "token"]
    if pooling and torch.compiler.is_exporting():
        raise ValueError(f"{pooling[0]} keeps its running statistics beside the static cache from one call "
                         f"to the next, which an exported program does not carry: export the model without "
                         f"a cache (use_cache=False), or convert it with context='token'")


def _cache(kwargs: dict[str, Any]) -> Any:
    return kwargs.get("past_key_values", kwargs.get("cache"))


# A model's conditioned modules are found by one walk over its modules, kept on the model until the
# structure may have changed: ``_structure`` counts the registrations of submodules anywhere in the
# process (torch's global registration hook: setattr, add_module, a container's items), but those
# made inside a tracked model's call in this thread that register no conditioned module themselves
# (transformers slices its ModuleList of layers at every call, re-registering them in a temporary
# list), nor those made while a compiled forward is traced. A decoded token then costs no walk.
_structure = [0]


def _registered(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    if torch.compiler.is_compiling():  # a compiled forward's temporary lists: read, the count would be a
        return  # guard that every call's registrations broke (each call of any compiled model recompiled)
    if (submodule is not None and submodule.__dict__.get("context") in CONTEXTS) or not getattr(
            under_way, "depth", 0):
        _structure[0] += 1


nn.modules.module.register_module_module_registration_hook(_registered)


def _conditioned(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that condition on positions, by name, leaving out those inside a
    Hugging Face model inside it: that model's own call tells them its own padding and cache (a T5
    decoder's are not its encoder's), or nothing where it takes no mask (a VLM's vision tower sees
    patches, not the text). Kept on the model while ``_structure`` stands (a compiled call walks the
    modules as it is traced instead: read there, the count of registrations anywhere in the process
    would be a guard that any other model's calls broke); plain attributes are read from
    ``__dict__`` without nn.Module's slow lookup."""
    compiling = torch.compiler.is_compiling()
    kept = None if compiling else model.__dict__.get(_CONDITIONED)
    if kept is not None and kept[0] == _structure[0]:
        return kept[1]
    conditioned: list[tuple[str, nn.Module]] = []
    seen = {id(model)}

    def walk(module: nn.Module, prefix: str) -> None:  # named_modules' order, each module once
        for name, child in module._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            if child.__dict__.get("context") in CONTEXTS:
                conditioned.append((prefix + name, child))
            elif not is_hf_model(child):
                walk(child, f"{prefix}{name}.")

    walk(model, "")
    if not compiling:
        model.__dict__[_CONDITIONED] = (_structure[0], conditioned)
    return conditioned


def sequence_starts(position_ids: Tensor) -> Tensor | None:
    """(B, T) long from ``position_ids`` (B, T): the position each position's sequence starts at,
    a sequence ending wherever the next position id is not one more (as transformers finds packed
    sequences); None where no row restarts (found only outside tracing: ``tracing``)."""
    restarts = position_ids.diff(dim=1) != 1
    if not tracing() and not bool(restarts.any()):
        return None
    first = torch.cat([torch.ones_like(restarts[:, :1]), restarts], dim=1)
    at = torch.arange(position_ids.shape[1], device=position_ids.device)
    return torch.where(first, at, 0).cummax(dim=1).values


def _real_positions(mask: object) -> Tensor | None:
    if isinstance(mask, Tensor) and mask.ndim == 2 and (tracing() or not bool(mask.all())):
        return mask.bool()
    return None


def _attention_mask(kwargs: dict[str, Any], offset: int | Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The call's padding (``ModelCall.mask``) and packed sequences (``ModelCall.starts``) read from
    its ``attention_mask``: a 2-D mask as it is; a 4-D one (B, H, q, K) read by ``_from_4d``, or flex
    attention's ``BlockMask`` by ``_from_block_mask``, such as generate makes for a static cache (for
    each kind of layer: the full-attention layers' is read)."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, dict):  # one mask per kind of layer (transformers' mask mapping)
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if isinstance(mask, Tensor) and mask.ndim == 4:
        return _from_4d(mask, offset)
    if isinstance(mask, BlockMask):
        return _from_block_mask(mask, offset), None
    return _real_positions(mask), None


def _own_keys(q: int, k: int, offset: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """The call's q positions (0..q-1) and the column of each one's own key among a mask's k: the
    keys are positions where they cover them (k >= offset + q; always for a static cache's full
    attention, whose ``offset`` is a tensor), else a window ending at the call's last position (a
    sliding layer's)."""
    at = torch.arange(q, device=device)
    if isinstance(offset, Tensor):
        return at, offset.to(device) + at
    return at, (offset + at if k >= offset + q else k - q + at)


def _from_block_mask(mask: BlockMask, offset: int | Tensor) -> Tensor | None:
    """Which of a call's q positions are real, (B, q) (None: all), from flex attention's
    ``BlockMask`` (generate makes one for a static cache under ``attn_implementation=
    "flex_attention"``): its ``mask_mod`` at each position's own key, as ``_from_4d`` reads a
    dense mask (its query index counts from the call's first position, its keys are positions)."""
    q, k = mask.seq_lengths
    device = mask.kv_indices.device
    at, own = _own_keys(q, k, offset, device)
    head = torch.zeros((), dtype=torch.long, device=device)
    per_position = torch.vmap(lambda b, i, key: mask.mask_mod(b, head, i, key), in_dims=(None, 0, 0))
    rows = torch.arange(mask.shape[0], device=device)
    real = torch.vmap(per_position, in_dims=(0, None, None))(rows, at, own)
    return None if not tracing() and bool(real.all()) else real.bool()


def _from_4d(mask: Tensor, offset: int | Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Which of a call's q positions are real, (B, q) (None: all), from a 4-D attention mask
    (B, H, q, K) (bool, True where a query attends; or additive float, 0 there), whose head 0 is
    read: a real position attends to itself, a pad to nothing (transformers masks pads as keys). Its
    own key is column ``offset + i`` where the keys are positions 0.. (K >= offset + q), else the
    window ending at it (a sliding layer's). At offset 0, a block-diagonal mask (each query attending
    from its own sequence's first position, as packed sequences are masked) also gives the
    ``sequence_starts`` (None otherwise: one sequence per row, or a sliding window)."""
    attend = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
    b, q, k = attend.shape
    if k < q:
        return None, None
    at, own = _own_keys(q, k, offset, mask.device)
    real = attend[:, at, own]  # (B, q)
    starts = None
    if tracing():
        return real, None  # (no packing found by reading the mask's values)
    if not offset:
        first = torch.where(real, attend.int().argmax(-1), at)  # the first key attended; a pad: itself
        before = torch.cat([first[:, :1], first[:, :-1]], dim=1)
        if bool(((first == before) | (first == at)).all()) and int(((first == at) & real).sum(1).max()) > 1:
            starts = first
    return (None if bool(real.all()) else real), starts


def _before_call(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    if tracing() and _dynamic_cache(kwargs):
        _before_call_eagerly(model, args, kwargs)
        return
    under_way.depth = getattr(under_way, "depth", 0) + 1  # ``_after_call`` (always called) takes it back
    try:
        _tell(model, kwargs)
    except BaseException:
        under_way.depth -= 1
        raise


def _dynamic_cache(kwargs: dict[str, Any]) -> bool:
    """Whether a call is given a cache other than a static one (``static_cache.static_length``): the
    running sums kept with it are Python state read at Python offsets, which a traced call would
    guard on (a graph per position), so a traced call's hooks, and its activations, run eagerly
    (``ModelCall.eager``)."""
    cache = _cache(kwargs)
    return cache is not None and static_cache.static_length(cache) is None


def _tell(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Tell ``model``'s conditioned activations what this call's keywords say of padding and cache."""
    modules = _conditioned(model)
    if not modules or any(CALL in m.__dict__ for _, m in modules):
        return  # nothing to tell, or told in this call already
    cache = _cache(kwargs)
    if kwargs.get("use_cache") is None and cache is None and not model.training:  # the config's default
        kwargs = {**kwargs, "use_cache": getattr(getattr(model, "config", None), "use_cache", None)}
    static = None if cache is None else static_cache.static_length(cache)
    if static is None:
        offset = _decode_offset(kwargs)
        starts = _packed(modules, kwargs, offset)
        at: int | Tensor = offset or 0
    else:  # positions by tensor (``static_cache``); read as a number only eagerly
        _refuse_exporting(modules)
        position = static[0].clone()
        offset = None if tracing() else int(position)
        at = position if offset is None else offset
        starts = _packed(modules, kwargs, 1 if offset is None else offset)
    prefix = None
    if offset is not None or static is not None:
        prefix = Prefix() if cache is None else prefix_of(cache)
        if cache is not None:
            follow_row_moves(cache)
        if static is not None:
            if prefix.static is None:
                prefix.static = static_cache.new_kept()
        elif cache is not None:
            follow(prefix, cache, offset or 0)
    mask, packed = _attention_mask(kwargs, at)
    if packed is not None:
        _refuse_whole(modules, "its 4-D attention_mask is block-diagonal")
    starts = packed if starts is None else starts
    paged = None
    if cache is not None and not _readable(kwargs) and not tracing():
        paged = _paged(modules, kwargs)
        if paged is None:
            _refuse_unreadable(modules, cache, kwargs.get("position_ids"), starts, mask)
        else:
            starts = None
    call = ModelCall(offset, prefix, mask, starts, paged)
    if static is not None:
        call.position, call.capacity = position, static[1]
    call.eager = cache is not None and static is None
    told = call.cached or call.mask is not None or call.starts is not None or paged is not None
    if model.training and torch.is_grad_enabled():
        remember(model, modules, call if told else None)
    if not told:
        return  # a training forward without pads: nothing to tell (their compiled graphs stay as they are)
    model.__dict__[_OWNER] = (call, modules)
    for name, m in modules:
        m.__dict__[CALL] = (call, name)


def _packed(modules: list[tuple[str, nn.Module]], kwargs: dict[str, Any],
            offset: int | None) -> Tensor | None:
    """``sequence_starts`` of a call that packs sequences in its rows (``position_ids`` restarting
    within a row, no ``attention_mask``: padding-free training, as transformers'
    ``DataCollatorWithFlattening`` makes it; None otherwise). "causal" statistics restart at each
    sequence; a one-line error where an activation pools a whole sample ("sample": transformers
    keeps packed sequences apart only in causal attention) or where the call continues a cache."""
    positions = kwargs.get("position_ids")
    if not (isinstance(positions, Tensor) and positions.ndim == 2 and positions.shape[1] > 1
            and kwargs.get("attention_mask") is None):
        return None
    pooling = [name for name, m in modules if m.__dict__.get("context") != "token"]
    if not pooling:
        return None
    if tracing():  # the values unread: the causal sums follow any packing, nothing can be refused
        whole = any(m.__dict__.get("context") == "sample" for _, m in modules)
        return None if whole or offset else sequence_starts(positions)
    starts = sequence_starts(positions)
    if starts is None:
        return None
    how = "position_ids restart within it, no attention_mask"
    _refuse_whole(modules, how)
    if offset:
        raise ValueError(f"{pooling[0]} would continue a cache of {offset} positions, and this call packs "
                         f"several sequences in a row ({how}): pad the batch (an attention_mask)")
    return starts


def _refuse_whole(modules: list[tuple[str, nn.Module]], how: str) -> None:
    """A one-line error where a call packing sequences in a row (``how`` it shows) meets an
    activation pooling a whole sample: it cannot tell them apart."""
    whole = [name for name, m in modules if m.__dict__.get("context") == "sample"]
    if whole:
        raise ValueError(f"{whole[0]} pools every position of a sample, and this call packs several "
                         f"sequences in a row ({how}): pad the batch (a 2-D attention_mask), or convert with "
                         f"context='causal' (statistics restart at each packed sequence) or 'token'")


def _after_call(model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    if tracing() and _dynamic_cache(kwargs):
        _after_call_eagerly(model, args, kwargs, output)
        return
    under_way.depth = max(getattr(under_way, "depth", 0) - 1, 0)
    end_call(model, output)
    told = model.__dict__.pop(_OWNER, None)
    if told is None:
        return
    call, modules = told
    for _, m in modules:  # the ones ``_before_call`` told
        m.__dict__.pop(CALL, None)
    if call.prefix is None or not call.prefix.sums:
        return
    cache = getattr(output, "cache", None)
    if cache is None:  # transformers before its output's ``cache`` (where reading it does not warn)
        cache = getattr(output, "past_key_values", None)
    if cache is None:
        cache = _cache(kwargs)
    if cache is not None:
        if getattr(cache, PREFIX, None) is not call.prefix:
            prefix_of(cache).sums = call.prefix.sums  # a cache made inside the call
        prefix_of(cache).take_fingerprint(cache)


_before_call_eagerly = torch.compiler.disable(_before_call)
_after_call_eagerly = torch.compiler.disable(_after_call)


def is_hf_model(m: object) -> bool:
    """A Hugging Face model (a ``PreTrainedModel``; transformers is not imported to tell)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(m).__mro__)


def _takes_model_keywords(m: nn.Module) -> bool:
    """Hugging Face models: they take ``attention_mask`` and the cache."""
    return is_hf_model(m) and "attention_mask" in inspect.signature(type(m).forward).parameters


def track_decoding(model: nn.Module) -> Callable[[], None]:
    """Hook ``model`` (and the Hugging Face models inside it) so that the conditioned activations
    it holds learn, at every call, its padding and its cache (module docstring). Each activation
    is told by the innermost Hugging Face model holding it, from that model's own call (a T5
    decoder's mask and cache are not its encoder's; a wrapper such as PEFT calling the outer
    model's ``forward`` directly still calls the inner models); one inside a model that takes no
    mask (a VLM's vision tower) is told nothing. The hooks are module-level functions, so a hooked
    model deep-copies and pickles. Idempotent; returns a function that removes the hooks."""
    targets = [model] + [m for m in model.modules() if m is not model and _takes_model_keywords(m)]
    handles = []
    hooked = []
    for m in targets:
        if m.__dict__.get(_HOOKED):
            continue
        handles += [m.register_forward_pre_hook(_before_call, with_kwargs=True),
                    m.register_forward_hook(_after_call, with_kwargs=True, always_call=True)]
        m.__dict__[_HOOKED] = True
        hooked.append(m)

    def remove() -> None:
        for handle in handles:
            handle.remove()
        for m in hooked:
            m.__dict__.pop(_HOOKED, None)

    return remove
