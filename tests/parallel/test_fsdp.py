"""FSDP2 (``fully_shard``) with adaptive activations on 2 CPU processes (gloo): three SGD steps on
half the batch each equal three steps of one process on the whole batch, for modules built with
their channels, lazy ones made by a dry forward, and modules built on the meta device then
``to_empty`` + ``reset_parameters`` (each loaded from the full state dict with torch's distributed
checkpoint API, and gathered back with it). A 2-D mesh (2 x 2 processes: FSDP over tensor
parallel) trains a LLaMA-style MLP with causal Meta-ACON-C and equals one process."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptact
from adaptact.parallel import plan

from .processes import attempt, spawn

# process groups on ports picked free: one xdist worker runs them all (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("distributed")

ACTIVATIONS = ("arelu", "acon_a", "acon_b", "acon_c", "meta_acon_c", "aprelu", "dy_relu_a", "dy_relu_b",
               "frelu", "prelu", "pau", "apl", "xielu", "polynorm")
WAYS = ("built", "lazy", "meta")
CASES = [(a, w) for a in ACTIVATIONS for w in WAYS if w != "lazy" or adaptact.registry.spec(a).lazy]
STEPS = 3


class Net(nn.Module):
    def __init__(self, activation, lazy=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = adaptact.create(activation, **({} if lazy else {"channels": 8}))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def _reference(activation):
    torch.manual_seed(0)
    return Net(activation)


def _train(model, x, y, loss=F.cross_entropy, lr=0.5):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(STEPS):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()


def _sharded_run(activation, way, rank, state, x, y):
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         set_model_state_dict)
    from torch.distributed.fsdp import fully_shard

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if way == "meta":
        with torch.device("meta"):
            model = Net(activation)
    else:
        model = Net(activation, lazy=way == "lazy")
        if way == "lazy":
            with torch.no_grad():
                model.eval()(x[:1])  # makes the lazy parameters
            model.train()
        model.load_state_dict(state)
    nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the generators' statistics over both processes
    fully_shard(model.act)
    fully_shard(model)
    finite = True
    if way == "meta":
        model.to_empty(device="cpu")
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        finite = all(bool(torch.isfinite(t.full_tensor()).all()) for t in model.parameters())
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    half = x.chunk(2)[rank], y.chunk(2)[rank]
    _train(model, *half)
    gathered = get_model_state_dict(model, options=full)
    return {"state": {k: v.detach().clone() for k, v in gathered.items()}, "finite": finite}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        # no BatchNorm in the generator: data parallelism splits the batch a BatchNorm would normalise
        # over (SyncBatchNorm in a causal generator is refused in one line)
        self.act_fn = adaptact.create("meta_acon_c", channels=16, channel_dim=-1, context="causal",
                                      norm="none")

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _mlp_data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 5, 8, generator=g), torch.randn(4, 5, 8, generator=g)


def _two_d(rank, state):
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         set_model_state_dict)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model = MLP()
    base = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
    parallelize_module(model, mesh["tp"], plan(model, base))
    fully_shard(model, mesh=mesh["dp"])
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    x, target = _mlp_data()
    dp = mesh["dp"].get_local_rank()
    _train(model, x.chunk(2)[dp], target.chunk(2)[dp], F.mse_loss, 0.1)
    gathered = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().clone() for k, v in gathered.items()}


def _fsdp_cases(rank):
    return {(a, w): attempt(lambda a=a, w=w: _sharded_run(a, w, rank, _reference(a).state_dict(), *_data()))
            for a, w in CASES}


def _two_d_cases(rank):
    return {"2d": attempt(lambda: _two_d(rank, _reference_mlp().state_dict()))}


def _reference_mlp():
    torch.manual_seed(0)
    return MLP()


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    return spawn(_fsdp_cases, 2, tmp_path_factory.mktemp("fsdp") / "results.pt")


def _assert_states_equal(got, want):
    assert not isinstance(got, str), got
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("activation, way", CASES)
def test_fsdp2_steps_equal_one_process(fsdp, activation, way):
    got = fsdp[(activation, way)]
    assert not isinstance(got, str), got
    assert got["finite"]  # reset_parameters set every parameter of a meta-built, emptied model
    model = _reference(activation)
    _train(model, *_data())
    _assert_states_equal(got["state"], model.state_dict())


def test_a_two_d_mesh_equals_one_process(tmp_path):
    got = spawn(_two_d_cases, 4, tmp_path / "results.pt")["2d"]
    model = _reference_mlp()
    x, target = _mlp_data()
    _train(model, x, target, F.mse_loss, 0.1)
    _assert_states_equal(got, model.state_dict())
