"""Compact ShuffleNetV2 (Ma et al., ECCV 2018) with any activation; no torchvision needed."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import ActivationLike, create

__all__ = ["ShuffleNetV2", "shufflenet_v2"]


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class ShuffleUnit(nn.Module):
    """Stride 1: split channels, transform one half; stride 2: both branches, channels double."""

    def __init__(self, cin: int, cout: int, stride: int, activation: ActivationLike) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(*_conv_bn(cin, cin, 3, 2, cin), *_conv_bn(cin, half, 1),
                                         create(activation, channels=half))
        b2_in = cin if stride == 2 else half
        self.branch2 = nn.Sequential(*_conv_bn(b2_in, half, 1), create(activation, channels=half),
                                     *_conv_bn(half, half, 3, stride, half), *_conv_bn(half, half, 1),
                                     create(activation, channels=half))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out)


class ShuffleNetV2(nn.Module):
    def __init__(self, stage_channels: tuple[int, ...] = (116, 232, 464),
                 stage_repeats: tuple[int, ...] = (4, 8, 4),
                 final_channels: int = 1024, num_classes: int = 1000, in_channels: int = 3,
                 activation: ActivationLike = "relu", cifar_stem: bool = False) -> None:
        super().__init__()
        stem = 24
        layers = [*_conv_bn(in_channels, stem, 3, 1 if cifar_stem else 2), create(activation, channels=stem)]
        if not cifar_stem:
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*layers)
        stages, cin = [], stem
        for cout, repeats in zip(stage_channels, stage_repeats):
            units = [ShuffleUnit(cin, cout, 2, activation)] + [ShuffleUnit(cout, cout, 1, activation)
                                                               for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*_conv_bn(cin, final_channels, 1),
                                  create(activation, channels=final_channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(final_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def shufflenet_v2(num_classes: int = 1000, in_channels: int = 3, activation: ActivationLike = "relu",
                  cifar_stem: bool = False) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, activation=activation,
                        cifar_stem=cifar_stem)
