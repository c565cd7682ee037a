"""The hooks on a model (nn/tracking.py): a padded batch and packed sequences give each sequence its
own numbers, 4-D masks and block masks read as their 2-D ones, calls that cannot be continued are
refused in one line, only calls with a cache or padding count as decoding, the conditioned modules
are found again only after a registration, and importing adaptact adds no recompilation."""

import copy

import pytest
import torch
from torch import nn

import adaptact
from adaptact.nn.context import decoding
from adaptact.nn.running import PREFIX
from adaptact.nn.tracking import track_decoding
from tests.nn.test_context import (B, BACKENDS, C, T, WITH_FRELU, WITH_FRELU_IDS, Cache, Host,
                                   _four_d, _module, _packed)


def _padded(x, lengths, side):
    """Rows of ``x`` cut to ``lengths``, padded with noise on ``side`` to x's length, and the mask."""
    padded, mask = torch.randn_like(x) * 5, torch.zeros(x.shape[:2], dtype=torch.long)
    for row, n in enumerate(lengths):
        at = slice(0, n) if side == "right" else slice(x.shape[1] - n, x.shape[1])
        padded[row, at], mask[row, at] = x[row, :n], 1
    return padded, mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("context", ["sample", "causal"])
@pytest.mark.parametrize("case", WITH_FRELU, ids=WITH_FRELU_IDS)
def test_a_padded_batch_gives_each_sequence_its_own_numbers(case, context, side):
    """Eval mode: each row of a padded batch (attention_mask marks the pads) equals that sequence
    alone; training: the same batch padded to two lengths gives equal outputs at its real positions."""
    name, kwargs = case
    host = Host(_module(name, kwargs, context))
    track_decoding(host)
    x, lengths = torch.randn(B, T, C), [T, 5, 3, 7]
    xp, mask = _padded(x, lengths, side)
    host.eval()
    y = host(xp, attention_mask=mask)
    for row, n in enumerate(lengths):
        alone = host(x[row: row + 1, :n])[0]
        got = y[row, :n] if side == "right" else y[row, T - n:]
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(y).all()
    host.train()
    longer, longer_mask = _padded(torch.cat((x, torch.randn(B, 3, C)), 1), lengths, side)
    a, b = copy.deepcopy(host)(xp, attention_mask=mask), host(longer, attention_mask=longer_mask)
    b = b[:, :T] if side == "right" else b[:, 3:]
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", WITH_FRELU, ids=WITH_FRELU_IDS)
def test_sequences_packed_in_a_row_are_each_their_own(case, backend):
    """Padding-free training packs sequences in a row (``position_ids`` restarting, no mask: transformers'
    ``DataCollatorWithFlattening``): causal statistics and FReLU's window restart at each sequence, so
    each packed sequence's outputs and input gradients are its own alone; two rows packed differently,
    in eval mode, and one row in training (batch 1: BatchNorm's running statistics, as alone)."""
    name, kwargs = case
    host = Host(_module(name, kwargs, "causal", backend))
    track_decoding(host)
    for training, lengths in ((False, [[4, 1, 4], [2, 7]]), (True, [[3, 6]])):
        host.train(training)
        x = torch.randn(len(lengths), T, C, requires_grad=True)
        y = host(x, position_ids=_packed(lengths))
        weights = torch.randn_like(y)
        (y * weights).sum().backward()
        for row, parts in enumerate(lengths):
            start = 0
            for n in parts:
                piece = x[row:row + 1, start:start + n].detach().requires_grad_()
                alone = host(piece)
                torch.testing.assert_close(y[row, start:start + n], alone[0], rtol=1e-5, atol=1e-5)
                (alone * weights[row:row + 1, start:start + n]).sum().backward()
                torch.testing.assert_close(x.grad[row, start:start + n], piece.grad[0], rtol=1e-5, atol=1e-5)
                start += n


@pytest.mark.parametrize("case", [("meta_acon_c", {}), ("frelu", {"dims": 1})], ids=["meta_acon_c", "frelu"])
def test_a_4d_attention_mask_is_read_as_its_2d_one(case):
    """4-D masks (generate makes them for static caches; models pass them on): the pads they mask are
    the 2-D mask's, bool or additive, under a sliding window too (which is no packing), and flex
    attention's BlockMask's (before: not read, pads counted); "sample" reads a bidirectional one's
    pads."""
    name, kwargs = case
    x, lengths = torch.randn(B, T, C), [T, 5, 3, 7]
    for context in ("causal", "sample") if name == "meta_acon_c" else ("causal",):
        host = Host(_module(name, kwargs, context)).eval()
        track_decoding(host)
        xp, mask = _padded(x, lengths, "left" if context == "causal" else "right")
        want = host(xp, attention_mask=mask)
        causal = context == "causal"
        for four_d in (_four_d(mask, causal), _four_d(mask, causal, additive=True),
                       *((_four_d(mask, window=3),) if causal else ()), _block_mask(mask, causal)):
            torch.testing.assert_close(host(xp, attention_mask=four_d), want, rtol=0, atol=0)


def _block_mask(keys, causal=True):
    """Flex attention's BlockMask of the same masking as ``_four_d``."""
    from torch.nn.attention.flex_attention import create_block_mask

    real = keys.bool()

    def mask_mod(b, h, q, kv):
        return real[b, kv] & (kv <= q) if causal else real[b, kv]

    return create_block_mask(mask_mod, keys.shape[0], None, keys.shape[1], keys.shape[1], device="cpu")


