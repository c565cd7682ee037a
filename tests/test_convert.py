"""replace_activations: every site found, channels from the producer, policies, errors."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptact
from adaptact import replace_activations
from adaptact.models.catalogue import resnet18, resnet50, shufflenet_v2


class NormAct(nn.BatchNorm2d):
    """A norm + act layer that holds its activation as an attribute (timm's BatchNormAct2d style)."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(super().forward(x))


class SharedRelu(nn.Module):
    """One ReLU module called after tensors of different widths (torchvision's Bottleneck does this)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 12, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 7)

    def forward(self, x):
        return F.relu(self.fc(x.mean((2, 3))))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.block = SharedRelu()
        self.norm = nn.Conv2d(12, 10, 1)
        self.norm_act = NormAct(10)
        self.proj = nn.Conv2d(10, 12, 1)
        self.head = Functional()

    def forward(self, x):
        x = self.proj(self.norm_act(self.norm(self.block(self.stem(x)))))
        return self.head(x)


def test_every_activation_replaced_with_producer_channels():
    torch.manual_seed(0)
    model = SmallNet()
    paths = replace_activations(model, "acon_c")
    assert paths == ["stem.2", "block.relu_site0", "block.relu_site1", "norm_act.act", "head.act_site0"]
    channels = {p: model.get_submodule(p).channels for p in paths}
    assert channels == {"stem.2": 6, "block.relu_site0": 4, "block.relu_site1": 12, "norm_act.act": 10,
                        "head.act_site0": 7}
    assert all(isinstance(model.get_submodule(p), adaptact.AconC) for p in paths)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_replacing_with_relu_leaves_outputs_unchanged():
    torch.manual_seed(0)
    for model in (SmallNet(), resnet18(10, 1, cifar_stem=True), shufflenet_v2(10, 3)):
        model.eval()
        x = torch.randn(2, model.stem[0].in_channels, 32, 32)
        before = model(x)
        assert replace_activations(model, "relu")
        torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("factory, per_block", [(resnet18, "act1"), (resnet50, "act2")])
def test_resnet_after_3x3_replaces_one_activation_per_block(factory, per_block):
    model = factory(10, 3, cifar_stem=True)
    paths = replace_activations(model, "meta_acon_c", policy="resnet_after_3x3")
    blocks = [f"{layer}.{i}" for layer in ("layer1", "layer2", "layer3", "layer4")
              for i in range(len(model.get_submodule(layer)))]
    assert paths == [f"{b}.{per_block}" for b in blocks]
    for b in blocks:
        acts = [m for m in model.get_submodule(b).children() if isinstance(m, adaptact.MetaAconC)]
        assert len(acts) == 1 and acts[0].channels == model.get_submodule(b).bn2.num_features
    assert isinstance(model.stem[2], nn.ReLU)  # the stem is not a residual block
    model(torch.randn(2, 3, 16, 16))


def test_resnet_after_3x3_on_a_shared_relu_block():
    """torchvision-style Bottleneck: one self.relu for all three sites; only the one after the 3x3 changes."""

    class Bottleneck(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(16, 4, 1, bias=False), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
            self.conv3, self.bn3 = nn.Conv2d(4, 16, 1, bias=False), nn.BatchNorm2d(16)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + x)

    model = nn.Sequential(nn.Conv2d(3, 16, 3), Bottleneck(), Bottleneck())
    paths = replace_activations(model, "acon_c", policy="resnet_after_3x3")
    assert paths == ["1.relu_site1", "2.relu_site1"]
    assert model[1].relu_site1.channels == 4 and isinstance(model[1].relu, nn.ReLU)
    assert model(torch.randn(2, 3, 9, 9)).shape == (2, 16, 7, 7)


def test_callable_policy():
    model = SmallNet()
    paths = replace_activations(model, "swish", policy=lambda path, m: path.startswith("stem"))
    assert paths == ["stem.2"] and isinstance(model.stem[2], adaptact.Swish)


def test_converted_state_dict_loads_into_a_fresh_conversion():
    torch.manual_seed(0)
    a = resnet18(10, 1, cifar_stem=True)
    replace_activations(a, "aprelu", policy="resnet_after_3x3")
    b = copy.deepcopy(a)  # same structure, then different weights
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01 * torch.randn_like(p))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    fresh = resnet18(10, 1, cifar_stem=True)
    replace_activations(fresh, "aprelu", policy="resnet_after_3x3")
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(fresh.eval()(x), a.eval()(x))
    assert not torch.allclose(b.eval()(x), a(x))

    shared = SmallNet()
    replace_activations(shared, "meta_acon_c")
    again = SmallNet()
    replace_activations(again, "meta_acon_c")
    again.load_state_dict(shared.state_dict())


def test_inplace_flag_is_kept():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True))
    replace_activations(model, "leaky_relu")
    assert model[1].inplace


def test_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"cannot infer the channels of the activation at '0'"):
        replace_activations(nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 1)), "acon_c")

    class RootFunctional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return F.relu(self.conv(x))

    with pytest.raises(ValueError, match=r"model's own forward .*<relu>.*nn.Sequential\(model\)"):
        replace_activations(RootFunctional(), "acon_c")
    model = nn.Sequential(RootFunctional())
    assert replace_activations(model, "acon_c") == ["0.act_site0"]
    with pytest.raises(ValueError, match=r"'crelu' changes the number of channels .* at '1'"):
        replace_activations(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), "crelu")
    with pytest.raises(ValueError, match="policy must be one of"):
        replace_activations(SmallNet(), "relu", policy="every_other")
    with pytest.raises(ValueError, match="unknown activation 'aconc'"):
        replace_activations(SmallNet(), "aconc")


class _OwnForwardCallsRelu(nn.Module):
    """Module ReLUs (replaceable in place) and an F.relu in the model's own forward (needs a rewrite
    of the top-level module, which cannot be swapped in its parent)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3)

    def forward(self, x):
        return F.relu(self.conv2(self.act(self.conv(x))))


