"""adaptact in transformers, tested against the real libraries users combine it with: tiny
Hugging Face LLaMA, GPT-2, BERT and ViT built from configs (no weights), torch's own
TransformerEncoderLayer, and blocks written the way timm writes them (act_layer(inplace=True))."""

import copy
import warnings

import pytest
import torch
from torch import nn

import adaptact
from adaptact.convert import is_causal_model
from adaptact.sites import HF_ACTIVATIONS, is_activation

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB, HIDDEN, INTERMEDIATE, LAYERS = 64, 32, 48, 2


def llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                      eos_token_id=2)
    return transformers.LlamaForCausalLM(config), INTERMEDIATE


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4,
                                     n_positions=64, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config), 4 * HIDDEN


def bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                     num_hidden_layers=LAYERS, num_attention_heads=4,
                                     max_position_embeddings=64)
    return transformers.BertModel(config), INTERMEDIATE


def vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=HIDDEN,
                                    intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                                    num_attention_heads=4)
    return transformers.ViTModel(config), INTERMEDIATE


MODELS = {"llama": llama, "gpt2": gpt2, "bert": bert, "vit": vit}
ADAPTIVE = [n for n in adaptact.available("adaptive")] + ["maxout", "pau"]


def _inputs(kind, batch=2, length=7):
    if kind == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16)}
    return {"input_ids": torch.randint(3, VOCAB, (batch, length))}


