"""Converted models through Hugging Face's own calls (real transformers, tiny configs): saved with
save_pretrained and reloaded with from_pretrained as the converted model, built from a config that
names an adaptact activation, served to padded batches and decoded with every cache pattern
generate uses, each checked against the full, unpadded forward."""

import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch

import adaptact
from adaptact.huggingface import UNREBUILDABLE

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB, HIDDEN, INTERMEDIATE, LAYERS = 64, 32, 48, 2
CONDITIONED = ["meta_acon_c", "aprelu", "dy_relu_b", "frelu"]  # FReLU: its window of earlier inputs


def llama(**options):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                      eos_token_id=2, **options)
    return transformers.LlamaForCausalLM(config)


def gpt2(**options):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4,
                                     n_positions=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                     **options)
    return transformers.GPT2LMHeadModel(config)


def bert(**options):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                     num_hidden_layers=LAYERS, num_attention_heads=4,
                                     max_position_embeddings=64, **options)
    return transformers.BertForMaskedLM(config)


def gemma2(**options):
    config = transformers.Gemma2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                       num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=8, pad_token_id=0, **options)
    return transformers.Gemma2ForCausalLM(config)


def phi3(**options):
    """Gate and up fused in one Linear, chunked in the forward: the activation's producer is half
    of ``gate_up_proj``."""
    config = transformers.Phi3Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                     num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2, **options)
    return transformers.Phi3ForCausalLM(config)


def mistral(**options):
    """Every layer a sliding window of 4 positions: its cache holds no full-attention keys."""
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                        num_hidden_layers=LAYERS, num_attention_heads=4,
                                        num_key_value_heads=2, sliding_window=4, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2, **options)
    return transformers.MistralForCausalLM(config)


def falcon(**options):
    """Its config names the activation ``activation``."""
    config = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                       num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                       **options)
    return transformers.FalconForCausalLM(config)


def t5(**options):
    """Its activation is derived from ``feed_forward_proj`` ("gated-gelu": T5 v1.1's and FLAN-T5's)
    each time its config is made; an encoder ("sample") and a decoder ("causal")."""
    config = transformers.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_ff=INTERMEDIATE, num_layers=LAYERS,
                                   num_heads=4, d_kv=8, feed_forward_proj="gated-gelu",
                                   decoder_start_token_id=0, **options)
    return transformers.T5ForConditionalGeneration(config)


MODELS = {"llama": llama, "gpt2": gpt2, "bert": bert, "gemma2": gemma2, "phi3": phi3, "falcon": falcon,
          "t5": t5, "mistral": mistral}
AUTO = {"llama": transformers.AutoModelForCausalLM, "gpt2": transformers.AutoModelForCausalLM,
        "bert": transformers.AutoModelForMaskedLM, "gemma2": transformers.AutoModelForCausalLM,
        "phi3": transformers.AutoModelForCausalLM, "falcon": transformers.AutoModelForCausalLM,
        "t5": transformers.AutoModelForSeq2SeqLM, "mistral": transformers.AutoModelForCausalLM}


def _converted(kind, name, **kwargs):
    """A converted model with every weight moved off its initial value (as after fine-tuning)."""
    torch.manual_seed(0)
    model = MODELS[kind]()
    adaptact.replace_activations(model, name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["meta_acon_c", "aprelu", "acon_c", "frelu"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_save_pretrained_then_from_pretrained_is_the_converted_model(tmp_path, kind, name):
    model = _converted(kind, name)
    model.save_pretrained(tmp_path)
    loaded = AUTO[kind].from_pretrained(tmp_path).eval()
    assert loaded.config.adaptact["activation"] == name and loaded.config.adaptact["format"] == 1
    ours = {p: repr(m) for p, m in model.named_modules() if isinstance(m, adaptact.nn.ActivationModule)}
    theirs = {p: repr(m) for p, m in loaded.named_modules() if isinstance(m, adaptact.nn.ActivationModule)}
    assert ours == theirs and len(ours) >= LAYERS
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = torch.randint(3, VOCAB, (2, 7))
    inputs = {"input_ids": ids, **({"decoder_input_ids": ids[:, :5]} if kind == "t5" else {})}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_a_conversion_the_config_cannot_rebuild_refuses_to_load(tmp_path):
    """A policy that picks some sites: the config cannot say which, so loading fails naming adaptact,
    never returning the original activation with the trained weights dropped. Nor can it say the
    channels of a layer torch.fx cannot trace (OPT's), which come from the first input."""
    opt = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=1,
        num_attention_heads=4, word_embed_proj_dim=HIDDEN, max_position_embeddings=64))
    adaptact.replace_activations(opt, "acon_c")
    assert opt.config.activation_function == UNREBUILDABLE and "first input" in opt.config.adaptact["reason"]
    model = _converted("llama", "acon_c", policy=lambda path, module: path.startswith("model.layers.0."))
    assert model.config.hidden_act == UNREBUILDABLE and "not here" in adaptact.replace_activations(
        llama(), "acon_c", policy=lambda path, module: "layers.0." in path).notes[-1]
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"converted by adaptact\.replace_activations to 'acon_c'.*"
                                           r"load_state_dict"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["meta_acon_c", "acon_c"])
