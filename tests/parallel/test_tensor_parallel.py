"""Tensor parallelism (2 CPU processes, gloo): a LLaMA-style MLP, down(act(gate(x)) * up(x)), with
gate and up column-parallel, down row-parallel and the activation ``ChannelwiseParallel``, equals
the unsharded MLP in its output and in every gradient; so does a tiny Hugging Face LLaMA converted
to causal Meta-ACON-C and parallelised with ``adaptact.parallel.plan``. One spawn runs every case
(starting processes is the cost); each case is then its own test."""

import pytest
import torch
from torch import nn

import adaptact
from adaptact.parallel import ChannelwiseParallel, channels_of, plan
from adaptact.parallel.sharding import channel_shards

from .processes import attempt, spawn

# process groups on ports picked free: one xdist worker runs them all (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("distributed")

WORLD = 2
DIM, HIDDEN = 16, 32

# name -> (registry name, kwargs); every module gets channels=HIDDEN where it takes them, channel_dim=-1
CASES = {
    "acon_a": ("acon_a", {}),
    "acon_b": ("acon_b", {}),
    "acon_c": ("acon_c", {}),
    "prelu": ("prelu", {}),
    "meta_acon_c": ("meta_acon_c", {}),
    "meta_acon_c-layer": ("meta_acon_c", {"granularity": "layer"}),
    "meta_acon_c-layer-causal": ("meta_acon_c", {"granularity": "layer", "context": "causal"}),
    "meta_acon_c-causal": ("meta_acon_c", {"context": "causal"}),
    "meta_acon_c-token": ("meta_acon_c", {"context": "token"}),
    "aprelu": ("aprelu", {}),
    "aprelu-causal": ("aprelu", {"context": "causal"}),
    "aprelu-token": ("aprelu", {"context": "token"}),
    "dy_relu_a": ("dy_relu_a", {}),
    "dy_relu_b": ("dy_relu_b", {}),
    "dy_relu_b-token": ("dy_relu_b", {"context": "token"}),
    "polynorm": ("polynorm", {}),
    "arelu": ("arelu", {}),
    "xielu": ("xielu", {}),
    "acon_c_glu": ("acon_c_glu", {}),
    # DTensors in and out: the producers and the activation keep DTensors (use_local_output=False)
    "acon_c-dtensor": ("acon_c", {}),
    "meta_acon_c-causal-dtensor": ("meta_acon_c", {"context": "causal"}),
    # channels first: the activation sees the producer's output as (B, C, T), channel_dim=1
    "acon_c-first": ("acon_c", {"channel_dim": 1}),
    "meta_acon_c-causal-first": ("meta_acon_c", {"context": "causal", "channel_dim": 1}),
    "dy_relu_b-first": ("dy_relu_b", {"channel_dim": 1}),
}


class MLP(nn.Module):
    """LLaMA's MLP; a gated form of the catalogue takes the fused gate/up projection (2H)."""

    def __init__(self, name, kwargs):
        super().__init__()
        spec = adaptact.registry.spec(name)
        self.gated = spec.gated
        self.gate_up = nn.Linear(DIM, 2 * HIDDEN) if self.gated else None
        self.gate_proj = None if self.gated else nn.Linear(DIM, HIDDEN)
        self.up_proj = None if self.gated else nn.Linear(DIM, HIDDEN)
        self.down_proj = nn.Linear(HIDDEN, DIM)
        channels = 2 * HIDDEN if self.gated else HIDDEN
        self.first = kwargs.get("channel_dim") == 1
        self.act_fn = adaptact.create(name, channels=channels, **{"channel_dim": -1, **kwargs})

    def forward(self, x):
        if self.first:
            gate = self.act_fn(self.gate_proj(x).transpose(1, 2)).transpose(1, 2)
            return self.down_proj(gate * self.up_proj(x))
        if self.gated:
            return self.down_proj(self.act_fn(self.gate_up(x)))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


BASE_PLAN = {"gate_proj": "colwise", "up_proj": "colwise", "gate_up": "colwise", "down_proj": "rowwise"}


