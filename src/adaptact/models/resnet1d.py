"""1-D residual networks and plain ConvNets for vibration signals, after the APReLU paper.

The paper (Zhao et al., IEEE TIE 2020) builds its diagnosis networks from residual building
units (RBU), pre-activation style as in the authors' TFLearn and Keras code:
BN -> act -> conv3 (stride s) -> BN -> act -> conv3, plus the identity, subsampled with stride s
and zero-padded on both sides of the channel dim to the new width (no projection conv). It
compares ResNets of 6, 9 and 12 units with APReLU against Sigmoid, Tanh, ReLU, LeakyReLU and
PReLU, and plain ConvNets of the same depth (the units without their shortcut). The paper puts
its activation in every unit and before the pooling, so ``policy="all"`` is where it goes; every
activation is its own module (``act1``, ``act2`` per unit, ``act`` at the head), so
``replace_activations`` policies reach each of them.

Widths here are for CPU budgets: a stride-2 stem conv of ``width`` channels, then three stages
of ``units / 3`` units at width, 2 width and 4 width, each stage opening with a stride-2 unit;
global average pooling and a linear classifier.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ActivationLike, create

__all__ = ["DEPTHS", "ConvNet1d", "ResNet1d", "ResidualUnit1d", "build_resnet1d"]

DEPTHS = (6, 9, 12)  # units, the paper's


class ResidualUnit1d(nn.Module):
    """BN -> act -> conv3(stride) -> BN -> act -> conv3 (+ the identity, subsampled by ``stride``
    and zero-padded to ``cout`` channels, when ``shortcut``)."""

    def __init__(self, cin: int, cout: int, stride: int, activation: ActivationLike,
                 shortcut: bool = True) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(cin)
        self.act1 = create(activation, channels=cin)
        self.conv1 = nn.Conv1d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.act2 = create(activation, channels=cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, 1, 1, bias=False)
        self.stride, self.pad, self.shortcut = stride, cout - cin, shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.act2(self.bn2(self.conv1(self.act1(self.bn1(x))))))
        if not self.shortcut:
            return out
        identity = x[:, :, :: self.stride]
        if self.pad:
            identity = F.pad(identity, (0, 0, self.pad // 2, self.pad - self.pad // 2))
        return out + identity


class ResNet1d(nn.Module):
    """The paper's 1-D network of ``units`` RBUs (``shortcut=False``: the plain ConvNet).

    Args:
        units: number of units, a multiple of 3 (the paper: 6, 9, 12).
        activation: registry name, class or factory, put in every unit and at the head.
        in_channels: channels of the signal (1 for one accelerometer).
        num_classes: health states (8 in the paper).
        width: channels of the first stage (then 2x, 4x).
        shortcut: the identity paths; False gives the plain ConvNet of the same depth.

    Shape: (N, in_channels, L) -> (N, num_classes).
    """

    def __init__(self, units: int = 9, activation: ActivationLike = "relu", in_channels: int = 1,
                 num_classes: int = 8, width: int = 8, shortcut: bool = True) -> None:
        super().__init__()
        if units < 3 or units % 3:
            raise ValueError(f"units must be a positive multiple of 3 (the paper: 6, 9, 12), got {units}")
        self.stem = nn.Conv1d(in_channels, width, 3, 2, 1, bias=False)
        layers, cin = [], width
        for stage in range(3):
            cout = width * 2**stage
            for i in range(units // 3):
                layers.append(ResidualUnit1d(cin, cout, 2 if i == 0 else 1, activation, shortcut))
                cin = cout
        self.units = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(cin)
        self.act = create(activation, channels=cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # he_normal

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn(self.units(self.stem(x))))
        return self.fc(x.mean(dim=2))


class ConvNet1d(ResNet1d):
    """The paper's plain ConvNet: ``ResNet1d`` without the shortcuts."""

    def __init__(self, units: int = 9, activation: ActivationLike = "relu", in_channels: int = 1,
                 num_classes: int = 8, width: int = 8) -> None:
        super().__init__(units, activation, in_channels, num_classes, width, shortcut=False)


_NAME = re.compile(r"(resnet1d|convnet1d)-(\d+)")


def build_resnet1d(name: str, activation: ActivationLike, in_channels: int, num_classes: int) -> nn.Module:
    """``resnet1d-9``, ``convnet1d-6``, ...: the network of that many units."""
    match = _NAME.fullmatch(name)
    if not match:
        raise ValueError(f"unknown 1-D network {name!r}; give resnet1d-N or convnet1d-N, N a multiple of 3")
    cls = ResNet1d if match.group(1) == "resnet1d" else ConvNet1d
    return cls(int(match.group(2)), activation, in_channels, num_classes)
