"""A static cache's running sums and windows kept as tensors by position (``nn.static_cache``): any
split of a sequence into calls, with crops back, gives the whole sequence's running sums and
windows; the kept tensors move with the cache's rows."""


from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from adaptact.nn import static_cache

N, S, CAPACITY = 2, 3, 12


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 4), min_size=1, max_size=6),
       crops=st.lists(st.integers(0, 3), min_size=6, max_size=6), seed=st.integers(0, 2**16),
       eager=st.lists(st.booleans(), min_size=6, max_size=6))
def test_calls_of_any_length_with_crops_continue_the_whole_sequences_sums(lengths, crops, seed, eager):
    """Each call's start given as the cache's tensor (a traced call: indexed) or as the number read
    from it (an eager call: sliced), in any mix."""
    torch.manual_seed(seed)
    s = torch.randn(N, CAPACITY, S)
    weights = (torch.rand(N, CAPACITY) > 0.3).float()  # pads weigh 0
    want_sums, want_counts = (s * weights.unsqueeze(-1)).cumsum(1), weights.cumsum(1)
    window = torch.cat([torch.zeros(N, S, 2), s.transpose(1, 2)], dim=-1)  # two inputs before each one
    state = static_cache.Kept()
    position = 0
    for length, crop, sliced in zip(lengths, crops, eager, strict=False):
        position = max(position - crop, 0)  # a crop: the positions after it are written again
        length = min(length, CAPACITY - position)
        if length == 0:
            break
        part = slice(position, position + length)
        at = position if sliced else torch.tensor(position)
        sums, counts = static_cache.running_sums(state, "m", (s * weights.unsqueeze(-1))[:, part].cumsum(1),
                                                 weights[:, part].cumsum(1), at, CAPACITY)
        torch.testing.assert_close(sums, want_sums[:, part])
        torch.testing.assert_close(counts, want_counts[:, part])
        got = static_cache.kept_window(state, "w", s[:, part].transpose(1, 2), 2, at, CAPACITY)
        torch.testing.assert_close(got, window[..., position:position + length + 2])
        position += length


class _Layer:
    is_sliding = False

    def __init__(self):
        self.cumulative_length = torch.tensor(0)
        self.max_cache_len = CAPACITY
        self.keys = torch.zeros(N, 1, CAPACITY, 1)


class _Cache:
    """A static cache's shape: its layers' length tensors and keys."""

    def __init__(self):
        self.layers = [_Layer()]


def test_a_static_cache_is_read_by_its_first_full_attention_layer():
    cache = _Cache()
    length, capacity = static_cache.static_length(cache)
    assert length is cache.layers[0].cumulative_length and capacity == CAPACITY
    assert static_cache.static_length(object()) is None


def test_kept_tensors_are_buffers_moved_in_place_while_the_batch_keeps_its_size():
    """A reorder writes the kept tensors in place (their addresses stay, as CUDA graphs need); a
    selection of another size makes new ones. They are a module's buffers, not its state_dict."""
    state = static_cache.Kept()
    sums, counts = torch.arange(4.0).reshape(2, 2, 1), torch.ones(2, 2, 1)
    state.put("layers.0.act", (sums, counts))
    assert state.get("layers.0.act") == (sums, counts) and state.get("other") == ()
    state.select_rows(torch.tensor([1, 0]))
    assert state.get("layers.0.act")[0] is sums and sums[:, :, 0].tolist() == [[2, 3], [0, 1]]
    state.select_rows(torch.tensor([1, 1, 0]))
    moved = state.get("layers.0.act")
    assert moved[0][:, :, 0].tolist() == [[0, 1], [0, 1], [2, 3]] and moved[1].shape == (3, 2, 1)
    assert len(list(state.buffers())) == 2 and state.state_dict() == {}
