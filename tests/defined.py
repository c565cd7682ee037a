"""An activation defined the way a researcher defines one (``adaptact.define``), in an importable
module: conftest imports it before collection, so every registry-wide test (every name of
``adaptact.available()``) runs over it as over the built-ins, and spawned workers of the comparison
find it as ``tests.defined:defined_swish_tanh``."""

import torch

import adaptact

NAME = "defined_swish_tanh"


def swish_tanh(x, beta, p, gain):
    """gain (x sigmoid(beta x) + p tanh(x)): Swish with a learnable per-channel beta, a per-channel
    share of tanh and one gain for the layer."""
    return gain * (x * torch.sigmoid(beta * x) + p * torch.tanh(x))


SPEC = adaptact.define(NAME, swish_tanh, per_channel={"beta": 1.0, "p": 0.25}, scalars={"gain": 1.0},
                       paper="a test's own formula")
