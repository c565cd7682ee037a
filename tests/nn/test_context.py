"""Sequence contexts of the input-conditioned activations: "causal" never lets a position see a
later one (train and eval), equals the "sample" output of the prefix in eval mode, carries its
prefix across cached calls; "token" sees its own position alone."""

import copy
import pickle

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import torch
from torch import nn

import adaptact
from adaptact.nn.context import decoding, position_statistics, shifted_conv1d
from adaptact.nn.model_call import CALL
from adaptact.nn.running import PREFIX
from adaptact.nn.tracking import track_decoding

CONDITIONED = [
    ("meta_acon_c", {}), ("meta_acon_c", {"granularity": "layer"}), ("meta_acon_c", {"norm": "none"}),
    ("aprelu", {}), ("aprelu", {"granularity": "layer"}), ("dy_relu_a", {"reduction": 1}), ("dy_relu_b", {}),
]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in CONDITIONED]
WITH_FRELU = [*CONDITIONED, ("frelu", {"dims": 1})]
WITH_FRELU_IDS = [*IDS, "frelu"]
B, T, C = 4, 9, 6
BACKENDS = ["reference", "autograd"]  # the fused backends' numbers equal these: tests/ops


def _module(name, kwargs, context, backend="reference", channel_dim=-1):
    torch.manual_seed(0)
    m = adaptact.create(name, channels=C, channel_dim=channel_dim, context=context, backend=backend, **kwargs)
    with torch.no_grad():  # away from the initial values, and BatchNorm running statistics set
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm1d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return m


def _perturbed(x, t):
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
    return x2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", WITH_FRELU, ids=WITH_FRELU_IDS)
def test_causal_outputs_never_depend_on_later_positions(case, training, backend):
    name, kwargs = case
    m = _module(name, kwargs, "causal", backend).train(training)
    x = torch.randn(B, T, C)
    for t in (0, 4, T - 2):
        x2 = _perturbed(x, t).requires_grad_()
        y1, y2 = copy.deepcopy(m)(x), m(x2)
        torch.testing.assert_close(y1[:, : t + 1], y2[:, : t + 1], rtol=0, atol=0)
        assert not torch.equal(y1[:, t + 1:], y2[:, t + 1:])  # the later positions did change
        # nor does the gradient reach a later input from an earlier output
        (g,) = torch.autograd.grad(y2[:, : t + 1].sum(), x2)
        assert torch.count_nonzero(g[:, t + 1:]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONDITIONED, ids=IDS)
def test_sample_context_is_not_causal(case, backend):
    """The test above can fail: the papers' pooling over the whole sample leaks later positions."""
    name, kwargs = case
    m = _module(name, kwargs, "sample", backend).eval()
    x = torch.randn(B, T, C)
    assert not torch.equal(m(x)[:, :3], m(_perturbed(x, 2))[:, :3])


@pytest.mark.parametrize("channel_dim", [-1, 1], ids=["tokens", "channels_first"])
@pytest.mark.parametrize("case", WITH_FRELU, ids=WITH_FRELU_IDS)
def test_causal_output_at_t_is_the_sample_output_of_the_prefix(case, channel_dim):
    name, kwargs = case
    causal = _module(name, kwargs, "causal", channel_dim=channel_dim).eval()
    sample = copy.deepcopy(causal)
    sample.context = "sample"
    x = torch.randn(B, T, C) if channel_dim == -1 else torch.randn(B, C, T)
    y = causal(x)
    for t in range(T):
        if name == "frelu":  # a centred window sees t + 1 with "sample": compare one-sided windows
            continue
        prefix = x[:, : t + 1] if channel_dim == -1 else x[:, :, : t + 1]
        at_t = y[:, t] if channel_dim == -1 else y[:, :, t]
        want = sample(prefix)[:, t] if channel_dim == -1 else sample(prefix)[:, :, t]
        torch.testing.assert_close(at_t, want, rtol=1e-5, atol=1e-6)