def test_opt_converted_with_its_channels_given_saves_and_reloads(tmp_path, name):
    """OPT's layers hide their producer from torch.fx: without ``channels=`` its activations are lazy
    and the conversion refuses to reload (loudly, saying so); with them, the recorded layout and
    context ("token": those layers see rows of tokens) rebuild it exactly."""
    def opt():
        return transformers.OPTForCausalLM(transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=LAYERS,
            num_attention_heads=4, word_embed_proj_dim=HIDDEN, max_position_embeddings=64, pad_token_id=0))

    torch.manual_seed(0)
    lazy = opt()
    adaptact.replace_activations(lazy, name)
    assert "channels=" in lazy.config.adaptact["reason"]
    model = opt().eval()
    adaptact.replace_activations(model, name, channels=INTERMEDIATE)
    assert "reason" not in model.config.adaptact
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    def acts(m):
        return {p: repr(a) for p, a in m.named_modules() if isinstance(a, adaptact.nn.ActivationModule)}

    assert acts(loaded) == acts(model) and len(acts(model)) == LAYERS
    ids = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def _mixtral():
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        pad_token_id=0))


def _opt():
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=4, word_embed_proj_dim=HIDDEN, max_position_embeddings=64, pad_token_id=0))


def _qwen2_moe():
    """Experts of one width (no Linear layers: lazy channels) beside a shared expert's MLP of another."""
    return transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, pad_token_id=0))


def test_a_model_converted_on_the_meta_device_gets_the_contexts_of_one_converted_with_weights():
    """Deferred init (built on the meta device, converted, then materialised and loaded): Qwen2-MoE's
    shared expert, called on rows, gets "token" as on the CPU (before: its grouped matmuls refuse
    float32 on meta, so the conversion's dry forward failed, the shared expert got "causal" and the
    first forward raised); loaded with the twin's weights, the model gives the twin's logits."""
    channels = {f"model.layers.{i}.mlp.{p}.act_fn": c for i in range(LAYERS)
                for p, c in (("shared_expert", 40), ("experts", 24))}
    torch.manual_seed(0)
    twin = _qwen2_moe().eval()
    adaptact.replace_activations(twin, "meta_acon_c", channels=channels)
    with torch.device("meta"):
        model = _qwen2_moe()
    adaptact.replace_activations(model, "meta_acon_c", channels=channels)
    contexts = {p: model.get_submodule(p).context for p in channels}
    assert contexts == {p: twin.get_submodule(p).context for p in channels}
    assert {c for p, c in contexts.items() if "shared_expert." in p} == {"token"}
    model.to_empty(device="cpu")
    model.load_state_dict(twin.state_dict())
    with torch.no_grad():  # and the rotary embedding's buffers, which no state dict holds
        for name, buffer in twin.named_buffers():
            model.get_buffer(name).copy_(buffer)
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, twin(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("build", [_opt, _mixtral, _qwen2_moe], ids=["opt", "mixtral", "qwen2_moe"])
def test_lazy_channels_made_by_a_forward_are_recorded_by_save_pretrained(tmp_path, build):
    """Converted without ``channels=``, OPT's and the experts' activations take their channels from
    their first input, which the config cannot say: saved before any forward, loading refuses
    (loudly). After a forward (fine-tuning), ``save_pretrained`` records the conversion again with
    the channels made (by the class of the layer holding them where widths differ: Qwen2-MoE), and
    ``from_pretrained`` gives the model back exactly (before: refused)."""
    torch.manual_seed(0)
    model = build()
    adaptact.replace_activations(model, "meta_acon_c")
    model.save_pretrained(tmp_path / "before")
    with pytest.raises(RuntimeError, match="takes its channels from its first input"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "before")
    ids = torch.randint(3, VOCAB, (2, 7))
    model(ids, labels=ids).loss.backward()  # a training step's forward makes the channels
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "after")
    assert "reason" not in model.config.adaptact
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "after").eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def _llava():
    """A LLaVA: a CLIP vision tower (an encoder: its attention marked not causal), a projector and a
    LLaMA, each with its own config field for the activation (two in sub-configs)."""
    text = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                    num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                    pad_token_id=0)
    vision = transformers.CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                           num_hidden_layers=1, num_attention_heads=4, image_size=16,
                                           patch_size=8)
    return transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=VOCAB - 1))


