"""Sequence contexts of the input-conditioned activations (nn/context.py): "causal" never lets a
position see a later one (train and eval) and equals the "sample" output of the prefix in eval mode,
packed sequences' running means restart at each sequence; "token" sees its own position alone. The
cases and helpers here serve the tests of the hooks (test_tracking.py), of what a cache carries
(test_running.py) and of gradient checkpointing (test_replay.py) too."""

import copy

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import torch

import adaptact
from adaptact.nn.context import position_statistics, shifted_conv1d
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


def _packed(lengths):
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])


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