def _base_plan(model, dtensors=False):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    local = {"use_local_output": False} if dtensors else {}
    styles = {"colwise": lambda: ColwiseParallel(**local), "rowwise": RowwiseParallel}
    out = {k: styles[v]() for k, v in BASE_PLAN.items() if getattr(model, k, None) is not None}
    if dtensors:
        out["act_fn"] = ChannelwiseParallel(use_local_output=False)
    if model.first:  # plan() finds no producer through a transpose (nor does replace_activations): named
        out["act_fn"] = ChannelwiseParallel()
    return out


def _inputs():
    torch.manual_seed(1)
    return torch.randn(3, 6, DIM, dtype=torch.float64)


def _build(case):
    torch.manual_seed(0)
    model = MLP(*CASES[case])
    for m in model.modules():  # generators' BatchNorms must move off their initial values to be tested
        if isinstance(m, nn.BatchNorm1d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.double()  # float64: a different computation cannot hide in float32 rounding


def _full(t):
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _results(model, x):
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return {"y": y.detach().clone(),
            "grads": {n: _full(p.grad) for n, p in model.named_parameters()},
            "buffers": {n: _full(b) for n, b in model.named_buffers()}}


def _llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=DIM, intermediate_size=HIDDEN,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    adaptact.replace_activations(model, "meta_acon_c", context="causal")
    return model.double()


def _llama_results(model):
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(3))
    logits = model(input_ids=ids).logits
    (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
    return {"y": logits.detach().clone(), "grads": {n: _full(p.grad) for n, p in model.named_parameters()},
            "buffers": {n: _full(b) for n, b in model.named_buffers()}}


def _collectives(model, mesh):
    """The collectives the activation alone issues in a forward and in a backward (DTensor's
    ``CommDebugMode``), by name, on an input the producer would give it."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.debug import CommDebugMode

    act = model.act_fn
    channels = 2 * HIDDEN if model.gated else HIDDEN
    x = torch.randn(3, 6, channels, generator=torch.Generator().manual_seed(5))
    x = x.chunk(WORLD, -1)[mesh.get_rank()].contiguous()  # as a column-parallel Linear gives it
    if model.first:
        x = x.transpose(1, 2)
    x.requires_grad_(True)
    counts = {}
    with CommDebugMode() as forward:
        y = act(x)
    # a DTensor's sum() hands back an expanded gradient that a view in DTensor's backward refuses
    local = y.to_local() if isinstance(y, DTensor) else y
    with CommDebugMode() as backward:
        local.sum().backward()
    for stage, mode in (("forward", forward), ("backward", backward)):
        counts[stage] = {str(k).split(".")[-1]: v for k, v in mode.get_comm_counts().items()}
    return counts


def _cases(rank):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))

    def mlp(case):
        model = _build(case)
        parallelize_module(model, mesh, plan(model, _base_plan(model, case.endswith("-dtensor"))))
        results = _results(model, _inputs())
        results["local"] = {n: (str(t.placements[0]), tuple(t.to_local().shape))
                            for n, t in model.act_fn.state_dict().items()}
        results["collectives"] = _collectives(model, mesh)
        return results

    def llama():
        try:
            model = _llama()
        except pytest.skip.Exception:
            return "skip"
        for layer in model.model.layers:
            mlp_plan = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
                        "down_proj": RowwiseParallel()}
            parallelize_module(layer.mlp, mesh, plan(layer.mlp, mlp_plan))
        return _llama_results(model)

    return {**{case: attempt(lambda case=case: mlp(case)) for case in CASES}, "llama": attempt(llama)}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return spawn(_cases, WORLD, tmp_path_factory.mktemp("tp") / "results.pt", seconds=120)


def _assert_equal(got, want):
    assert not isinstance(got, str), got
    torch.testing.assert_close(got["y"], want["y"], rtol=1e-10, atol=1e-12)
    assert got["grads"].keys() == want["grads"].keys()
    # float64 rounding of sums as large as the largest gradient: a bias before a BatchNorm has a zero
    # gradient in exact arithmetic, computed as such sums
    atol = 1e-11 * max(float(v.abs().max()) for v in want["grads"].values())
    for k, v in want["grads"].items():
        torch.testing.assert_close(got["grads"][k], v, rtol=1e-9, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
    for k, v in want["buffers"].items():  # the generators' BatchNorm statistics
        torch.testing.assert_close(got["buffers"][k], v, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("case", list(CASES))
def test_a_tensor_parallel_mlp_equals_the_unsharded_one(sharded, case):
    model = _build(case)
    _assert_equal(sharded[case], _results(model, _inputs()))
    # each rank holds its half of the per-channel tensors, and all of the others
    shards = channel_shards(model.act_fn, channels_of(model.act_fn) or 0)
    assert bool(shards) == (channels_of(model.act_fn) is not None)  # per-channel state is sharded
    for name, t in model.act_fn.state_dict().items():
        placement, shape = sharded[case]["local"][name]
        if name in shards:
            d = shards[name]
            local = t.shape[:d] + (t.shape[d] // WORLD,) + t.shape[d + 1:]
            assert placement == f"S({d})" and shape == local, name
        else:
            assert placement == "R" and shape == tuple(t.shape), name


def test_a_converted_llama_parallelised_by_plan_equals_the_unsharded_one(sharded):
    if sharded["llama"] == "skip":
        pytest.skip("transformers is not installed")
    _assert_equal(sharded["llama"], _llama_results(_llama()))


def test_plan_adds_the_activation_after_a_column_parallel_producer_and_refuses_any_other():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    model = _build("acon_c")
    extended = plan(model, _base_plan(model))
    assert isinstance(extended["act_fn"], ChannelwiseParallel)
    assert plan(model, {"gate_*": ColwiseParallel(), "up_proj": ColwiseParallel()})["act_fn"]
    wrong = r"act_fn \(AconC\) sits after 'gate_proj', which the plan does not make column-parallel"
    with pytest.raises(ValueError, match=wrong):
        plan(model, {"gate_proj": RowwiseParallel()})
    with pytest.raises(ValueError, match="act_fn"):
        plan(model, {})


def test_channelwise_parallel_refuses_what_it_cannot_shard():
    with pytest.raises(ValueError, match="for adaptact's activations, not Linear"):
        ChannelwiseParallel()._apply(nn.Linear(2, 2), None)
    with pytest.raises(ValueError, match=r"AconC has not made its parameters yet \(channels=None\)"):
        ChannelwiseParallel()._apply(adaptact.create("acon_c", channel_dim=-1), None)



# what crosses the ranks per call (docs/architecture.md has the sizes): nothing for the elementwise
# per-channel activations, their scalar parameters' gradients for the scalar ones, one all-reduce of
# the generator's (N, hidden) partial sums each way for DY-ReLU
COLLECTIVES = {
    "acon_a": ({}, {}), "acon_b": ({}, {}), "acon_c": ({}, {}), "prelu": ({}, {}),
    "arelu": ({}, {"all_reduce": 2}), "xielu": ({}, {"all_reduce": 2}),
    "dy_relu_a": ({"all_reduce": 1}, {"all_reduce": 1}), "dy_relu_b": ({"all_reduce": 1}, {"all_reduce": 1}),
    "dy_relu_b-token": ({"all_reduce": 1}, {"all_reduce": 1}),
    "meta_acon_c-layer": ({"all_reduce": 1}, {"all_reduce": 1}),
    # the generator's BatchNorm over the channels runs on each rank's own channels
    "meta_acon_c": ({"all_reduce": 1}, {"all_reduce": 2}),
    "aprelu": ({"all_gather_into_tensor": 2}, {"all_reduce": 1}),
    "polynorm": ({"all_reduce": 3}, {"reduce_scatter_tensor": 3}),
}


@pytest.mark.parametrize("case", list(COLLECTIVES))
def test_the_collectives_are_the_documented_ones(sharded, case):
    forward, backward = COLLECTIVES[case]
    assert sharded[case]["collectives"] == {"forward": forward, "backward": backward}