def test_a_vision_language_model_converts_whole_saves_reloads_and_pads_its_text_alone(tmp_path):
    """Every activation of a LLaVA (vision tower, projector, language model): the vision tower keeps
    the papers' context, the text is causal; its sub-configs' fields are renamed, so it reloads
    exactly (before: refused, the top config names no activation); right padding of the text
    changes no row's logits, nor the image's (before: the text's mask was taken for the vision
    tower's and the projector's positions)."""
    torch.manual_seed(0)
    model = _llava().eval()
    replaced = adaptact.replace_activations(model, "meta_acon_c")
    contexts = {p.split(".")[1]: model.get_submodule(p).context for p in replaced}
    assert contexts == {"vision_tower": "sample", "multi_modal_projector": "causal",
                        "language_model": "causal"}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    image = VOCAB - 1
    ids = torch.cat([torch.full((2, 4), image), torch.randint(3, VOCAB - 1, (2, 6))], dim=1)
    pixels = torch.randn(2, 3, 16, 16)
    mask = torch.ones_like(ids)
    ids[0, 7:], mask[0, 7:] = 0, 0  # row 0 right-padded
    with torch.no_grad():
        padded = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        alone = model(input_ids=ids[:1, :7], pixel_values=pixels[:1]).logits
        torch.testing.assert_close(padded[0, :7], alone[0], rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        again = loaded(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        torch.testing.assert_close(again, padded, rtol=0, atol=0)


def test_an_encoder_decoders_decoder_takes_its_own_padding_not_the_encoders():
    """T5 with a right-padded encoder input (its tokenizer pads right): each stack is told its own
    mask, so a padded row's logits are its logits alone (before: the decoder's causal statistics
    took the encoder's mask, 0.09 off)."""
    torch.manual_seed(0)
    model = t5().eval()
    adaptact.replace_activations(model, "meta_acon_c")
    ids, decoder_ids = torch.randint(3, VOCAB, (2, 8)), torch.randint(3, VOCAB, (2, 4))
    mask = torch.ones_like(ids)
    ids[0, 5:], mask[0, 5:] = 0, 0
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        alone = model(input_ids=ids[:1, :5], decoder_input_ids=decoder_ids[:1]).logits
    torch.testing.assert_close(padded[:1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONDITIONED)
def test_sequences_packed_in_a_row_train_as_each_alone(name):
    """Padding-free training (transformers' ``DataCollatorWithFlattening``: sequences packed in one
    row, ``position_ids`` restarting, no mask), as transformers' own attention keeps them apart
    without a cache: each packed sequence's logits are its logits alone, and the gradients of a loss
    over the packed row are the sum of those over the sequences alone, with and without gradient
    checkpointing (before: refused; statistics would have crossed the sequences)."""
    torch.manual_seed(0)
    model = llama()
    adaptact.replace_activations(model, name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lengths = [5, 1, 3, 7]
    ids = torch.randint(3, VOCAB, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    weights = torch.randn(1, sum(lengths), VOCAB)
    model.train()
    alone = [model(input_ids=part, use_cache=False).logits for part in ids.split(lengths, dim=1)]
    torch.cat(alone, dim=1).mul(weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        torch.testing.assert_close(packed, torch.cat(alone, dim=1), rtol=1e-5, atol=1e-5)
        packed.mul(weights).sum().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("name", CONDITIONED)
@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_generate_with_a_static_cache_reads_the_padding_of_its_4d_masks(kind, name):
    """generate with a static cache (``cache_implementation="static"``, the compiled serving path)
    hands the model 4-D masks made from the 2-D one (Gemma 2: one per kind of layer, additive
    floats): each step's scores are those of the uncached generation on the 2-D mask (before: the
    4-D masks were not read, so a left-padded row's pads counted; FReLU then chose other tokens)."""
    model = _converted(kind, name)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    options = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0,
               "output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        want = model.generate(ids, use_cache=False, **options)
        got = model.generate(ids, cache_implementation="static", **options)
    assert torch.equal(got.sequences, want.sequences)
    for step, (a, b) in enumerate(zip(got.scores, want.scores, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("name", CONDITIONED)
def test_sequences_packed_by_a_block_diagonal_4d_mask_are_each_their_own(name):
    """Packing by a 4-D block-diagonal attention mask (each token attending within its own sequence,
    as packing was done before position_ids told it): the statistics restart where the mask does, so
    each sequence's logits are its logits alone, as with restarting position_ids."""
    model = _converted("llama", name)
    lengths = [4, 1, 5]
    ids = torch.randint(3, VOCAB, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    block = torch.block_diag(*[torch.ones(n, n) for n in lengths]).bool() & torch.ones(10, 10).tril().bool()
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=block[None, None], position_ids=positions,
                       use_cache=False).logits
        alone = torch.cat([model(input_ids=part).logits for part in ids.split(lengths, dim=1)], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["meta_acon_c", "dy_relu_b", "frelu"])
def test_continuous_batching_gives_each_request_its_generate_tokens(name):
    """transformers' continuous batching (``generate_batch``) packs its requests' new positions in a
    row and keeps their keys in a paged cache: the running means continue from those kept at the
    slot of the position before each request's new ones, so each request gets the tokens ``generate``
    gives it alone, with prompts split over several steps (a small ``max_batch_tokens``) and decoding
    mixed with prefills (before: every step started afresh; DY-ReLU-B chose other tokens). Kept is
    each request's last position only: a request continuing from a prefix another one computed (the
    cache's block sharing) fails in one line naming the setting that avoids it, as every request
    does where a causal FReLU's window would have to continue."""
    model = _converted("llama", name)
    generator = torch.Generator().manual_seed(1)
    shared = torch.randint(3, VOCAB, (8,), generator=generator).tolist()  # two full pages of 4
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (5, 11, 3)]
    prompts += [shared + [5, 6], shared + [7]]
    config = transformers.GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=0)
    with torch.no_grad():
        alone = [model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False)[0, len(p):].tolist()
                 for p in prompts]
        for sharing in (False, True):
            paged = transformers.ContinuousBatchingConfig(  # (its default sizes take 16 s to set up)
                page_size=4, num_blocks=32, max_batch_tokens=6, max_requests_per_batch=3,
                allow_block_sharing=sharing)
            results = model.generate_batch(inputs=prompts, generation_config=config,
                                           continuous_batching_config=paged)
            errors = [str(r.error) for r in results.values() if r.error is not None]
            if name == "frelu":
                assert len(errors) == len(prompts)
                assert all("cannot continue a request of continuous batching: only running means" in e
                           for e in errors)
                continue
            for want, result in zip(alone, results.values(), strict=True):
                assert result.generated_tokens == want or "allow_block_sharing=False" in str(result.error)
            assert bool(errors) == sharing


def test_sequences_packed_in_a_row_are_refused_where_a_sample_is_pooled():
    """An activation pooling a whole sample cannot tell packed sequences apart (transformers keeps
    them apart only in causal attention): a one-line error; per-token activations take them, and plain
    position ids and padded batches are unaffected."""
    torch.manual_seed(0)
    packed = torch.randint(3, VOCAB, (1, 9))
    positions = torch.cat([torch.arange(5), torch.arange(4)]).unsqueeze(0)
    for options, refused in (({"context": "sample"}, True), ({"context": "token"}, False)):
        model = llama()
        adaptact.replace_activations(model, "meta_acon_c", **options)
        if refused:
            with pytest.raises(ValueError, match="pools every position of a sample, and this call") as info:
                model(input_ids=packed, position_ids=positions, labels=packed)
            assert "\n" not in str(info.value)
        else:
            model(input_ids=packed, position_ids=positions, labels=packed).loss.backward()
        ids = torch.randint(3, VOCAB, (2, 6))
        model(input_ids=ids, position_ids=torch.arange(6).expand(2, 6), labels=ids)
        model(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]), labels=ids)


def _bloom():
    return transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN,
                                                                  n_layer=1, n_head=4))


def test_a_config_that_cannot_name_the_activation_refuses_to_load(tmp_path):
    """Bloom's activation is a class of its own: no config field to rename, so the model would be
    built with its original activation and the trained weights dropped. The model checks what it
    built against the recorded sites instead."""
    torch.manual_seed(0)
    model = _bloom()
    auto = transformers.AutoModelForCausalLM
    adaptact.replace_activations(model, "acon_c")
    assert "names no activation" in model.config.adaptact["reason"]
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"converted by adaptact\.replace_activations to 'acon_c'.*names "
                                           r"no activation.*as it was before the conversion"):
        auto.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="names no activation"):
        type(model)(model.config)  # built from the config in the process that converted it, too