def test_causal_frelu_window_ends_at_t():
    m = _module("frelu", {"dims": 1}, "causal").eval()
    k = m.kernel_size
    x = torch.randn(B, T, C)
    y = m(x)
    for t in range(T):  # the window of t is positions t-k+1..t, zero-padded on the left
        window = x[:, max(0, t - k + 1): t + 1].transpose(1, 2)
        padded = torch.nn.functional.pad(window, (k - window.shape[-1], 0))
        h = torch.nn.functional.conv1d(padded, m.conv_frelu.weight, m.conv_frelu.bias, groups=C)[..., 0]
        bn = m.bn_frelu
        cond = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(y[:, t], torch.maximum(x[:, t], cond), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CONDITIONED, ids=IDS)
def test_token_output_depends_on_its_position_alone(case, training, backend):
    name, kwargs = case
    m = _module(name, kwargs, "token", backend).train(training)
    x = torch.randn(B, T, C)
    x2 = x.clone()
    t = 4
    x2[:, :t] = torch.randn_like(x2[:, :t])
    x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
    if training:  # batch statistics mix samples at the same position: change none at t
        torch.testing.assert_close(copy.deepcopy(m)(x)[:, t], m(x2)[:, t], rtol=0, atol=0)
    else:  # each (sample, position) alone: equals the module on that one position
        torch.testing.assert_close(m(x)[:, t], m(x[:, t: t + 1])[:, 0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m(x)[:, t], m(x2)[:, t], rtol=0, atol=0)


class Host(torch.nn.Module):
    """A model taking Hugging Face's call keywords, as track_decoding reads them."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x, attention_mask=None, past_key_values=None, cache_position=None, use_cache=None,
                position_ids=None):
        return self.act(x)


class Cache:
    """A cache object: track_decoding keeps the causal prefix on it."""


@pytest.mark.parametrize("case", WITH_FRELU, ids=WITH_FRELU_IDS)
def test_causal_prefix_continues_across_cached_calls(case):
    """What a KV cache does: the prompt first, then one position per call; the outputs equal the
    full-sequence forward's. The prefix lives on the cache: a crop continues from the cropped
    position, two caches interleave, a deep copy of the model continues the same cache, and a
    cache that never held the prefix raises."""
    name, kwargs = case
    m = _module(name, kwargs, "causal").eval()
    x = torch.randn(B, T, C)
    full = m(x)
    host = Host(m)
    untrack = track_decoding(host)

    def call(part, offset, cache, model=host):
        return model(part, past_key_values=cache, cache_position=torch.arange(offset, offset + part.shape[1]))

    one, two = Cache(), Cache()
    steps = [call(x[:, :5], 0, one), call(x[:, :3], 0, two)]
    for t in range(5, T):  # two generations interleaved, each on its own cache
        steps.append(call(x[:, t: t + 1], t, one))
    torch.testing.assert_close(torch.cat([steps[0], *steps[2:]], dim=1), full, rtol=1e-5, atol=1e-6)
    assert CALL not in m.__dict__  # set only during the model's call
    torch.testing.assert_close(call(x[:, 3:5], 3, two), full[:, 3:5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(call(x[:, 6:8], 6, one), full[:, 6:8], rtol=1e-5, atol=1e-6)  # cropped to 6
    torch.testing.assert_close(call(x[:, 8:], 8, one, copy.deepcopy(host)), full[:, 8:], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"cannot continue a cached decode at position 3 .* use_cache"):
        call(x[:, 3:4], 3, Cache())
    untrack()
    torch.testing.assert_close(host(x[:, :5]), full[:, :5])


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_a_call_outside_its_model_after_a_training_step_is_no_recomputation(checkpointed):
    """Each model call in training remembers its padding for gradient checkpointing, which recomputes
    the activation in backward after the call: once backward has reached the activation's output (or
    recomputed it), a later call of the module alone is its own call, with no padding replayed."""
    m = _module("meta_acon_c", {}, "causal")
    host = Host(m)
    track_decoding(host)
    x = torch.randn(B, T, C, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :3] = False
    if checkpointed:
        torch.utils.checkpoint.checkpoint(host, x, attention_mask=mask, use_reentrant=False).sum().backward()
    else:
        host(x, attention_mask=mask).sum().backward()
    alone = copy.deepcopy(m)  # (a copy remembers no model call)
    torch.testing.assert_close(m(x), alone(x), rtol=0, atol=0)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", [*CONDITIONED[::3], WITH_FRELU[-1]], ids=[*IDS[::3], WITH_FRELU_IDS[-1]])
def test_a_long_decode_keeps_the_full_sequence_numbers(case, grad):
    """An 8-position prompt, then one position per call up to 45 ("auto", as a served model runs,
    and with gradients): every step equals the full-sequence forward and the running statistics
    are one chunk per call. A crop back to 20 positions, and then into the prompt (3), continues
    from the crop; so does a pickled cache."""
    name, kwargs = case
    m = _module(name, kwargs, "causal", backend="auto").eval()
    x = torch.randn(2, 45, C, requires_grad=grad)
    host = Host(m)
    track_decoding(host)
    cache = Cache()

    def call(start, stop, on=cache):
        return host(x[:, start:stop], past_key_values=on, cache_position=torch.arange(start, stop))

    with torch.set_grad_enabled(grad):
        full = m(x)
        steps = [call(0, 8)] + [call(t, t + 1) for t in range(8, x.shape[1])]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-6)
        state = cache.adaptact_prefix.sums["act"]
        assert len(state) == 45 and len(state.sums) == 1 + 45 - 8
        assert not any(chunk.requires_grad for chunk in state.sums)
        torch.testing.assert_close(call(20, 21), full[:, 20:21], rtol=1e-5, atol=1e-6)  # cropped to 20
        assert len(state) == 21
        torch.testing.assert_close(call(3, 6), full[:, 3:6], rtol=1e-5, atol=1e-6)  # into the prompt's chunk
        assert len(state) == 6 and len(state.sums) == 2
        if not grad:  # a pickled cache (a prompt's, kept on disk) continues as the cache does
            copied = pickle.loads(pickle.dumps(cache))
            torch.testing.assert_close(call(6, 7, copied), full[:, 6:7], rtol=1e-5, atol=1e-6)
    assert full.requires_grad == grad


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


def _packed(lengths):
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])


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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=3),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_packed_running_means_restart_at_each_sequence(pieces, dtype):
    """The causal means of rows packed any way (position ids per row, or one row's for all) are each
    sequence's own running means, to the dtype's rounding (the row's sums are kept in float64)."""
    t = max(sum(row) for row in pieces)
    assume(t > 1)
    lengths = [row + [t - sum(row)] if sum(row) < t else row for row in pieces]  # rows of t positions
    act = _module("meta_acon_c", {}, "causal")
    host = Host(act)
    track_decoding(host)
    s = (torch.randn(len(lengths), t, 3) + 5).to(dtype)  # far from zero: a row's sums grow along it
    seen = []
    act.register_forward_pre_hook(lambda m, args: seen.append(position_statistics(m, s, "causal")))
    for packing in (lengths, [lengths[0]] * len(lengths)):
        positions = _packed(packing) if packing is lengths else _packed(packing[:1])  # (1, t): every row's
        host(torch.randn(len(lengths), t, C), position_ids=positions)
        got = seen.pop()
        for row, parts in enumerate(packing):
            start = 0
            for n in parts:
                piece = s[row, start:start + n].double()
                want = piece.cumsum(0) / torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(-1)
                torch.testing.assert_close(got[row, start:start + n].double(), want, **_rounding(dtype))
                start += n


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.sampled_from([1, 2, 3, 5]), st.integers(1, 9), st.booleans(),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_shifted_conv1d_is_the_depthwise_conv1d(t, k, channels, bias, dtype):
    """The few-position form causal FReLU takes (k shifted multiply-adds) gives torch's depthwise
    conv1d and its gradients, to the dtype's rounding."""
    window = torch.randn(2, channels, k - 1 + t, dtype=dtype, requires_grad=True)
    weight = torch.randn(channels, 1, k, dtype=dtype, requires_grad=True)
    b = torch.randn(channels, dtype=dtype, requires_grad=True) if bias else None
    got = shifted_conv1d(window, weight, b)
    want = torch.nn.functional.conv1d(window, weight, b, groups=channels)
    tolerance = {"rtol": 3e-2, "atol": 8e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tolerance)
    grad = torch.randn_like(want)
    inputs = [window, weight] + ([b] if bias else [])
    grads = torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)
    for g, w in zip(*grads, strict=True):
        torch.testing.assert_close(g, w, **tolerance)


def _rounding(dtype):
    return {"rtol": 0, "atol": {torch.float64: 1e-12, torch.float32: 5e-6, torch.bfloat16: 5e-2}[dtype]}


def _four_d(keys, causal=True, window=None, additive=False):
    """A 4-D attention mask (B, 1, T, T) as transformers makes one from a 2-D ``keys`` (B, T): pads
    attended by no query; optionally causal, with a sliding window, or additive (0 / the dtype's min)."""
    t = keys.shape[1]
    attend = keys.bool()[:, None, None, :].expand(-1, 1, t, t)
    if causal:
        attend = attend & torch.ones(t, t).tril().bool()
    if window is not None:
        attend = attend & torch.ones(t, t).triu(1 - window).bool()
    if additive:
        return torch.zeros(attend.shape).masked_fill(~attend, torch.finfo(torch.float32).min)
    return attend


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


def test_contexts_need_one_sequence_dim_and_valid_names():
    m = adaptact.MetaAconC(C, context="causal")
    with pytest.raises(ValueError, match=r"context='causal'\) takes inputs with one sequence dim"):
        m(torch.randn(2, C, 4, 4))
    with pytest.raises(ValueError, match="context must be one of 'sample', 'causal', 'token', got 'future'"):
        adaptact.APReLU(C, context="future")
    with pytest.raises(ValueError, match="context 'token' would leave it one position"):
        adaptact.FReLU(C, dims=1, context="token")
    with pytest.raises(ValueError, match=r"backend='triton' takes per-position coefficients .* for "
                                         r"channels-last tokens only"):
        adaptact.ops.dispatch.acon_c_positions(torch.randn(2, 3, 4), torch.ones(3), torch.zeros(3),
                                               torch.ones(2, 3, 4), backend="triton")


def test_position_batch_norm_follows_track_running_stats():
    """As torch's BatchNorm: training with track_running_stats=False uses the batch statistics and
    updates nothing (torch.func transforms over such a module need that too)."""
    m = _module("meta_acon_c", {}, "causal").train()
    for bn in (m.bn1, m.bn2):
        bn.track_running_stats = False
    before = copy.deepcopy(m.state_dict())
    y = m(torch.randn(B, T, C))
    for name, value in m.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    for bn in (m.bn1, m.bn2):
        bn.track_running_stats = True
    m(torch.randn(B, T, C))
    assert not torch.equal(m.bn1.running_mean, before["bn1.running_mean"])
    assert y.shape == (B, T, C)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CONDITIONED, ids=IDS)
def test_a_long_half_precision_decode_keeps_the_full_forwards_means(case, dtype):
    """A model in bfloat16 or float16 decoded one position per call for 600 positions, its inputs
    drifting from zero (as a channel's activations do): each step's output is the full forward's, to
    the dtype's rounding. The running sums are carried in float32: carried in bfloat16, a sum of
    one-signed statistics stopped growing after a few hundred positions, and a late position's
    mean was off the full forward's by more than the mean itself."""
    name, kwargs = case
    m = _module(name, kwargs, "causal").eval().to(dtype)
    positions = 600
    x = (torch.randn(1, positions, C) * 0.5 + 1.0).to(dtype)
    host = Host(m)
    track_decoding(host)
    cache = Cache()
    with torch.no_grad():
        full = m(x).float()
        steps = [host(x[:, :1], past_key_values=cache, cache_position=torch.arange(1))]
        steps += [host(x[:, t:t + 1], past_key_values=cache, cache_position=torch.tensor([t]))
                  for t in range(1, positions)]
    tolerance = {torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), full, rtol=tolerance, atol=tolerance)
