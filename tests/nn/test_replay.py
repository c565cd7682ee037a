"""Gradient checkpointing's recomputations (nn/replay.py): a call of the module after a training step is
its own, with no padding replayed."""

import copy

import pytest
import torch

from adaptact.nn.tracking import track_decoding
from tests.nn.test_context import B, C, T, Host, _module


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
