"""How far the converted model's decoding is from the floor that torch's operations allow: greedy
decoding of the converted LLaMA of ``decode_time.py`` (hidden 256, intermediate 688, 4 layers, batch
1, a 16-token prompt, the default dynamic cache), each causal generated activation three ways, every
model in turn in each round (interleaved), one thread:

* "silu": the LLaMA as it is;
* the activation's name: converted with ``replace_activations`` (what users run);
* "<name> floor": the same weights in a hand-written module that computes the small form's maths
  with the fewest torch operations and nothing else: no checks of input, dtype, mode or backend, no
  model hooks, the running sum kept on the module for one greedy sequence (batch 1, append only: it
  is wrong for anything else, which is why the library cannot be it). Its tokens are checked equal
  to the converted model's before timing.

Prints the median time per generated token, its min-max over rounds, the ratio of medians to SiLU's,
and the median of the per-round ratios to SiLU in that round with their quartiles. Then the same
for one call at (1, 1, 688) outside a model, no grad (what ``call_time.py`` times for "auto"): the
module as ``adaptact.create`` makes it (causal, eval) against its floor and torch's SiLU.

    python benchmarks/decode_floor.py [new_tokens] [rounds] [names]
"""

import sys
import time

import torch
import torch.nn.functional as F
import transformers
from decode_time import llama, per_token, report

import adaptact

NAMES = ("meta_acon_c", "aprelu", "dy_relu_b")


def _linear_norm(h: torch.Tensor, fc: torch.nn.Linear, bn: torch.nn.BatchNorm1d | None) -> torch.Tensor:
    h = F.linear(h, fc.weight, fc.bias)
    if bn is None:
        return h
    rows = torch.batch_norm(h.view(-1, h.shape[-1]), bn.weight, bn.bias, bn.running_mean, bn.running_var,
                            False, 0.0, bn.eps, False)
    return rows.view(h.shape)


class Floor(torch.nn.Module):
    """The causal running mean of the statistics, then the activation's generator and formula."""

    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        self.act, self.name = act, type(act).__name__
        self.sum: torch.Tensor | None = None
        self.count = 0

    def means(self, s: torch.Tensor) -> torch.Tensor:
        if s.shape[1] > 1:  # the prompt
            sums = s.cumsum(1)
            self.sum, self.count = sums[:, -1:], s.shape[1]
            return sums / torch.arange(1, s.shape[1] + 1, dtype=s.dtype).unsqueeze(-1)
        if self.sum is None:  # one position, nothing before it (a call outside a model)
            return s
        self.sum, self.count = self.sum + s, self.count + 1
        return self.sum / self.count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act
        if self.name == "MetaAconC":
            beta = _linear_norm(_linear_norm(self.means(x), a.fc1, a.bn1), a.fc2, a.bn2).sigmoid_()
            switch = torch.mul(x, a.p1 - a.p2).mul_(beta).sigmoid_()
            return torch.lerp(a.p2, a.p1, switch).mul_(x)
        if self.name == "APReLU":
            negative, positive = torch.clamp(x, max=0), torch.relu(x)
            s = self.means(torch.cat((negative, positive), dim=-1))
            alpha = _linear_norm(_linear_norm(s, a.fc1, a.bn1).relu_(), a.fc2, a.bn2).sigmoid_()
            return torch.addcmul(positive, alpha, negative)
        z = F.linear(F.linear(self.means(x), a.fc1.weight, a.fc1.bias).relu_(), a.fc2.weight, a.fc2.bias)
        pieces = torch.addcmul(a.init_v - a.lambdas, z.sigmoid_().unflatten(-1, (-1, 2 * a.k)), a.lambdas * 2)
        slopes, intercepts = pieces.split(a.k, dim=-1)
        return torch.addcmul(intercepts, slopes, x.unsqueeze(-1)).amax(-1)


def per_call(rounds: int, names: tuple[str, ...], calls: int = 200) -> None:
    x = torch.randn(1, 1, 688)
    fns: dict[str, torch.nn.Module] = {"silu": torch.nn.SiLU()}
    for name in names:
        act = adaptact.create(name, channels=688, channel_dim=-1, context="causal").eval()
        fns[name], fns[f"{name} floor"] = act, Floor(act)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for name in names:
            torch.testing.assert_close(fns[f"{name} floor"](x), fns[name](x))
        for _ in range(rounds):
            for k, fn in fns.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                times[k].append((time.perf_counter() - start) / calls)
    report(f"\n(1, 1, 688), one call outside a model, no grad, float32, one thread; {rounds} rounds of "
           f"{calls} calls; median us per call [min-max], x SiLU's median, paired [quartiles]",
           times, 1e6, "us")


def main(new: int, rounds: int, names: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    prompt = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    models = {"silu": llama()}
    for name in names:
        converted = llama()
        adaptact.replace_activations(converted, name)
        floor = llama()
        adaptact.replace_activations(floor, name)
        for layer in floor.model.layers:
            layer.mlp.act_fn = Floor(layer.mlp.act_fn)
        with torch.no_grad():
            ours = converted.generate(prompt, max_new_tokens=new, do_sample=False)
            theirs = floor.generate(prompt, max_new_tokens=new, do_sample=False)
        if not torch.equal(ours, theirs):
            raise SystemExit(f"{name}: the floor's tokens differ from the converted model's")
        models[name], models[f"{name} floor"] = converted, floor
    times: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():  # warm up
        per_token(m, prompt, new, {})
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(per_token(m, prompt, new, {}))
    report(f"LLaMA 256/688 x 4 layers, batch 1, prompt 16, {new} new tokens, greedy, dynamic cache, one "
           f"thread; {rounds} rounds; median ms per token [min-max], x SiLU's median; and the median of each "
           "round's ratio to SiLU in that round [its quartiles]", times, 1e3, "ms")
    per_call(rounds, names)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 32, int(args[1]) if len(args) > 1 else 15,
         tuple(args[2].split(",")) if len(args) > 2 else NAMES)