class _FusedGate(nn.Module):
    """A producer split into parts, the activation on one of them (Phi-3's gate_up_proj)."""

    def __init__(self, producer, cut):
        super().__init__()
        self.proj, self.act, self.cut = producer, nn.SiLU(), cut

    def forward(self, x):
        gate, up = self.cut(self.proj(x))
        return self.act(gate) * up


@pytest.mark.parametrize("producer, cut, shape, layout", [
    (nn.Linear(8, 12), lambda h: h.chunk(2, dim=-1), (2, 5, 8), (6, -1)),
    (nn.Linear(8, 12), lambda h: torch.chunk(h, 2, -1), (2, 5, 8), (6, -1)),
    (nn.Linear(8, 12), lambda h: h.split(6, dim=-1), (2, 5, 8), (6, -1)),
    (nn.Linear(8, 12), lambda h: (lambda p: (p[1], p[1]))(torch.split(h, [4, 8], dim=-1)), (3, 8), (8, -1)),
    (nn.Conv2d(3, 8, 1), lambda h: h.chunk(2, dim=1), (2, 3, 4, 4), (4, 1)),
])
def test_an_activation_on_a_part_of_its_producer_gets_the_parts_channels(producer, cut, shape, layout):
    block = _FusedGate(producer, cut)
    replace_activations(block, "acon_c")
    assert (block.act.channels, block.act.channel_dim) == layout
    x = torch.randn(shape)
    gate, up = cut(producer(x))
    torch.testing.assert_close(block(x), block.act(gate) * up)
    assert block.act(gate).shape == gate.shape


@pytest.mark.parametrize("cut", [lambda h: h.chunk(2, dim=0), lambda h: h.chunk(2, dim=2),
                                 lambda h: h.split(5, dim=-1)])
def test_parts_the_converter_cannot_size_are_refused_never_guessed(cut):
    """Cut along another dim (or the channel dim counted from the front) or in parts that do not
    divide the channels: the channels are not inferred."""
    with pytest.raises(ValueError, match="cannot infer the channels.*pass channels="):
        replace_activations(_FusedGate(nn.Linear(8, 12), cut), "acon_c")


