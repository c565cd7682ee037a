"""Networks to train with any activation: the small MNIST networks (``catalogue``: ConvMNIST,
ConvMNIST1D, LinearMNIST), the ResNets and ShuffleNet-V2 of the ACON paper's comparison and the
1-D ResNet of the APReLU paper's fault diagnosis. ``build(name, activation, sample_shape)``
makes one by the name the comparison uses."""

from .catalogue import MODELS, ConvMNIST, ConvMNIST1D, LinearMNIST, build
from .resnet import ResNet, resnet18, resnet50
from .resnet1d import build_resnet1d
from .shufflenet import shufflenet_v2

__all__ = ["MODELS", "ConvMNIST", "ConvMNIST1D", "LinearMNIST", "ResNet", "build", "build_resnet1d",
           "resnet18", "resnet50", "shufflenet_v2"]