@pytest.mark.parametrize("imports", ["import adaptact, transformers", "import transformers, adaptact"])
def test_a_fresh_process_refuses_such_a_checkpoint_whichever_is_imported_first(tmp_path, imports):
    torch.manual_seed(0)
    model = _bloom()
    adaptact.replace_activations(model, "acon_c")
    model.save_pretrained(tmp_path)
    load = (f"{imports}\n"
            "try:\n"
            f"    transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
            "except RuntimeError as err:\n"
            "    print('refused:', err)\n")
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: this model was converted by adaptact.replace_activations")


def test_from_config_with_an_adaptact_name_builds_and_trains():
    """The optimizer is built before any forward, as Trainer does: the activations' parameters are
    made at construction (channels from the layer's first producer), so they train."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                      num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                      hidden_act="meta_acon_c")
    model = transformers.AutoModelForCausalLM.from_config(config)
    acts = [m for m in model.modules() if isinstance(m, adaptact.MetaAconC)]
    assert len(acts) == LAYERS and all(a.context == "causal" and a.channels == INTERMEDIATE for a in acts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = acts[0].p1.detach().clone()
    ids = torch.randint(3, VOCAB, (4, 9))
    loss = model(ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(acts[0].p1, before)
    encoder = transformers.AutoModel.from_config(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=1,
        num_attention_heads=4, hidden_act="aprelu"))
    (act,) = [m for m in encoder.modules() if isinstance(m, adaptact.APReLU)]
    assert act.context == "sample" and act.channels == INTERMEDIATE  # an encoder pools its whole sample


def _alone_and_padded(model, side, lengths=(7, 4, 2)):
    torch.manual_seed(1)
    rows = [torch.randint(3, VOCAB, (n,)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        at = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, at], mask[i, at] = row, 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            got = batch[i, : len(row)] if side == "right" else batch[i, width - len(row):]
            torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
    return rows, ids, mask


@pytest.mark.parametrize("name", CONDITIONED)
def test_a_converted_model_with_a_layer_offloaded_to_the_disk_gives_its_numbers(tmp_path, name):
    """``from_pretrained(device_map=...)`` with a decoder layer on "disk": accelerate keeps its
    weights on the meta device and brings each module's in for that module's own call. A
    conditioned activation reads its generator's tensors without calling every layer (a BatchNorm
    per position, FReLU's causal window, the small form's operations), so it brings them in for its
    whole call (before: "Tensor on device meta is not on the expected device cpu")."""
    pytest.importorskip("accelerate")
    model = _converted("llama", name)
    ids = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        full = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.save_pretrained(tmp_path / "model")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map,
                                                             offload_folder=tmp_path / "offload").eval()
    offloaded = back.model.layers[1].mlp.act_fn
    assert {p.device.type for p in offloaded.parameters()} == {"meta"}
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, full, rtol=1e-5, atol=1e-5)
        assert torch.equal(back.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), tokens)
    assert {p.device.type for p in offloaded.parameters()} == {"meta"}  # sent back after each call


@pytest.mark.parametrize("name", CONDITIONED)
def test_padding_never_changes_a_sequences_logits(name):
    _alone_and_padded(_converted("llama", name), "left")
    _alone_and_padded(_converted("bert", name), "right")


@pytest.mark.parametrize("name", CONDITIONED)
def test_generate_on_a_left_padded_batch_gives_each_row_its_tokens_alone(name):
    model = _converted("llama", name)
    rows, ids, mask = _alone_and_padded(model, "left")
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        for i, row in enumerate(rows):
            alone = model.generate(row[None], max_new_tokens=5, do_sample=False, pad_token_id=0)
            assert torch.equal(batch[i, ids.shape[1]:], alone[0, len(row):])


@pytest.mark.parametrize("name", CONDITIONED)
@pytest.mark.parametrize("kind", ["llama", "gpt2", "phi3"])
def test_every_cache_pattern_gives_the_full_forwards_logits(kind, name):
    model = _converted(kind, name)
    ids = torch.randint(3, VOCAB, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        # the config's use_cache returns a cache unasked; the next call continues it
        first = model(ids[:, :6])
        later = model(ids[:, 6:], cache=first.cache).logits
        torch.testing.assert_close(later, full[:, 6:], rtol=1e-5, atol=1e-5)
        # an explicit cache, one position per call, and a second generation interleaved on its own cache
        one, two = (transformers.DynamicCache(config=model.config) for _ in range(2))
        model(ids[:, :4], cache=one)
        model(ids[1:, :3], cache=two)
        for t in range(4, 10):
            step = model(ids[:, t: t + 1], cache=one).logits
            torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
        # cropped back to 7 positions and continued
        one.crop(-3)  # 10 -> 7 positions, as assisted decoding undoes rejected tokens
        torch.testing.assert_close(model(ids[:, 7:], cache=one).logits, full[:, 7:], rtol=1e-5,
                                   atol=1e-5)
        # reordered as beam search does: rows swapped and one duplicated
        three = transformers.DynamicCache(config=model.config)
        model(ids[:, :5], cache=three)
        order = torch.tensor([1, 0])
        three.reorder_cache(order)
        torch.testing.assert_close(model(ids[order, 5:], cache=three).logits, full[order, 5:],
                                   rtol=1e-5, atol=1e-5)
        # a deep copy and a pickled copy of the model continue a cache as the model does
        four = transformers.DynamicCache(config=model.config)
        model(ids[:, :5], cache=four)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for other, mine in ((copy.deepcopy(model), copy.deepcopy(four)),
                            (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(four)))):
            torch.testing.assert_close(other(ids[:, 5:], cache=mine).logits, full[:, 5:], rtol=1e-5,
                                       atol=1e-5)
        assert pickle.loads(pickle.dumps(model)) is not None


@pytest.mark.parametrize("name", CONDITIONED)
@pytest.mark.parametrize("kind", ["llama", "t5", "mistral"])
def test_beam_search_with_and_without_the_cache_agree(kind, name):
    """Each row's prefix follows beam search's reorders of the cache (its ``reorder_cache``). They
    were found by the cache's keys alone: in T5 the rows of different inputs start their decoders on
    the same token, so its first layer's keys are equal across them while the activations'
    statistics are not (the cached scores were 0.01-4 off from the third token, and from the second
    by the last layer's keys alone), and a cache of sliding layers only (Mistral's) holds no keys
    that tell a reorder (its scores were 0.006-1.7 off)."""
    model = _converted(kind, name)
    ids = torch.randint(3, VOCAB, (2, 5))
    runs = []
    with torch.no_grad():
        for use_cache in (True, False):
            runs.append(model.generate(ids, max_new_tokens=6, min_new_tokens=6, num_beams=4, do_sample=False,
                                       use_cache=use_cache, pad_token_id=0, output_scores=True,
                                       return_dict_in_generate=True))
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].sequences_scores, runs[1].sequences_scores, rtol=1e-5, atol=1e-5)
    for cached, uncached in zip(runs[0].scores, runs[1].scores, strict=True):
        torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONDITIONED)
def test_rows_moved_outside_the_caches_methods_are_followed(name):
    """Rows moved by other means than the cache's own methods (here the two caches inside T5's
    reordered directly) are found by their keys. Both rows' decoders are given the same tokens, so
    a first layer's self-attention keys are equal across them: with two decoder layers the rows were
    paired wrongly by them (0.01-0.2 off) and are told apart by the last layer's; with one, by the
    cross-attention's keys (each row's input)."""
    ids = torch.randint(3, VOCAB, (2, 5))
    tokens = torch.randint(3, VOCAB, (1, 6)).expand(2, -1)
    order = torch.tensor([1, 0])
    for layers in (2, 1):
        torch.manual_seed(0)
        model = t5(num_decoder_layers=layers)
        adaptact.replace_activations(model, name)
        model.eval()
        with torch.no_grad():
            full = model(input_ids=ids, decoder_input_ids=tokens).logits
            encoded = model.get_encoder()(input_ids=ids).last_hidden_state
            cache = transformers.EncoderDecoderCache(transformers.DynamicCache(config=model.config),
                                                     transformers.DynamicCache(config=model.config))
            model(encoder_outputs=(encoded,), decoder_input_ids=tokens[:, :4], cache=cache)
            cache.self_attention_cache.reorder_cache(order)
            cache.cross_attention_cache.reorder_cache(order)
            got = model(encoder_outputs=(encoded[order],), decoder_input_ids=tokens[:, 4:], cache=cache)
            torch.testing.assert_close(got.logits, full[order, 4:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("name", [*CONDITIONED, "acon_c"])
def test_gradient_checkpointing_on_a_padded_batch_gives_the_gradients_without_it(name, reentrant):
    """transformers' gradient checkpointing recomputes each decoder layer in backward, after the
    model call that told the activations its padding: they are told again. Before, the recomputation
    ran without the padding (non-reentrant: a CheckpointError; reentrant: gradients off by up to
    1.0, silently). Non-reentrant recomputes exactly what the forward ran; the reentrant forward
    runs without gradients, where "auto" may take another route, equal up to float32 rounding.
    The generators' BatchNorm running statistics move once a step, as without checkpointing."""
    tolerance = {"rtol": 1e-4, "atol": 2e-5} if reentrant else {"rtol": 0, "atol": 0}
    model = _converted("llama", name).train()
    plain = copy.deepcopy(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    ids = torch.randint(3, VOCAB, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = mask[1, :1] = 0  # left padding
    for step in range(2):
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        expected, got = plain(**batch).loss, model(**batch).loss
        expected.backward()
        got.backward()
        torch.testing.assert_close(got, expected, **tolerance)
        for (key, p), q in zip(plain.named_parameters(), model.parameters(), strict=True):
            where = f"step {step}, {key}"
            torch.testing.assert_close(q.grad, p.grad, **tolerance, msg=lambda m, at=where: f"{at}: {m}")
        for (key, b), c in zip(plain.named_buffers(), model.buffers(), strict=True):  # moved once a step
            where = f"step {step}, {key}"
            torch.testing.assert_close(c, b, **tolerance, msg=lambda m, at=where: f"{at}: {m}")
        ids = ids.roll(1, dims=1)


def test_lora_trains_the_activations_named_for_peft_and_decodes_with_the_cache():
    peft = pytest.importorskip("peft")
    model = _converted("llama", "meta_acon_c")
    names = adaptact.huggingface.modules_to_save(model)
    assert names == ["act_fn"]
    per_layer = len(list(model.model.layers[0].mlp.act_fn.parameters()))  # p1, p2 and the generator's
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                         modules_to_save=names))
    acts = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad and ".act_fn." in n]
    assert len(acts) == LAYERS * per_layer and all(".modules_to_save." in n for n, _ in acts)
    before = {n: p.detach().clone() for n, p in acts}
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(3, VOCAB, (4, 9))
    wrapped.train()
    wrapped(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in acts if n.endswith((".p1", ".p2")))
    wrapped.eval()
    with torch.no_grad():  # PEFT calls the causal LM's forward directly: the inner model's hooks tell
        full = wrapped(input_ids=ids).logits
        first = wrapped(input_ids=ids[:, :5])
        later = wrapped(input_ids=ids[:, 5:], cache=first.cache).logits
    torch.testing.assert_close(later, full[:, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONDITIONED)
@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_every_cache_pattern_on_a_static_cache_gives_the_full_forwards_logits(kind, name):
    """A static cache (transformers' ``StaticCache``: fixed capacity, its length a tensor) keeps the
    generators' running sums as tensors by position: split calls, one position per call with a
    second generation interleaved, a crop, a reorder by beam search's method, a deep copy, a pickle
    and a reset cache all continue as the full forward (Gemma 2: sliding and full layers)."""
    model = _converted(kind, name)
    ids = torch.randint(3, VOCAB, (2, 10))

    def static():
        return transformers.StaticCache(config=model.config, max_cache_len=16)

    with torch.no_grad():
        full = model(ids).logits
        one, two = static(), static()
        torch.testing.assert_close(model(ids[:, :6], cache=one).logits, full[:, :6], rtol=1e-5, atol=1e-5)
        model(ids[1:, :3], cache=two)
        for t in range(6, 10):
            step = model(ids[:, t: t + 1], cache=one).logits
            torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(ids[1:, 3:], cache=two).logits, full[1:, 3:], rtol=1e-5, atol=1e-5)
        one.crop(-3)  # 10 -> 7 positions, as assisted decoding undoes rejected tokens
        torch.testing.assert_close(model(ids[:, 7:], cache=one).logits, full[:, 7:], rtol=1e-5, atol=1e-5)
        three = static()
        model(ids[:, :5], cache=three)
        order = torch.tensor([1, 1])  # beam search's reorder: row 1 twice
        three.reorder_cache(order)
        torch.testing.assert_close(model(ids[order, 5:], cache=three).logits, full[order, 5:],
                                   rtol=1e-5, atol=1e-5)
        four = static()
        model(ids[:, :5], cache=four)
        for other, mine in ((copy.deepcopy(model), copy.deepcopy(four)),
                            (pickle.loads(pickle.dumps(model)), pickle.loads(pickle.dumps(four)))):
            torch.testing.assert_close(other(ids[:, 5:], cache=mine).logits, full[:, 5:], rtol=1e-5,
                                       atol=1e-5)
        four.reset()  # a cache used again from its start (generate reuses a static cache so)
        flipped = ids.flip(0)
        model(flipped[:, :4], cache=four)
        torch.testing.assert_close(model(flipped[:, 4:], cache=four).logits, full.flip(0)[:, 4:],
                                   rtol=1e-5, atol=1e-5)


