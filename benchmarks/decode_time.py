"""Greedy decoding of a converted LLaMA, time per token: transformers' LlamaForCausalLM (hidden 256,
intermediate 688, 4 layers, 4 heads, random weights from a seed), its SiLU kept or replaced by each
activation with ``replace_activations`` (the pooling ones causal, as in a decoder), batch 1, a
prompt of 16 tokens, ``generate(max_new_tokens=N, do_sample=False)`` with the cache. Every model
in turn in each round (interleaved), one thread; prints the median time per generated token, its
min-max over rounds and the ratio of medians to SiLU's, and the median of the per-round ratios
(each model against SiLU in the same round, which cancels a machine's slower and faster spells)
with their quartiles. The cache: "dynamic" (generate's default), "static" (``cache_implementation=
"static"``), "compiled": a static cache with the model's call compiled by Inductor for decoding,
as transformers does on GPUs (``CompileConfig``, here on the CPU too), or "forward": the default
dynamic cache with ``model.forward = torch.compile(model.forward)`` (Inductor, default mode).

    python benchmarks/decode_time.py [new_tokens] [rounds] [names] [dynamic|static|compiled|forward]
"""

import statistics
import sys
import time

import torch
import transformers

import adaptact

NAMES = ("arelu", "acon_c", "meta_acon_c", "aprelu", "dy_relu_b")


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(config).eval()


def cache_options(cache: str) -> dict:
    if cache in ("dynamic", "forward"):
        return {}
    if cache not in ("static", "compiled"):
        raise SystemExit(f"the cache is 'dynamic', 'static', 'compiled' or 'forward', got {cache!r}")
    if cache == "static":
        return {"cache_implementation": "static", "disable_compile": True}
    config = transformers.CompileConfig(mode=None)
    config._compile_all_devices = True  # transformers compiles on GPUs only, unless told
    return {"cache_implementation": "static", "compile_config": config}


def per_token(model: torch.nn.Module, prompt: torch.Tensor, new: int, options: dict) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, **options)
    assert out.shape[1] == prompt.shape[1] + new
    return (time.perf_counter() - start) / new


def main(new: int, rounds: int, names: tuple[str, ...], cache: str) -> None:
    options = cache_options(cache)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    models = {"silu": llama()}
    for name in names:
        model = llama()
        adaptact.replace_activations(model, name)
        models[name] = model.eval()
    if cache == "forward":
        for m in models.values():
            m.forward = torch.compile(m.forward)
    prompt = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():  # warm up: caches, compiled entries, the compiled decoding step
        per_token(m, prompt, new, options)
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(per_token(m, prompt, new, options))
    how = "a dynamic cache, forward compiled" if cache == "forward" else f"a {cache} cache"
    report(f"LLaMA 256/688 x 4 layers, batch 1, prompt 16, {new} new tokens, greedy with {how}, "
           f"one thread; {rounds} rounds; median ms per token [min-max], x SiLU's median; and the median of "
           "each round's ratio to SiLU in that round [its quartiles]", times, 1e3, "ms")


def report(title: str, times: dict[str, list[float]], unit: float, label: str) -> None:
    """``title``, then per variant its median time (x ``unit``, in ``label``) [min-max], the ratio
    of medians to SiLU's, and the median of the per-round ratios to SiLU [their quartiles]."""
    silu = statistics.median(times["silu"])
    print(title)
    for k, v in times.items():
        med = statistics.median(v)
        paired = [t / s for t, s in zip(v, times["silu"], strict=True)]
        q1, _, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3  # (one round)
        print(f"  {k:<18} {unit * med:7.2f} {label} [{unit * min(v):.2f}-{unit * max(v):.2f}]  "
              f"{med / silu:5.2f}x  paired {statistics.median(paired):5.2f}x [{q1:.2f}-{q3:.2f}]")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 32, int(args[1]) if len(args) > 1 else 7,
         tuple(args[2].split(",")) if len(args) > 2 else NAMES, args[3] if len(args) > 3 else "dynamic")
