import pytest
import torch
from torch import nn

import adaptact
from adaptact.models.catalogue import ConvMNIST, ConvMNIST1D, LinearMNIST, build


def test_conv_mnist_is_the_paper_network():
    m = ConvMNIST("arelu")
    kinds = [type(x) for x in m.features]
    assert kinds == [nn.Conv2d, nn.MaxPool2d, adaptact.AReLU] * 3
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 10, (5, 5)), (10, 20, (5, 5)), (20, 40, (3, 3))]
    assert (m.classifier.in_features, m.classifier.out_features) == (40, 10)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("activation", ["meta_acon_c", "aprelu", "crelu", "maxout"])
def test_per_channel_and_channel_changing_activations_fit(activation):
    conv = ConvMNIST(activation)
    acts = [x for x in conv.features if not isinstance(x, (nn.Conv2d, nn.MaxPool2d))]
    if adaptact.spec(activation).per_channel:
        assert [a.channels for a in acts] == [10, 20, 40]
    assert conv(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert ConvMNIST1D(activation)(torch.randn(2, 1, 40)).shape == (2, 10)
    assert LinearMNIST(activation)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_build_infers_input_sizes():
    assert build("linear", "relu", (1, 8, 8)).fc1.in_features == 64
    assert build("conv1d", "relu", (1, 40))(torch.randn(2, 1, 40)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'swin'"):
        build("swin", "relu", (1, 28, 28))
