"""The comparison's networks; the activation is any registry name."""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import create, spec
from .gpt import GPTChar
from .resnet import BasicBlock, ResNet, resnet18, resnet50
from .resnet1d import DEPTHS, build_resnet1d
from .shufflenet import shufflenet_v2
from .vit import ViT

__all__ = ["LANGUAGE_MODELS", "MODELS", "ConvMNIST", "ConvMNIST1D", "GPTChar", "LinearMNIST", "ViT", "build",
           "resnet18", "resnet50", "shufflenet_v2"]


def _out(activation, channels: int) -> int:
    """Channels after the activation (CReLU doubles them)."""
    return int(channels * (spec(activation).channel_factor if isinstance(activation, str) else 1))


class ConvMNIST(nn.Module):
    """The AReLU paper's network for 28x28 images (no BatchNorm):
    conv(10, k5) -> maxpool2 -> act -> conv(20, k5) -> maxpool2 -> act -> conv(40, k3) -> maxpool2
    -> act -> linear(40, num_classes)."""

    def __init__(self, activation: str = "relu", in_channels: int = 1, num_classes: int = 10,
                 **act_kwargs) -> None:
        super().__init__()
        widths = (10, 20, 40)
        kernels = (5, 5, 3)
        layers: list[nn.Module] = []
        c = in_channels
        for width, k in zip(widths, kernels):
            layers += [nn.Conv2d(c, width, k), nn.MaxPool2d(2),
                       create(activation, channels=width, **act_kwargs)]
            c = _out(activation, width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class ConvMNIST1D(nn.Module):
    """ConvMNIST's counterpart for MNIST-1D's length-40 signals, the same layer pattern in 1D:
    conv1d(10, k5) -> maxpool2 -> act -> conv1d(20, k5) -> maxpool2 -> act -> conv1d(40, k3)
    -> maxpool2 -> act -> linear(40 * 2, num_classes)."""

    def __init__(self, activation: str = "relu", in_channels: int = 1, num_classes: int = 10,
                 length: int = 40, **act_kwargs) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width, k in zip((10, 20, 40), (5, 5, 3)):
            layers += [nn.Conv1d(c, width, k), nn.MaxPool1d(2),
                       create(activation, channels=width, **act_kwargs)]
            c, length = _out(activation, width), (length - k + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class LinearMNIST(nn.Module):
    """The AReLU paper's MLP: flatten -> linear(in_features, 512) -> act -> linear(512, classes)."""

    def __init__(self, activation: str = "relu", in_features: int = 784, num_classes: int = 10,
                 hidden: int = 512, **act_kwargs) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = create(activation, channels=hidden, **act_kwargs)
        self.fc2 = nn.Linear(_out(activation, hidden), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x.flatten(1))))


LANGUAGE_MODELS = ("gpt-char",)  # over token ids: (B, T) -> (B, T, vocab) logits
TRANSFORMERS = ("vit", "vit-token", *LANGUAGE_MODELS)  # their MLPs take gated forms (swiglu, <name>_glu)
MODELS = ("conv", "conv1d", "linear", "resnet18", "resnet18_w16", "resnet50", "shufflenet_v2", "vit",
          "vit-token", *LANGUAGE_MODELS,
          *(f"{kind}-{n}" for kind in ("resnet1d", "convnet1d") for n in DEPTHS))
_VISION = {"resnet18": resnet18, "resnet50": resnet50, "shufflenet_v2": shufflenet_v2}


def build(model: str, activation: str, sample_shape: tuple[int, ...], num_classes: int = 10) -> nn.Module:
    """A comparison network for inputs of ``sample_shape`` (without the batch dim; for a language
    model, (context,) and ``num_classes`` the vocabulary's size)."""
    if model in MODELS and model not in TRANSFORMERS and spec(activation).gated:
        raise ValueError(f"{spec(activation).name} is a gated (GLU) form, for the transformers' MLPs "
                         f"({', '.join(TRANSFORMERS)}): {model} has no gated layers")
    if model == "conv":
        return ConvMNIST(activation, sample_shape[0], num_classes)
    if model == "conv1d":
        return ConvMNIST1D(activation, sample_shape[0], num_classes, length=sample_shape[-1])
    if model == "linear":
        n = 1
        for s in sample_shape:
            n *= s
        return LinearMNIST(activation, n, num_classes)
    if model == "gpt-char":
        return GPTChar(activation, vocab_size=num_classes, context=sample_shape[0])

    if model in ("vit", "vit-token"):
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(f"{model} takes square images (C, H, H), got samples of shape {sample_shape}")
        return ViT(activation, image_size=sample_shape[1], in_channels=sample_shape[0],
                   num_classes=num_classes, context="token" if model == "vit-token" else "sample")
    if model.startswith(("resnet1d-", "convnet1d-")):  # the APReLU paper's fault-diagnosis networks
        return build_resnet1d(model, activation, sample_shape[0], num_classes)
    if model in _VISION:  # small images: the CIFAR stem
        return _VISION[model](num_classes, sample_shape[0], activation, cifar_stem=True)
    if model == "resnet18_w16":  # ResNet-18 at a quarter of the width, for CPU budgets
        return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, sample_shape[0], activation, cifar_stem=True,
                      width=16)
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
