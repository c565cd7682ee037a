"""FReLU against its paper and official code (megvii-model/FunnelAct): y = max(x, BN(DWConv(x))),
y >= x and y in {x, T(x)}, the official state_dict, torch.maximum's gradients with ties, and the
one byte per element its max keeps."""

import pytest
import torch
import torch.nn.functional as F

import adaptact
from adaptact.kernel_benchmark import saved_bytes
from adaptact.ops import autograd as AG


def _official_state(c, k=3, dims=2):
    g = torch.Generator().manual_seed(c)
    return {"conv_frelu.weight": torch.randn(c, 1, *(k,) * dims, generator=g),
            "conv_frelu.bias": torch.randn(c, generator=g),
            "bn_frelu.weight": torch.rand(c, generator=g) + 0.5,
            "bn_frelu.bias": torch.randn(c, generator=g),
            "bn_frelu.running_mean": torch.randn(c, generator=g),
            "bn_frelu.running_var": torch.rand(c, generator=g) + 0.5,
            "bn_frelu.num_batches_tracked": torch.tensor(0)}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dims", [1, 2])
def test_equals_the_official_code(dims, training):
    c = 6
    sd = _official_state(c, dims=dims)
    m = adaptact.FReLU(c, dims=dims).train(training)
    m.load_state_dict(sd)
    x = torch.randn(4, c, *(7, 5)[:dims])
    conv = F.conv2d if dims == 2 else F.conv1d
    t = F.batch_norm(conv(x, sd["conv_frelu.weight"], sd["conv_frelu.bias"], padding=1, groups=c),
                     sd["bn_frelu.running_mean"].clone(), sd["bn_frelu.running_var"].clone(),
                     sd["bn_frelu.weight"], sd["bn_frelu.bias"], training, 0.1, 1e-5)
    y = m(x)
    torch.testing.assert_close(y, torch.max(x, t))
    assert (y >= x).all()
    assert ((y == x) | (y == t)).all()  # each output is x or T(x)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_float64_gradcheck(backend):
    m = adaptact.FReLU(3, backend=backend).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    assert torch.autograd.gradcheck(
        lambda x, *p: torch.func.functional_call(m, dict(zip(names, p)), (x,)), (x, *m.parameters()),
        eps=1e-6, atol=1e-5)


def test_the_lean_max_has_torchs_gradients_ties_included():
    x = torch.tensor([1.0, 2.0, 3.0, -1.0], requires_grad=True)
    t = torch.tensor([0.0, 2.0, 4.0, -1.0], requires_grad=True)  # ties at 2 and -1
    dy = torch.tensor([1.0, 2.0, 3.0, 4.0])
    gx, gt = torch.autograd.grad(AG.frelu_max(x, t), (x, t), dy)
    rx, rt = torch.autograd.grad(torch.maximum(x, t), (x, t), dy)
    assert torch.equal(gx, rx) and torch.equal(gt, rt)
    assert gx.tolist() == [1.0, 1.0, 0.0, 2.0]  # a tie splits evenly, as torch.maximum does


def test_the_max_keeps_one_byte_per_element():
    x = torch.randn(8, 16, 24, 24, requires_grad=True)
    lean, ref = adaptact.FReLU(16), adaptact.FReLU(16, backend="reference")
    ref.load_state_dict(lean.state_dict())
    saved_lean, saved_ref = saved_bytes(lean, x), saved_bytes(ref, x)
    assert saved_ref - saved_lean >= x.nbytes - x.numel()  # T(x) (4 bytes) became a sign (1 byte)
    torch.testing.assert_close(lean(x), ref(x))


def test_wrong_ranks_and_sizes_are_clear():
    with pytest.raises(ValueError, match=r"FReLU\(dims=2\) expects \(N, C, H, W\)"):
        adaptact.FReLU(4)(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        adaptact.FReLU(4, kernel_size=2)
    with pytest.raises(ValueError, match="expected 4 channels"):
        adaptact.FReLU(4)(torch.randn(2, 3, 5, 5))


def test_batch_size_one_on_one_pixel_maps_trains():
    m = adaptact.FReLU(4).train()
    before = m.bn_frelu.running_mean.clone()
    y = m(torch.randn(1, 4, 1, 1, requires_grad=True))
    y.sum().backward()
    assert torch.equal(m.bn_frelu.running_mean, before)  # no batch statistics to learn from
    m(torch.randn(1, 4, 5, 5))  # one sample with a map: batch statistics over its pixels, as torch
    assert not torch.equal(m.bn_frelu.running_mean, before)
