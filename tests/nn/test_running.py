"""What a cache carries from one call to the next (nn/running.py): the causal prefix continues across
cached calls (crops, two caches interleaved, a deep copy), a long decode keeps the full sequence's
numbers, in half precision too, and the prefix's rows move with the cache's."""

import copy
import pickle

import pytest
import torch

from adaptact.nn.model_call import CALL
from adaptact.nn.running import follow, follow_row_moves, prefix_of
from adaptact.nn.tracking import track_decoding
from tests.nn.test_context import (B, C, CONDITIONED, IDS, T, WITH_FRELU, WITH_FRELU_IDS, Cache, Host,
                                   _module)


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


class _Layer:
    is_sliding = False

    def __init__(self, keys):
        self.keys = keys


class _MovingCache:
    """A cache's shape as transformers makes it: layers with keys (B, H, T, D), methods moving rows."""

    def __init__(self, keys):
        self.layers = [_Layer(keys)]

    def reorder_cache(self, rows):
        self.layers[0].keys = self.layers[0].keys.index_select(0, rows)

    def batch_select_indices(self, rows):
        self.layers[0].keys = self.layers[0].keys[rows]

    def batch_repeat_interleave(self, repeats):
        self.layers[0].keys = self.layers[0].keys.repeat_interleave(repeats, dim=0)


def _kept_rows(cache, positions=3):
    """A prefix kept on ``cache`` whose row i holds i at every position; returns a reader of the rows."""
    prefix = prefix_of(cache)
    rows = cache.layers[0].keys.shape[0]
    prefix.keep("act", 0, torch.arange(float(rows))[:, None, None].expand(rows, positions, 1).clone(),
                torch.ones(rows, positions))
    prefix.take_fingerprint(cache)
    return lambda: prefix_of(cache).sums["act"].positions(0, positions)[:, 0, 0].tolist()


def test_a_caches_own_row_moves_move_its_prefix_in_copies_too():
    cache = _MovingCache(torch.randn(2, 1, 3, 1))
    rows = _kept_rows(cache)
    follow_row_moves(cache)
    follow_row_moves(cache)  # once
    cache.reorder_cache(torch.tensor([1, 0]))
    cache.batch_repeat_interleave(2)
    cache.batch_select_indices(torch.tensor([0, 3]))
    assert rows() == [1.0, 0.0] and cache.layers[0].keys.shape[0] == 2
    for other in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        other.reorder_cache(torch.tensor([1, 0]))
        assert prefix_of(other).sums["act"].positions(0, 3)[:, 0, 0].tolist() == [0.0, 1.0]
        assert rows() == [1.0, 0.0]  # the copy's own


def test_rows_moved_by_other_means_are_found_by_their_keys_or_refused_where_keys_cannot_tell():
    """Rows moved without the cache's methods are paired by their keys; where two kept rows with
    equal keys hold different statistics, which one a row continues cannot be told: one line."""
    keys = torch.randn(3, 1, 3, 1)
    keys[1] = keys[0]
    cache = _MovingCache(keys.clone())
    rows = _kept_rows(cache)
    cache.layers[0].keys = keys[[2, 0, 0]]  # rows 0 and 1 alike by their keys: the first is taken
    with pytest.raises(RuntimeError, match="moved by other means than its own methods"):
        follow(prefix_of(cache), cache, 3)
    cache = _MovingCache(keys.clone())
    rows = _kept_rows(cache)
    prefix_of(cache).sums["act"].sums[0][1] = 0.0  # rows 0 and 1 the same history
    cache.layers[0].keys = keys[[2, 1, 0]]
    follow(prefix_of(cache), cache, 3)
    assert rows() == [2.0, 0.0, 0.0]
