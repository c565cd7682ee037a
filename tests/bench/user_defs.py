"""A user's own network and data, as a researcher would write them in their project: importable
(``tests.bench.user_defs:net``), so the comparison can run them in worker processes."""

import torch
from torch import nn

import adaptact


def blobs(n_train: int = 240, n_test: int = 120, features: int = 6, classes: int = 3):
    """Three Gaussian blobs: (train_x, train_y, test_x, test_y)."""
    g = torch.Generator().manual_seed(7)
    centres = 2.0 * torch.randn(classes, features, generator=g)

    def sample(n):
        y = torch.arange(n) % classes
        return centres[y] + torch.randn(n, features, generator=g), y

    return (*sample(n_train), *sample(n_test))


def net(activation: str) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), adaptact.create(activation, channels=16), nn.Linear(16, 3))


def picky_net(activation: str) -> nn.Module:
    """A factory that cannot build one of the activations asked for."""
    if activation == "swish":
        raise RuntimeError("picky_net does not take swish")
    return net(activation)


def doomed_net(activation: str) -> nn.Module:
    """A factory whose process dies (as under the kernel's OOM killer) when it builds swish; each
    attempt is counted as a line in the file $DOOMED_ATTEMPTS."""
    if activation == "swish":
        import os
        import signal

        with open(os.environ["DOOMED_ATTEMPTS"], "a") as f:
            f.write("attempt\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return net(activation)
