"""The built-in transformers: nanoGPT's GPT for characters and a small ViT, with any activation of
the catalogue in their MLPs, plain or gated."""

import warnings

import pytest
import torch
from torch import nn

import adaptact
from adaptact.models.catalogue import build
from adaptact.models.gpt import GPTChar
from adaptact.models.transformer import MLP, gated_name
from adaptact.models.vit import ViT

POOLING = ["meta_acon_c", "aprelu", "dy_relu_b", "frelu", "meta_acon_c_glu"]


def test_gpt_char_has_nanogpts_parameter_count():
    # nanoGPT's CPU recipe on its 65-character tiny-shakespeare reports 0.80M parameters, counted without
    # the position embeddings: 4 x 196,864 per block + 65 x 128 tied embedding + 128 final norm
    model = GPTChar(vocab_size=65)
    count = sum(p.numel() for p in model.parameters()) - model.positions.weight.numel()
    assert count == 4 * 196_864 + 65 * 128 + 128
    assert model.head.weight is model.tokens.weight
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("name", ["swiglu", "geglu", "acon_c_glu", "swiglu_oss"])
def test_a_gated_mlp_keeps_the_parameters_of_the_plain_one(name):
    plain, gated = MLP(128, 512, "gelu"), MLP(128, 512, name)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_gated = sum(p.numel() for p in gated.parameters() if p not in set(gated.act.parameters()))
    assert gated.fc.out_features == 2 * 341 and gated.proj.in_features == 341
    assert abs(n_gated - n_plain) / n_plain < 0.002
    assert gated(torch.randn(2, 5, 128)).shape == (2, 5, 128)


def test_glu_makes_any_activation_the_gate():
    assert gated_name("acon_c", True) == "acon_c_glu" and gated_name("swiglu", True) == "swiglu"
    assert gated_name("gelu", False) == "gelu"
    model = GPTChar("acon_c", vocab_size=11, glu=True, layers=1)
    act = model.blocks[0].mlp.act
    assert isinstance(act, adaptact.nn.GatedActivation) and isinstance(act.gate, adaptact.AconC)
    assert act.gate.channels == 341 and act.gate.channel_dim == -1


@pytest.mark.parametrize("name", POOLING)
def test_gpt_char_never_lets_a_position_see_a_later_one(name):
    torch.manual_seed(0)
    model = GPTChar(name, vocab_size=20, context=16, layers=2, dim=32, heads=2).train()
    x = torch.randint(0, 20, (3, 16))
    changed = x.clone()
    changed[:, 9:] = torch.randint(0, 20, (3, 7))
    # training mode: BatchNorm in the generators normalises per position, so batch statistics don't leak
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("init", ["paper", "match"])
def test_a_gpt_char_converted_from_gelu_stays_causal(init):
    """Fine-tuning converts a trained GELU GPT: replace_activations must see it as a decoder (its
    blocks say ``is_causal``) and give the pooling activations the causal context."""
    torch.manual_seed(0)
    model = GPTChar("gelu", vocab_size=20, context=16, layers=2, dim=32, heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # init="match": APReLU cannot become GELU
        replaced = adaptact.replace_activations(model, "aprelu", init=init)
    assert any("causal decoder" in note for note in replaced.notes)
    assert all(model.blocks[i].mlp.act.context == "causal" for i in range(2))
    x = torch.randint(0, 20, (3, 16))
    changed = x.clone()
    changed[:, 9:] = torch.randint(0, 20, (3, 7))
    a, b = model.train()(x), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])

def test_gpt_char_refuses_more_tokens_than_its_context():
    with pytest.raises(ValueError, match="takes at most 8 tokens, got 9"):
        GPTChar(vocab_size=5, context=8, layers=1)(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("model, context", [("vit", "sample"), ("vit-token", "token")])
def test_vit_on_28x28_images(model, context):
    net = build(model, "meta_acon_c", (1, 28, 28), 10)
    assert isinstance(net, ViT) and net.positions.shape == (1, 1 + 49, 64)
    act = net.blocks[0].mlp.act
    assert act.context == context and act.channel_dim == -1 and act.channels == 128
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="vit takes square images"):
        build("vit", "gelu", (1, 40), 10)


def test_vit_token_context_makes_tokens_independent_in_the_mlp():
    torch.manual_seed(0)
    net = build("vit-token", "meta_acon_c", (1, 8, 8), 10).eval()
    mlp = net.blocks[0].mlp
    h = torch.randn(2, 5, 64)
    alone = torch.cat([mlp(h[:, t : t + 1]) for t in range(5)], dim=1)
    torch.testing.assert_close(mlp(h), alone)


@pytest.mark.parametrize("name", ["gelu", "polynorm", "frelu", "swiglu_oss"])
def test_transformers_train_with_llm_and_adaptive_activations(name):
    torch.manual_seed(0)
    model = GPTChar(name, vocab_size=13, context=8, layers=1, dim=16, heads=2)
    x = torch.randint(0, 13, (4, 8))
    loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_compare_trains_the_vit_by_iterations(tmp_path):
    pytest.importorskip("sklearn")
    from adaptact.cli import main

    out = tmp_path / "out"
    argv = ["compare", "--dataset", "digits", "--model", "vit-token",
            "--activations", "gelu,meta_acon_c,polynorm", "--optimizers", "adamw", "--lrs", "1e-3",
            "--seeds", "1", "--iters", "6", "--eval-every", "3",
            "--db", str(tmp_path / "r.sqlite"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    md = (out / "report.md").read_text()
    assert "## digits, vit-token, batch 128, 6 iterations" in md
    assert "### Test accuracy at the evaluation with the best validation accuracy" in md
    assert "time per iteration (ms)" in md and "| polynorm |" in md


def test_the_cnns_refuse_a_gated_form():
    with pytest.raises(ValueError, match="swiglu is a gated \\(GLU\\) form, for the transformers' MLPs"):
        build("conv", "swiglu", (1, 28, 28))
    assert build("vit", "acon_c_glu", (1, 28, 28)).blocks[0].mlp.gated
