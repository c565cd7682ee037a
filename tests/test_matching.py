"""init="match": each adaptive activation fitted to the activation it replaces, so a trained network
keeps its function through the conversion (the fit errors the module's docstring states)."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptact
from adaptact.matching import FIT_TOLERANCE, fit_error, frozen_knobs, match

ADAPTIVE = adaptact.available("adaptive")
TARGETS = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "gelu": nn.GELU(),
           "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(), "mish": nn.Mish()}
# every family against ReLU and GELU, and each other target against the families that show its cases
CASES = [(n, t) for n in ADAPTIVE for t in ("relu", "gelu")] + [
    ("acon_c", "leaky_relu"), ("dy_relu_b", "leaky_relu"), ("frelu", "leaky_relu"), ("acon_a", "silu"),
    ("meta_acon_c", "silu"), ("aprelu", "silu"), ("acon_c", "mish"), ("acon_c", "gelu_tanh")]
# what each family can become exactly (fit error below 1e-3); the rest is bounded below
EXACT = {"acon_a": {"relu", "silu"}, "acon_b": {"relu", "leaky_relu", "silu"},
         "acon_c": {"relu", "leaky_relu", "silu"}, "meta_acon_c": {"silu"}, "meta_acon_c_nobn": {"silu"},
         "aprelu": {"relu", "leaky_relu"}, "dy_relu_a": {"relu", "leaky_relu"},
         "dy_relu_b": {"relu", "leaky_relu"}, "frelu": {"relu"}, "arelu": {"leaky_relu"}}
# x sigmoid(1.702 x) is GELU to 0.02 (ACON-A/B/C); AReLU's negative slope is at least 0.01
NEAR = {**{(n, t): 0.025 for n in ("acon_a", "acon_b", "acon_c") for t in ("gelu", "gelu_tanh")},
        ("arelu", "relu"): 0.031}


def _layout(name):
    return {"channel_dim": -1, "dims": 1} if name == "frelu" else {"channel_dim": -1}


@pytest.mark.parametrize("name, target", CASES)
def test_each_family_comes_as_close_as_it_can(name, target):
    m = adaptact.create(name, channels=6, **_layout(name))
    error = match(m, TARGETS[target])
    assert error == pytest.approx(fit_error(m, TARGETS[target]))
    if target in EXACT[name]:
        assert error < 1e-3
    elif (name, target) in NEAR:
        assert error < NEAR[(name, target)]
    else:  # the family cannot: what the conversion warns of
        assert error > FIT_TOLERANCE
    x = torch.randn(3, 5, 6).clamp(-3, 3)  # tokens (B, T, C) through the module as it will run
    for training in (True, False):
        y = m.train(training)(x)
        assert (y - TARGETS[target](x)).abs().max() <= error + 1e-5


@pytest.mark.parametrize("name", ["acon_c", "meta_acon_c", "aprelu", "dy_relu_b", "frelu"])
def test_channels_first_and_last_fit_alike(name):
    first = adaptact.create(name, channels=4)
    last = adaptact.create(name, channels=4, channel_dim=-1)  # FReLU: 2-D maps, channels last
    assert match(first, nn.SiLU()) == pytest.approx(match(last, nn.SiLU()), abs=1e-6)
    x = torch.randn(2, 4, 5, 5) if name == "frelu" else torch.randn(2, 4, 7)
    torch.testing.assert_close(first.eval()(x), last.eval()(x.movedim(1, -1)).movedim(-1, 1))


def test_what_cannot_be_matched_is_refused():
    with pytest.raises(ValueError, match="a lazy module has no parameters"):
        match(adaptact.create("acon_c"), nn.ReLU())
    with pytest.raises(ValueError, match="does not know how to fit PAU"):
        match(adaptact.create("pau"), nn.ReLU())
    assert match(nn.GELU(), nn.ReLU()) == pytest.approx(0.17, abs=0.01)  # nothing to set: its error


def _trained(activation, steps=100):
    """A token MLP trained on a fixed random task: the network a user converts."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), activation, nn.Linear(32, 32), nn.Linear(32, 4))
    x, y = torch.randn(256, 5, 8), torch.randn(256, 5, 4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(net(x), y).backward()
        opt.step()
    return net, x


# how far the outputs (of size ~1.5) of the trained network may move when converted with init="match":
# the fit error times the gain of the two layers after it; at the papers' init they move by 0.8 to 22
MOVE = {"gelu": {"acon_a": 0.15, "acon_b": 0.15, "acon_c": 0.15}, "relu": {
    "acon_a": 0.005, "acon_b": 0.005, "acon_c": 0.005, "aprelu": 1e-4, "dy_relu_a": 1e-4, "dy_relu_b": 1e-4,
    "frelu": 1e-4, "arelu": 0.1}}


@pytest.mark.parametrize("base, name", [(b, n) for b, names in MOVE.items() for n in names])
def test_a_trained_network_keeps_its_function(base, name):
    net, x = _trained(nn.GELU() if base == "gelu" else nn.ReLU())
    with torch.no_grad():
        before = net(x)
    paper, _ = _trained(nn.GELU() if base == "gelu" else nn.ReLU())
    options = {"dims": 1} if name == "frelu" else {}  # tokens: the funnel runs along the sequence
    converted = adaptact.replace_activations(net, name, init="match", **options)
    adaptact.replace_activations(paper, name, **options)
    assert list(converted.fits) == ["1"] and converted.fits["1"] < FIT_TOLERANCE
    with torch.no_grad():
        moved, moved_paper = (net(x) - before).abs().max(), (paper(x) - before).abs().max()
    assert moved < MOVE[base][name] and moved < moved_paper / 5


def test_the_conversion_warns_by_site_and_reads_functional_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.act = nn.Linear(4, 6), nn.Linear(6, 6), nn.GELU()

        def forward(self, x):
            return self.act(self.fc2(F.leaky_relu(self.fc1(x), 0.2)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replaced = adaptact.replace_activations(nn.Sequential(Net()), "aprelu", init="match")
    assert replaced.fits["0.act_site0"] < 1e-3  # leaky_relu(x, 0.2): its slope read from the call
    assert replaced.fits["0.act"] > FIT_TOLERANCE  # APReLU cannot become GELU
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and messages[0].startswith("0.act: the new activation comes within 0.26")
    with pytest.raises(ValueError, match="init must be one of 'paper', 'match', got 'fit'"):
        adaptact.replace_activations(Net(), "aprelu", init="fit")


@pytest.mark.parametrize("name, frozen, learns", [
    ("swish", "Swish's beta", set()), ("acon_c", "AconC's beta", {"p1", "p2"}),
    ("aprelu", "APReLU's bn2.bias", set()), ("meta_acon_c", "MetaAconC's bn2.bias", {"p1", "p2"}),
    ("arelu", "AReLU's alpha, beta", set()), ("dy_relu_b", None, {"fc2.weight", "fc2.bias"}),
    ("frelu", None, {"conv_frelu.weight"}), ("prelu", None, {"weight"})])
def test_a_match_that_saturates_what_learns_says_so(name, frozen, learns):
    """Matched to ReLU, these families reach it at their limits (ACON's beta near 800, APReLU's
    slope sigmoid at 1e-6): exact, and unable to learn away. The conversion says so in a warning
    and its notes; fine-tuning then leaves the saturated knobs where the match put them, while
    the ones it does not name move."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 36, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replaced = adaptact.replace_activations(model, name, init="match")
    said = [str(w.message) for w in caught if "saturating" in str(w.message)]
    if frozen is None:
        assert not said and not any("saturating" in n for n in replaced.notes)
    else:
        assert len(said) == 1 and f"{frozen} at 1 site (1)" in said[0] and said[0] in replaced.notes
    act = model[1]
    before = {n: p.detach().clone() for n, p in act.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    moved = {n for n, p in act.named_parameters() if (p.detach() - before[n]).abs().max() > 1e-5}
    named = set(frozen.split("'s ")[1].split(", ")) if frozen else set()
    assert not named & moved and learns <= moved, (named, learns, moved)  # what it names stays


@pytest.mark.parametrize("source", [nn.LeakyReLU(0.2), nn.GELU(), nn.SiLU()])
def test_what_a_match_to_a_smooth_or_leaky_activation_saturates_is_named_and_nothing_else(source):
    """Matched to LeakyReLU, ACON-C's beta saturates as for ReLU (a kink) but APReLU's slope does
    not; matched to GELU or SiLU, Meta-ACON-C's beta (in (0, 1)) and AReLU's gain sit at their
    ends while ACON-C's beta (1.702 for GELU, 1 for SiLU) learns."""
    expected = {"acon_c": ["beta"] if isinstance(source, nn.LeakyReLU) else [],
                "aprelu": [], "meta_acon_c": ["bn2.bias"],
                "arelu": ["beta"]}
    for name, frozen in expected.items():
        model = nn.Sequential(nn.Linear(4, 8), copy.deepcopy(source))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adaptact.replace_activations(model, name, init="match")
        assert frozen_knobs(model[1]) == frozen, (name, source)


def test_sites_fitted_alike_are_probed_for_saturation_once(monkeypatch):
    """A model's sites of one kind take one fit; their saturation probe (seconds at LLaMA-7B's
    width) runs once for all of them, though their silenced generators' first layers differ."""
    import adaptact.convert as convert

    probed = []
    monkeypatch.setattr(convert, "frozen_knobs", lambda m: probed.append(m) or frozen_knobs(m))
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 64), nn.ReLU()) for _ in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replaced = adaptact.replace_activations(model, "meta_acon_c", init="match")
    assert len(probed) == 1
    assert "MetaAconC's bn2.bias at 4 sites (0.1, 1.1, 2.1, ...)" in replaced.notes[-1]