def _counting_backend(graphs):
    """A torch.compile backend that keeps each graph it is given and runs it through AOTAutograd
    (functionalized, as Inductor gets it: in-place writes to the cache's tensors become copies back)."""
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, inputs):
        graphs.append(gm)
        return aot_eager(gm, inputs)

    return backend


@pytest.mark.parametrize("name", CONDITIONED)
def test_compiled_static_cache_decoding_is_one_graph_for_every_token(name):
    """generate on a static cache compiles the model's call for decoding (transformers does so on
    GPUs by default; ``_compile_all_devices`` does it here): a padded batch decodes the tokens and
    scores of the uncompiled, uncached generation, in one graph for all its decoding calls, also
    after a module is made elsewhere in the process. Before, the causal generators' running sums
    raised there (Python lists, and numbers read from tensors, under tracing), compiling
    ``model.forward`` by hand gave a graph per token, and a module made anywhere (another model's
    call) broke a guard on adaptact's count of registrations: one more graph each time."""
    model = _converted("llama", name)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    options = {"attention_mask": mask, "do_sample": False, "pad_token_id": 0, "output_scores": True,
               "return_dict_in_generate": True}
    torch._dynamo.reset()
    graphs = []
    config = transformers.CompileConfig(backend=_counting_backend(graphs), mode=None)
    config._compile_all_devices = True
    with torch.no_grad():
        want = model.generate(ids, use_cache=False, max_new_tokens=8, **options)
        got = model.generate(ids, cache_implementation="static", compile_config=config, max_new_tokens=8,
                             **options)
        torch.nn.Sequential(torch.nn.Linear(2, 2))  # a module registered elsewhere in the process
        again = model.generate(ids, cache_implementation="static", compile_config=config, max_new_tokens=8,
                               **options)
    assert len(graphs) == 1  # for the 14 decoding calls (as the unconverted model)
    assert torch.equal(got.sequences, want.sequences) and torch.equal(again.sequences, want.sequences)
    # the kept tensors, written in place by the step, are static addresses as the cache's keys are (what
    # CUDA graphs, transformers' mode on GPUs, need of a step's in-place writes; torch marks them so)
    kept = list(got.cache.adaptact_prefix.static.buffers())  # (those the compiled step was traced with)
    assert kept and all(getattr(t, "_dynamo_static_input_type", None) == "unguarded" for t in kept)
    for step, (a, b) in enumerate(zip(got.scores, want.scores, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("name", ["meta_acon_c", "frelu"])
def test_a_forward_compiled_whole_decodes_a_static_cache_in_one_graph_per_call_length(name):
    """The serving recipe ``model.forward = torch.compile(model.forward, fullgraph=True)`` with a
    static cache: the prompt and the decoded tokens each compile once (no graph break, which
    fullgraph refuses), and the tokens are the uncached generation's. Before, tracing the inner
    model's hooks read a tensor's value and fullgraph raised."""
    model = _converted("llama", name)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    options = {"attention_mask": mask, "do_sample": False, "pad_token_id": 0, "max_new_tokens": 6}
    torch._dynamo.reset()
    graphs = []
    with torch.no_grad():
        want = model.generate(ids, use_cache=False, **options)
        model.forward = torch.compile(model.forward, fullgraph=True, backend=_counting_backend(graphs))
        got = model.generate(ids, cache_implementation="static", disable_compile=True, **options)
    assert len(graphs) == 2  # the prompt's length, and one position
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["meta_acon_c", "frelu"])  # running sums; a window of inputs
def test_a_forward_compiled_on_the_default_cache_compiles_no_more_graphs_for_more_tokens(name):
    """``torch.compile(model.forward)`` with generate's default (dynamic) cache: the activations run
    eagerly in the compiled calls (their running sums are Python state read at Python offsets), so
    generating more tokens compiles no new graph, and the tokens are the uncached generation's on a
    padded batch. Before, every token's offset was a guard: a graph per token until dynamo's
    recompile limit (this test counted 35-36 graphs after 3 tokens, 55-56 after 9), then eager frames."""
    model = _converted("llama", name)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    options = {"attention_mask": mask, "do_sample": False, "pad_token_id": 0}
    torch._dynamo.reset()
    graphs = []
    with torch.no_grad():
        want = model.generate(ids, use_cache=False, max_new_tokens=9, **options)
        model.forward = torch.compile(model.forward, backend=_counting_backend(graphs))
        model.generate(ids, max_new_tokens=3, **options)
        after_three = len(graphs)
        got = model.generate(ids, max_new_tokens=9, **options)
    assert len(graphs) == after_three
    assert torch.equal(got, want)


def test_exporting_a_static_cache_decoding_step_is_refused_in_one_line():
    """ExecuTorch's decoding program (transformers' exportable module, a static cache in its
    buffers) cannot carry the running statistics kept beside the cache from one call to the next:
    each call of the program would start them afresh (0.004 off in the logits after six tokens, had
    it exported). The export raises, naming the way out."""
    executorch = pytest.importorskip("transformers.integrations.executorch")
    model = _converted("llama", "meta_acon_c")
    model.generation_config.cache_implementation = "static"
    model.generation_config.cache_config = {"batch_size": 1, "max_cache_len": 16}
    exportable = executorch.TorchExportableModuleForDecoderOnlyLM(model)
    with pytest.raises(Exception, match="running statistics beside the static cache"):
        exportable.export(input_ids=torch.ones(1, 1, dtype=torch.long), cache_position=torch.tensor([0]))


@pytest.mark.parametrize("name", CONDITIONED)
def test_a_packed_row_written_to_a_static_cache_gets_the_numbers_it_gets_with_a_dynamic_one(name):
    """Sequences packed in a row (``position_ids`` restarting) prefilled into an empty static cache:
    the statistics restart at each sequence as with a dynamic cache (the attention is the same in
    both, so the logits are equal). Before, the static cache's sums ran across the packed sequences."""
    model = _converted("llama", name)
    ids = torch.randint(3, VOCAB, (1, 9))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2]])
    with torch.no_grad():
        caches = transformers.DynamicCache(config=model.config), transformers.StaticCache(config=model.config,
                                                                                           max_cache_len=16)
        dynamic, static = (model(ids, position_ids=positions, cache=cache).logits for cache in caches)
    torch.testing.assert_close(static, dynamic, rtol=1e-5, atol=1e-5)


