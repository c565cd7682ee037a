"""Compact ResNet-18/50 (He et al., CVPR 2016) with any activation; no torchvision needed.

Each block holds its own activation modules (``act1``, ``act2``[, ``act3``]), so per-channel
activations get the right width and ``replace_activations(..., policy="resnet_after_3x3")``
finds exactly the one after the 3x3 conv + BN in every block.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import ActivationLike, create

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> act -> conv3x3 -> BN -> (+ shortcut) -> act."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, activation: ActivationLike) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = create(activation, channels=planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)
        self.act2 = create(activation, channels=planes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> act -> conv3x3 -> BN -> act -> conv1x1 -> BN -> (+ shortcut) -> act."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, activation: ActivationLike) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = create(activation, channels=planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = create(activation, channels=planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(cin, out, stride)
        self.act3 = create(activation, channels=out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act3(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with an ImageNet stem (7x7/2 conv + 3x3/2 max-pool) or, with ``cifar_stem``, a
    3x3/1 conv and no pooling for small images."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, ...], num_classes: int = 1000,
                 in_channels: int = 3, activation: ActivationLike = "relu", cifar_stem: bool = False,
                 width: int = 64) -> None:
        super().__init__()
        if cifar_stem:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width),
                                      create(activation, channels=width))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width),
                                      create(activation, channels=width), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1, activation))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet18(num_classes: int = 1000, in_channels: int = 3, activation: ActivationLike = "relu",
             cifar_stem: bool = False) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, activation, cifar_stem)


def resnet50(num_classes: int = 1000, in_channels: int = 3, activation: ActivationLike = "relu",
             cifar_stem: bool = False) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, activation, cifar_stem)