def _output(model, inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("kind", list(MODELS))
def test_every_adaptive_activation_replaces_the_mlp_activation(kind, name):
    torch.manual_seed(0)
    model, width = MODELS[kind]()
    replaced = adaptact.replace_activations(model, name)
    assert len(replaced) == LAYERS  # one activation per MLP, GPT-2's included (no silent no-op)
    for path in replaced:
        act = model.get_submodule(path)
        assert isinstance(act, adaptact.create(name, channels=4).__class__)
        if adaptact.spec(name).per_channel:
            assert act.channels == width and act.channel_dim == -1  # the gate / up projection's width
        if adaptact.spec(name).per_sample:
            assert act.context == ("causal" if kind in ("llama", "gpt2") else "sample")
    out = _output(model, _inputs(kind))
    out.float().pow(2).mean().backward()
    grads = [p.grad for path in replaced for p in model.get_submodule(path).parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("name", ["polynorm", "xielu", "relu2", "golu"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_llm_era_activations_replace_the_mlp_activation(kind, name):
    torch.manual_seed(0)
    model, width = MODELS[kind]()
    replaced = adaptact.replace_activations(model, name)
    assert len(replaced) == LAYERS
    for path in replaced:
        act = model.get_submodule(path)
        assert type(act) is type(adaptact.create(name))
        if name == "polynorm":  # normalises each token over its channels: the layout is the MLP's
            assert act.channel_dim == -1
            h = torch.randn(2, 7, width)
            torch.testing.assert_close(act(h), adaptact.functional.polynorm(h, act.weight, act.bias, dim=-1))
    assert torch.isfinite(_output(model, _inputs(kind))).all()


@pytest.mark.parametrize("name", ["swiglu", "acon_c_glu", "swiglu_oss"])
def test_a_gated_form_cannot_replace_an_activation(name):
    model, _ = llama()
    with pytest.raises(ValueError, match="changes the number of channels and cannot replace"):
        adaptact.replace_activations(model, name)


def test_every_hugging_face_activation_class_is_recognised():
    classes = {v[0] if isinstance(v, tuple) else v for v in transformers.activations.ACT2CLS.values()}
    hf = {c for c in classes if c.__module__ == "transformers.activations"}
    assert {c.__name__ for c in hf} - {"LinearActivation"} <= HF_ACTIVATIONS
    for name, entry in transformers.activations.ACT2CLS.items():
        if isinstance(entry, tuple) and type(entry[0]).__module__ == "adaptact.huggingface":
            continue  # adaptact's own names: tests/test_huggingface.py
        act = transformers.activations.ACT2FN[name]
        expected = name not in ("linear", "sigmoid", "tanh")  # identities and gates stay
        assert is_activation(act) == expected, name


def test_the_identity_and_gates_are_reported_and_replacing_nothing_warns():
    identity = transformers.activations.ACT2FN["linear"]
    model = nn.Sequential(nn.Linear(4, 4), identity, nn.Linear(4, 4), nn.Sigmoid())
    with pytest.warns(RuntimeWarning, match=r"nothing in Sequential.*1 \(LinearActivation\), 3 \(Sigmoid"):
        replaced = adaptact.replace_activations(model, "acon_c")
    assert replaced == [] and replaced.left == ["1 (LinearActivation)", "3 (Sigmoid)"]


@pytest.mark.parametrize("name", ["meta_acon_c", "aprelu", "dy_relu_b", "frelu"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_lm_logits_never_see_later_tokens(kind, name):
    torch.manual_seed(0)
    model, _ = MODELS[kind]()
    replaced = adaptact.replace_activations(model, name)
    assert "context='causal'" in replaced.notes[0] and is_causal_model(model)
    ids = torch.randint(3, VOCAB, (3, 9))
    later = ids.clone()
    later[:, 6:] = torch.randint(3, VOCAB, (3, 3))
    for training in (True, False):
        model.train(training)
        a, b = model(copy.deepcopy(ids)).logits, model(later).logits
        torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
        assert not torch.equal(a[:, 6:], b[:, 6:])
    # the papers' pooling, chosen explicitly, leaks: the test above can fail
    model, _ = MODELS[kind]()
    adaptact.replace_activations(model, name, context="sample")
    model.eval()
    assert not torch.equal(model(ids).logits[:, :6], model(later).logits[:, :6])


def _greedy(model, ids, use_cache):
    return model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=0)


@pytest.mark.parametrize("name", ["meta_acon_c", "aprelu", "dy_relu_a", "acon_c"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_cached_and_uncached_greedy_generation_agree(kind, name):
    torch.manual_seed(0)
    model, _ = MODELS[kind]()
    adaptact.replace_activations(model, name)
    model.eval()
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        cached, uncached = _greedy(model, ids, True), _greedy(model, ids, False)
        assert torch.equal(cached, uncached)
        # and the logits of each cached step equal the full sequence's
        full = model(cached).logits
        prefix = model(cached[:, :5], use_cache=True)
        step = model(cached[:, 5:6], cache=prefix.cache, use_cache=True).logits
    torch.testing.assert_close(step[:, 0], full[:, 5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_converted_model_generates_without_warnings_of_its_own(kind, monkeypatch):
    """transformers warns once per process for a deprecated name read (5.x renamed the outputs'
    ``past_key_values`` to ``cache``): what a converted model's generation logs is what the original's
    logs, whatever was logged before in this process."""
    def logged(model):
        messages: list[str] = []

        def record(message, *args, **kwargs):
            messages.append(str(message))

        for logger in {transformers.utils.logging.get_logger(n) for n in ("transformers.utils.generic",
                                                                         "transformers.generation.utils")}:
            monkeypatch.setattr(logger, "warning_once", record)
            monkeypatch.setattr(logger, "warning", record)
        with torch.no_grad():
            _greedy(model, ids, True)
        return messages

    torch.manual_seed(0)
    model, _ = MODELS[kind]()
    model.eval()
    ids = torch.randint(3, VOCAB, (1, 5))
    original = logged(model)
    adaptact.replace_activations(model, "meta_acon_c")
    assert logged(model) == original


@pytest.mark.parametrize("name, context", [("meta_acon_c", "sample"), ("frelu", "sample")])
def test_a_cached_decode_that_cannot_continue_raises(name, context):
    torch.manual_seed(0)
    model, _ = llama()
    adaptact.replace_activations(model, name, **({} if context is None else {"context": context}))
    model.eval()
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad(), pytest.raises(RuntimeError, match="cached decode.*use_cache=False"):
        _greedy(model, ids, True)
    with torch.no_grad():
        assert _greedy(model, ids, False).shape == (2, 11)


def test_example_inputs_roll_the_conversion_back_when_the_forward_fails():
    torch.manual_seed(0)
    model, _ = llama()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match="expected 48 channels on dim 1, got 7"):  # dim 1 forced on tokens
        adaptact.replace_activations(model, "acon_c", channel_dim=1, example_inputs=_inputs("llama"))
    assert {n: type(m) for n, m in model.named_modules()} == before
    replaced = adaptact.replace_activations(model, "acon_c", channel_dim=-1, example_inputs=_inputs("llama"))
    assert len(replaced) == LAYERS and model.training  # the example ran in eval mode; the mode is back


def test_torch_transformer_encoder_layer_uses_the_new_activation():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(HIDDEN, 4, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 7, HIDDEN)
    with torch.no_grad():
        relu = layer(x)
    assert adaptact.replace_activations(layer, "meta_acon_c") == ["activation"]
    assert layer.activation.channels == 64 and layer.activation.channel_dim == -1
    with torch.no_grad():  # eval + no_grad would take torch's fused fast path with its own relu
        after = layer(x)
    expected = layer.linear2(layer.activation(layer.linear1(layer.norm1(x + layer.self_attn(x, x, x)[0]))))
    torch.testing.assert_close(after, layer.norm2(layer.norm1(x + layer.self_attn(x, x, x)[0]) + expected))
    assert not torch.allclose(after, relu)
    # given directly, as torch's docs show it, with channel_dim=-1
    direct = nn.TransformerEncoderLayer(HIDDEN, 4, 64, batch_first=True,
                                        activation=adaptact.create("acon_c", channels=64, channel_dim=-1))
    direct(x).sum().backward()


class Mlp(nn.Module):
    """timm.layers.Mlp as timm writes it: ``act_layer()`` with no channel count."""

    def __init__(self, in_features, hidden_features, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNormAct(nn.Module):
    """timm.layers.ConvNormAct as timm writes it: ``act_layer(inplace=True)``."""

    def __init__(self, in_channels, out_channels, act_layer=nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act_layer(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


@pytest.mark.parametrize("name", ["acon_c", "meta_acon_c", "aprelu", "dy_relu_b", "maxout", "arelu"])
def test_timm_style_blocks_take_lazy_act_layers(name):
    mlp = Mlp(HIDDEN, 80, act_layer=adaptact.get_act_layer(name, channel_dim=-1))
    conv = ConvNormAct(3, 24, act_layer=adaptact.get_act_layer(name))
    if adaptact.spec(name).per_channel:
        assert not mlp.act.initialized and "uninitialized" in repr(mlp.act)
    mlp(torch.randn(2, 5, HIDDEN)).sum().backward()
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    if adaptact.spec(name).per_channel:
        assert (mlp.act.channels, conv.act.channels) == (80, 24)
    optimizer = torch.optim.SGD([*mlp.parameters(), *conv.parameters()], lr=0.1)  # after the first forward
    optimizer.step()


def test_lazy_modules_load_a_state_dict_before_the_first_forward():
    torch.manual_seed(0)
    trained = adaptact.MetaAconC(16, context="causal", channel_dim=-1)
    lazy = adaptact.MetaAconC(None, context="causal", channel_dim=-1)
    lazy.load_state_dict(trained.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(lazy.eval()(x), trained.eval()(x), rtol=0, atol=0)
    channels_first = adaptact.MetaAconC(16, context="causal")  # the other layout loads the same state
    channels_first.load_state_dict(trained.state_dict())
    torch.testing.assert_close(channels_first.eval()(x.transpose(1, 2)).transpose(1, 2), lazy(x))
    half = adaptact.AconC(None).to(torch.bfloat16)  # made in the dtype it was moved to
    half(torch.randn(2, 4, 3, dtype=torch.bfloat16))
    assert half.p1.dtype == torch.bfloat16


COMPILED = [  # (name, kwargs, lazy): laziness is one machinery for every module, two cases suffice
    ("acon_c", {"channel_dim": -1}, False), ("acon_c", {"channel_dim": -1}, True),
    ("meta_acon_c", {"channel_dim": -1, "context": "causal"}, False),
    ("meta_acon_c", {"channel_dim": -1, "context": "causal"}, True),
    ("meta_acon_c", {"channel_dim": -1, "context": "token"}, False),
    ("aprelu", {"channel_dim": -1, "context": "causal"}, False),
    ("dy_relu_b", {"channel_dim": -1, "context": "token"}, False),
    ("frelu", {"channel_dim": -1, "dims": 1, "context": "causal"}, False),
]


@pytest.mark.parametrize("name, kwargs, lazy", COMPILED, ids=[
    f"{n}-{kw.get('context', 'sample')}{'-lazy' * lazy}" for n, kw, lazy in COMPILED])
def test_new_paths_compile_with_fullgraph_to_the_eager_numbers(name, kwargs, lazy):
    torch.compiler.reset()  # other tests' compiled graphs of these classes count towards dynamo's limits
    torch.manual_seed(0)
    eager = adaptact.create(name, channels=None if lazy else 24, **kwargs)
    x = torch.randn(3, 10, 24)
    eager(x)  # a lazy module is made by its first call, before compiling
    compiled = copy.deepcopy(eager)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fn = torch.compile(compiled, fullgraph=True)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = eager(xa), fn(xb)
        ya.pow(2).sum().backward()
        yb.pow(2).sum().backward()
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if n.startswith(("fc", "bn")) and any(isinstance(m, nn.BatchNorm1d) for m in eager.modules()):
            continue  # batch statistics cancel these to rounding noise of zero (tests/ops/test_backends.py)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_matched_conversion_keeps_a_llamas_logits(name="meta_acon_c"):
    """LLaMA's SiLU is Meta-ACON-C with its generator constant (beta -> 1, p1 = 1, p2 = 0): init="match"
    keeps the model's function, causal context and all, where the paper's initialisation changes it."""
    torch.manual_seed(0)
    model, _ = llama()
    paper = copy.deepcopy(model)
    inputs = _inputs("llama")
    with torch.no_grad():
        before = _output(model.eval(), inputs)
        replaced = adaptact.replace_activations(model, name, init="match")
        adaptact.replace_activations(paper, name)
        after, after_paper = _output(model.eval(), inputs), _output(paper.eval(), inputs)
    assert len(replaced.fits) == LAYERS and max(replaced.fits.values()) < 1e-3
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert (after_paper - before).abs().max() > 100 * (after - before).abs().max()


def _more(kind):
    """Tiny configs of the architectures whose layers hide their producers from torch.fx (OPT, Mixtral),
    mix encoder and decoder (T5), call module-level activations (RoBERTa's LM head) or have their
    own activation class (Bloom), beside Gemma2's gated MLP."""
    t, h, i = transformers, HIDDEN, INTERMEDIATE
    small = {"vocab_size": VOCAB, "num_attention_heads": 4}
    return {
        "opt": lambda: t.OPTForCausalLM(t.OPTConfig(
            hidden_size=h, ffn_dim=i, num_hidden_layers=LAYERS, word_embed_proj_dim=h,
            max_position_embeddings=64, **small)),
        "mixtral": lambda: t.MixtralForCausalLM(t.MixtralConfig(
            hidden_size=h, intermediate_size=i, num_hidden_layers=LAYERS, num_key_value_heads=2,
            num_local_experts=4, num_experts_per_tok=2, **small)),
        "gemma2": lambda: t.Gemma2ForCausalLM(t.Gemma2Config(hidden_size=h, intermediate_size=i,
                                                             num_hidden_layers=LAYERS, num_key_value_heads=2,
                                                             head_dim=8, **small)),
        "roberta": lambda: t.RobertaForMaskedLM(t.RobertaConfig(hidden_size=h, intermediate_size=i,
                                                                num_hidden_layers=LAYERS,
                                                                max_position_embeddings=64, **small)),
        "bloom": lambda: t.BloomForCausalLM(t.BloomConfig(hidden_size=h, n_layer=LAYERS, n_head=4,
                                                          vocab_size=VOCAB)),
        "t5": lambda: t.T5ForConditionalGeneration(t.T5Config(
            d_model=h, d_ff=i, num_layers=LAYERS, num_heads=4, d_kv=8, feed_forward_proj="gelu",
            vocab_size=VOCAB)),
        "qwen2_moe": lambda: t.Qwen2MoeForCausalLM(t.Qwen2MoeConfig(
            hidden_size=h, intermediate_size=i, moe_intermediate_size=i, shared_expert_intermediate_size=i,
            num_hidden_layers=LAYERS, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, **small)),
    }[kind]()


# (width the activation sees, context of each site by the start of its path, left alone)
MORE = {"opt": (INTERMEDIATE, {"": "token"}, []), "mixtral": (INTERMEDIATE, {"": "token"}, []),
        "gemma2": (INTERMEDIATE, {"": "causal"}, []), "bloom": (4 * HIDDEN, {"": "causal"}, []),
        "roberta": (INTERMEDIATE, {"": "sample"},
                    ["lm_head.<gelu> (GELUActivation called by a forward fx cannot trace: not replaced)"]),
        "t5": (INTERMEDIATE, {"encoder": "sample", "decoder": "causal"}, []),
        # its shared expert is a traceable MLP called on rows (B*T, C), seen in a dry forward (before:
        # "causal", and the first forward failed)
        "qwen2_moe": (INTERMEDIATE, {"": "token"}, [])}


@pytest.mark.parametrize("kind", list(MORE))
def test_more_architectures_get_the_right_channels_context_and_report(kind):
    """Channels from the producer that feeds the activation, or from the first input where torch.fx
    cannot trace the layer (never a guess that fails at the first forward); decoders causal (rows of
    tokens: each position alone), encoders the papers' pooling; what cannot be replaced is listed."""
    torch.manual_seed(0)
    model = _more(kind).eval()
    replaced = adaptact.replace_activations(model, "meta_acon_c")
    width, contexts, left = MORE[kind]
    assert len(replaced) == (2 * LAYERS if kind in ("t5", "qwen2_moe") else LAYERS) and replaced.left == left
    ids = torch.randint(3, VOCAB, (2, 7))
    later = ids.clone()
    later[:, 4:] = torch.randint(3, VOCAB, (2, 3))
    with torch.no_grad():
        run = (lambda x: model(input_ids=ids, decoder_input_ids=x).logits) if kind == "t5" else \
            (lambda x: model(x).logits)
        y = run(ids)
        if kind != "roberta":  # a decoder's outputs before 4 never see the tokens after (Mixtral's expert
            atol = 1e-6 if kind in ("mixtral", "qwen2_moe") else 0  # batches round differently: ~6e-8)
            torch.testing.assert_close(run(later)[:, :4], y[:, :4], rtol=0, atol=atol)
    assert not any(m.training for m in model.modules())  # converted in eval mode, made in eval mode
    for path in replaced:
        act = model.get_submodule(path)
        assert act.channels == width, path
        assert act.context == next(c for start, c in sorted(contexts.items(), reverse=True)
                                   if path.startswith(start)), path


def test_layers_fx_cannot_trace_take_the_context_their_inputs_show():
    """torch.fx cannot trace BART's or OPT's layers; a dry forward of the model's dummy inputs shows
    what each activation sees: BART's see sequences (B, T, C), so FReLU converts them, with its
    causal window in the decoder (before: a refusal asking for context='causal'), and cached
    decoding agrees with the full forward;
    OPT's see rows (B*T, C), which FReLU's window cannot take: the conversion says so and changes
    nothing."""
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=INTERMEDIATE, decoder_ffn_dim=INTERMEDIATE,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)).eval()
    replaced = adaptact.replace_activations(model, "frelu")
    # its encoder's attention is marked not causal: the papers' context there (before: causal)
    assert {p: model.get_submodule(p).context for p in replaced} == {
        "model.encoder.layers.0.activation_fn": "sample", "model.decoder.layers.0.activation_fn": "causal"}
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        assert torch.equal(_greedy(model, ids, True), _greedy(model, ids, False))
    opt = _more("opt").eval()
    before = {n: type(m) for n, m in opt.named_modules()}
    with pytest.raises(ValueError, match=r"frelu cannot replace the activation at 'model.decoder.layers.0."
                                         r"activation_fn': it sees rows of tokens"):
        adaptact.replace_activations(opt, "frelu")
    assert {n: type(m) for n, m in opt.named_modules()} == before


def test_channels_can_be_given_per_site_or_for_all():
    torch.manual_seed(0)
    model = _more("opt")
    sites = [f"model.decoder.layers.{k}.activation_fn" for k in range(LAYERS)]
    replaced = adaptact.replace_activations(model, "acon_c", channels={sites[0]: INTERMEDIATE})
    first, second = (model.get_submodule(s) for s in sites)
    assert first.channels == INTERMEDIATE and second.channels is None
    assert any("channels from the first input" in n and sites[1] in n for n in replaced.notes)
    with pytest.raises(ValueError, match=r"init='match' needs the channels .* pass channels="):
        adaptact.replace_activations(_more("opt"), "acon_c", init="match")
    matched = adaptact.replace_activations(_more("opt"), "acon_c", init="match", channels=INTERMEDIATE)
    assert set(matched.fits) == set(sites)
    with pytest.raises(ValueError, match=r"channels= names no activation site: \['nowhere'\]"):
        adaptact.replace_activations(_more("opt"), "acon_c", channels={"nowhere": 3})