def test_replace_activations_is_all_or_nothing():
    model = _OwnForwardCallsRelu()
    before = [(n, type(m)) for n, m in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="the model's own forward calls activations"):
        adaptact.replace_activations(model, "acon_c")
    assert [(n, type(m)) for n, m in model.named_modules()] == before  # the module ReLU is back
    assert model.state_dict().keys() == state.keys()


def test_rewritten_holders_are_reported():
    wrapped = nn.Sequential(_OwnForwardCallsRelu())
    replaced = adaptact.replace_activations(wrapped, "acon_c")
    assert replaced.rewritten == ["0"] and isinstance(wrapped[0], torch.fx.GraphModule)
    assert type(wrapped[0]).__name__ == "_OwnForwardCallsRelu"
    assert replaced == ["0.act", "0.act_site1"]
    assert wrapped(torch.randn(2, 3, 9, 9)).shape == (2, 8, 5, 5)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert adaptact.replace_activations(plain, "acon_c").rewritten == []


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention as its model.py writes it (flash path): it marks nothing as causal but
    its name."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int = 16, n_head: int = 2) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _assert_no_position_sees_a_later_one(model: nn.Module) -> None:
    """Training mode (batch statistics in the generators): changing positions 7.. of (3, 10, 16)
    inputs leaves the outputs at positions 0..6 as they were."""
    x = torch.randn(3, 10, 16)
    later = x.clone()
    later[:, 7:] = torch.randn(3, 3, 16)
    a, b = model.train()(x), model(later)
    torch.testing.assert_close(a[:, :7], b[:, :7])


@pytest.mark.parametrize("name", ["meta_acon_c", "aprelu"])
def test_a_nanogpt_style_decoder_gets_the_causal_context(name):
    """nanoGPT's and minGPT's attention says it is causal by its class name only: converting such a
    decoder must not let a position see later ones."""
    torch.manual_seed(0)
    model = nn.Sequential(NanoBlock(), NanoBlock())
    replaced = replace_activations(model, name)
    assert any("causal decoder" in note for note in replaced.notes)
    _assert_no_position_sees_a_later_one(model)


class DictHolder(nn.Module):
    """A forward that calls its activation through an nn.ModuleDict: fx names it ``mlp.act``."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.ModuleDict(dict(fc=nn.Linear(4, 8), act=nn.GELU()))

    def forward(self, x):
        return self.mlp.act(self.mlp.fc(x))


def test_an_activation_called_through_a_module_dict_is_replaced_in_its_dict():
    model = nn.Sequential(DictHolder())
    replaced = replace_activations(model, "acon_c")
    assert replaced == ["0.mlp.act"] and replaced.rewritten == []
    act = model[0].mlp.act
    assert isinstance(act, adaptact.AconC) and act.channels == 8 and act.channel_dim == -1
    assert model(torch.randn(2, 3, 4)).shape == (2, 3, 8)


class Attention(nn.Module):
    """A decoder's attention that marks itself causal nowhere but in its call."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(F.scaled_dot_product_attention(q, k, v, None, 0.0, True))  # is_causal by position


class PlainBlock(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.attn = Attention(dim)
        self.fc, self.act, self.proj = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.proj(self.act(self.fc(x)))


def test_a_decoder_known_only_by_its_causal_attention_call_gets_the_causal_context():
    torch.manual_seed(0)
    model = nn.Sequential(PlainBlock(), PlainBlock())
    assert not adaptact.convert.is_causal_model(model)  # neither marked nor named
    replaced = replace_activations(model, "meta_acon_c")
    assert any("causal decoder" in note for note in replaced.notes)
    _assert_no_position_sees_a_later_one(model)
    encoder = nn.Sequential(nn.Linear(16, 16), nn.GELU())  # no attention at all: the papers' context
    assert replace_activations(encoder, "meta_acon_c").notes == []