def test_packed_sequences_where_a_sample_is_pooled_or_a_cache_continues_are_refused():
    """"sample" pools a whole row (transformers keeps packed sequences apart only in causal
    attention), and a cache continued with restarting position ids has no sequence to continue:
    one-line errors; "token" takes any packing."""
    x, positions = torch.randn(1, T, C), _packed([[4, 5]])
    for context, keywords, match in (("sample", {}, "pools every position of a sample"),
                                     ("causal", {"cache_position": torch.arange(3, 3 + T)},
                                      "would continue a cache of 3 positions")):
        host = Host(_module("meta_acon_c", {}, context)).eval()
        track_decoding(host)
        with pytest.raises(ValueError, match=f"{match}, and this call packs several sequences") as info:
            host(x, position_ids=positions, **keywords)
        assert "\n" not in str(info.value)
    host = Host(_module("meta_acon_c", {}, "sample")).eval()
    track_decoding(host)
    block = torch.block_diag(torch.ones(4, 4), torch.ones(5, 5)).bool()[None, None]
    with pytest.raises(ValueError, match="its 4-D attention_mask is block-diagonal"):
        host(x, attention_mask=block)
    host = Host(_module("meta_acon_c", {}, "token")).eval()
    track_decoding(host)
    torch.testing.assert_close(host(x, position_ids=positions), host(x), rtol=0, atol=0)


def test_a_call_continuing_a_cache_whose_length_cannot_be_read_is_refused():
    """A cache object without ``get_seq_length`` nor ``cache_position`` (a paged cache) is taken to
    start empty; position ids not 0 at a sequence's first real position show a continuation, whose
    earlier statistics were never kept: one line. A prompt's call passes, left-padded or packed."""
    host = Host(_module("meta_acon_c", {}, "causal")).eval()
    track_decoding(host)
    x = torch.randn(2, T, C)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :3] = 0
    prompt = (mask.cumsum(1) - 1).clamp(min=0)  # as generate makes them: 0 at each first real position
    host(x, past_key_values=Cache(), position_ids=prompt, attention_mask=mask)
    host(x, past_key_values=Cache(), position_ids=_packed([[4, 5], [9]]))
    for positions in (prompt + 5, torch.arange(5, 5 + T).expand(2, T)):
        with pytest.raises(ValueError, match=r"continues sequences .* from a Cache, whose length adaptact"):
            host(x, past_key_values=Cache(), position_ids=positions, attention_mask=mask)
    token = Host(_module("meta_acon_c", {}, "token")).eval()
    track_decoding(token)
    token(x, past_key_values=Cache(), position_ids=prompt + 5)


def test_only_calls_with_a_cache_or_padding_count_as_decoding():
    """A training forward (no cache given or asked for, no pads) carries no state to a next call,
    so its generator may compile with the activation; a call with a cache or pads does not."""
    act = _module("meta_acon_c", {}, "causal")
    seen: list[bool] = []

    class Model(Host):
        def forward(self, x, **kwargs):
            seen.append(decoding(act))
            return act(x)

    model = Model(act)
    track_decoding(model)
    x = torch.randn(B, T, C)
    pads = torch.ones(B, T, dtype=torch.long)
    model(x)
    model(x, attention_mask=pads)
    model(x, use_cache=True)
    model(x, cache_position=torch.arange(T))
    pads[0, 0] = 0
    model(x, attention_mask=pads)
    assert seen == [False, False, True, True, True]
    assert not decoding(act)  # after the call
    cache = Cache()
    model(x, past_key_values=cache, use_cache=True)
    assert set(getattr(cache, PREFIX).sums) == {"act"}


def test_a_models_conditioned_modules_are_found_again_after_a_registration_not_at_every_call():
    """The walk over a tracked model's modules is kept until a module is registered outside a call
    (or a conditioned one anywhere); transformers re-registers its layers in a temporary
    ModuleList at every call, which keeps it."""
    from adaptact.nn import tracking

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            act = adaptact.create("meta_acon_c", channels=4, channel_dim=-1, context="causal")
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), act)])  # a decoder layer

        def forward(self, x, use_cache=None):
            for layer in nn.ModuleList(list(self.layers)):  # as transformers slices its layers
                x = layer(x)
            return x

    net = Net().eval()
    track_decoding(net)
    with torch.no_grad():
        net(torch.randn(1, 3, 4), use_cache=True)
        kept = net.__dict__[tracking._CONDITIONED]
        net(torch.randn(1, 3, 4), use_cache=True)
        assert net.__dict__[tracking._CONDITIONED] is kept  # no walk: the in-call registrations kept it
        net.extra = adaptact.create("aprelu", channels=4, channel_dim=-1, context="causal")
        assert [n for n, _ in tracking._conditioned(net)] == ["layers.0.1", "extra"]
        inner = nn.Sequential(adaptact.create("dy_relu_b", channels=4, channel_dim=-1, context="causal"))
        net.layers.append(inner)  # a subtree holding a conditioned module, built before
        assert [n for n, _ in tracking._conditioned(net)] == ["layers.0.1", "layers.1.0", "extra"]


def test_importing_adaptact_adds_no_recompilation_to_a_model_that_slices_its_layers():
    """A compiled model that slices its ModuleList in its forward (transformers' decoders do, at
    every call) is compiled once for calls of one shape. adaptact counts module registrations (to
    know when a model's structure changed); traced, that count became a guard that every call's
    slicing broke, so every call of any compiled model recompiled (before: 3 graphs for 3 calls)."""

    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x):
            for layer in self.layers[:2]:
                x = layer(x)
            return x

    graphs = []

    def counting(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = torch.compile(Sliced(), backend=counting)
    x = torch.randn(2, 4)
    for _ in range(3):
        model(x)
    assert len(graphs) == 1
