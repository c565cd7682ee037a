"""A user's own network and data, as a researcher would write them in their project: importable
(``tests.experiments.user_defs:net``), so the comparison can run them in worker processes."""

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


class _FailsInTraining(nn.Module):
    """``inner``, but a training-mode forward calls ``fail`` first: it builds and evaluates (the
    comparison's up-front probe passes) and fails once a run trains it."""

    def __init__(self, inner: nn.Module, fail):
        super().__init__()
        self.inner, self.fail = inner, fail

    def forward(self, x):
        if self.training:
            self.fail()
        return self.inner(x)


def _refuse_swish():
    raise RuntimeError("picky_net does not train swish")


def picky_net(activation: str) -> nn.Module:
    """A network that fails to train one of the activations asked for."""
    return _FailsInTraining(net(activation), _refuse_swish) if activation == "swish" else net(activation)


def _die():
    import os
    import signal

    with open(os.environ["DOOMED_ATTEMPTS"], "a") as f:
        f.write("attempt\n")
    os.kill(os.getpid(), signal.SIGKILL)


def doomed_net(activation: str) -> nn.Module:
    """A network whose process dies (as under the kernel's OOM killer) when it trains swish; each
    attempt is counted as a line in the file $DOOMED_ATTEMPTS."""
    return _FailsInTraining(net(activation), _die) if activation == "swish" else net(activation)


def broken_net(activation: str) -> nn.Module:
    """A factory with a bug of its own (not a shape or value error)."""
    raise KeyError("no layer named 'head'")