def test_a_lora_adapter_and_its_trained_activations_reload_onto_the_saved_converted_model(tmp_path):
    """PEFT's round trip: the converted model saved, LoRA trained with the activations in
    ``modules_to_save``, the adapter saved, then ``PeftModel.from_pretrained`` on the reloaded model
    gives the trained logits and tokens, as does the merged model saved and reloaded. Before, the
    adapter's load (``strict=False``, without the wrapped original activations' entries) raised in
    the activations' all-or-nothing check."""
    peft = pytest.importorskip("peft")
    model = _converted("llama", "meta_acon_c")
    model.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                           modules_to_save=adaptact.huggingface.modules_to_save(model))
    wrapped = peft.get_peft_model(model, lora)
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(3, VOCAB, (3, 8))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    wrapped.train()
    wrapped(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    wrapped.eval().save_pretrained(tmp_path / "adapter")
    options = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        want = wrapped(input_ids=ids, attention_mask=mask).logits
        tokens = wrapped.generate(input_ids=ids, **options)
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        again = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, want, rtol=0, atol=0)
        assert torch.equal(again.generate(input_ids=ids, **options), tokens)
        again.merge_and_unload().save_pretrained(tmp_path / "merged")
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        merged_logits = merged(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(merged_logits, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(merged.generate(ids, **options), tokens)


@pytest.mark.parametrize("checkpointing", ["none", "reentrant", "non_reentrant"])
def test_a_compiled_converted_model_trains_on_padded_batches_as_eagerly(checkpointing):
    """``torch.compile(model)`` in training on left-padded batches, with transformers' gradient
    checkpointing (reentrant or not) or without: each step's loss and gradients are the eager
    model's. The hooks that tell the activations the padding run inside the compiled call (and the
    recomputation of a checkpointed layer in backward gets the padding again, compiled or not)."""
    model = _converted("llama", "meta_acon_c").train()
    eager = copy.deepcopy(model)
    if checkpointing != "none":
        options = {"use_reentrant": checkpointing == "reentrant"}
        for m in (model, eager):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=_counting_backend([]))
    for step in range(2):
        ids = torch.randint(3, VOCAB, (3, 7))
        mask = torch.ones_like(ids)
        mask[0, :3] = mask[1, :1] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        got, want = compiled(**batch).loss, eager(**batch).loss
        got.backward()
        want.backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=f"step {step}, {name}")
            p.grad = q.grad = None


@pytest.mark.parametrize("name", CONDITIONED)
def test_a_static_cache_filled_without_the_activations_is_refused_not_continued_from_zeros(name):
    """A static cache whose positions were written without this model's activations keeping their
    running statistics beside it (filled by another model, or its prefix lost) cannot be continued:
    the next call raises in one line instead of continuing sums of zeros."""
    model = _converted("llama", name)
    ids = torch.randint(3, VOCAB, (2, 8))
    cache = transformers.StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        model(ids[:, :5], cache=cache)
        del cache.adaptact_prefix
        with pytest.raises(RuntimeError, match="cannot continue a static cache at position 5"):
            model(ids[:, 5:], cache=cache)
