"""Properties are numbers: checked against closed forms and the papers."""

import math

import pytest
import torch

import adaptact
from adaptact.analysis import gradient_flow, properties
from adaptact.analysis.plots import acon_c_derivative_bounds


@pytest.fixture(scope="module")
def props():
    names = ["relu", "silu", "sigmoid", "tanh", "mish", "relu6", "elu", "selu", "softplus", "hardswish",
             "pau"]
    return {n: properties(n, cost=False) for n in names}


def test_silu_derivative_bounds(props):
    assert props["silu"].derivative_min == pytest.approx(-0.0998, abs=1e-3)
    assert props["silu"].derivative_max == pytest.approx(1.0998, abs=1e-3)


def test_sigmoid_derivative_max_and_saturation(props):
    assert props["sigmoid"].derivative_max == pytest.approx(0.25, abs=1e-6)
    assert props["sigmoid"].derivative_min >= 0
    # tanh' = 1 - tanh^2 < 1e-3 for |x| > atanh(sqrt(0.999)): that share of [-6, 6]
    edge = math.atanh(math.sqrt(1 - 1e-3))
    assert props["tanh"].saturation == pytest.approx((6 - edge) / 6, abs=1e-3)


def test_relu_dies_on_half_of_normal_inputs(props):
    assert props["relu"].dying_fraction == pytest.approx(0.5, abs=0.01)
    assert props["relu"].saturation == pytest.approx(0.5, abs=1e-3)
    assert props["silu"].dying_fraction == 0 and props["elu"].dying_fraction == 0


def test_zero_centred(props):
    assert abs(props["tanh"].output_mean) < 0.01
    assert props["sigmoid"].output_mean == pytest.approx(0.5, abs=0.01)
    assert abs(props["selu"].output_mean) < 0.01 and props["selu"].output_std == pytest.approx(1, abs=0.01)
    # E[relu(z)] = 1/sqrt(2 pi)
    assert props["relu"].output_mean == pytest.approx(1 / math.sqrt(2 * math.pi), abs=0.01)


def test_monotonic_smooth_bounded(props):
    assert not props["mish"].monotonic and not props["silu"].monotonic and not props["hardswish"].monotonic
    assert props["relu"].monotonic and props["sigmoid"].monotonic and props["softplus"].monotonic
    assert props["relu6"].bounded_below and props["relu6"].bounded_above
    assert props["relu"].bounded_below and not props["relu"].bounded_above
    assert props["mish"].bounded_below and not props["mish"].bounded_above
    assert props["tanh"].bounded_above and props["sigmoid"].bounded_below
    assert props["silu"].smooth and props["elu"].smooth and props["softplus"].smooth
    assert not props["relu"].smooth and not props["selu"].smooth and not props["hardswish"].smooth
    assert not props["pau"].smooth  # |x| in the safe denominator: a kink at 0


@pytest.mark.parametrize("p1, p2, beta",
                         [(1.0, 0.0, 1.0), (2.0, 0.5, 3.0), (0.5, 1.5, 1.0), (1.2, -0.8, 0.5)])
def test_acon_c_derivative_bounds_move_with_p1_p2(p1, p2, beta):
    m = adaptact.AconC(1)
    with torch.no_grad():
        m.p1.fill_(p1), m.p2.fill_(p2), m.beta.fill_(beta)
    p = properties(m, cost=False)
    lo, hi = acon_c_derivative_bounds(p1, p2)
    # ACON paper: the bounds are p2 + (p1 - p2) * (-0.0998, 1.0998), reached within |x| < 6 / beta
    assert p.derivative_min == pytest.approx(lo, abs=2e-3)
    assert p.derivative_max == pytest.approx(hi, abs=2e-3)
    assert not p.monotonic if lo < 0 else p.monotonic


def test_learned_parameters_are_used():
    m = adaptact.AconC(3)
    with torch.no_grad():
        m.p1.fill_(0.7), m.p2.fill_(0.7)  # p1 == p2: the line 0.7 x
    p = properties(m, cost=False)
    assert p.derivative_min == pytest.approx(0.7, abs=1e-6)
    assert p.derivative_max == pytest.approx(0.7, abs=1e-6)
    assert p.monotonic and p.smooth and p.params_per_channel == 3


def test_parameter_counts():
    assert properties("acon_c", cost=False).params_per_channel == 3
    assert properties("arelu", cost=False).params_shared == 2


def test_relative_cost_is_measured():
    relu = properties("relu").relative_cost
    assert 0.5 < relu < 2.0
    assert properties("meta_acon_c").relative_cost > 1.0


def test_gradient_flow():
    assert gradient_flow("sigmoid") < 1e-3  # vanishing
    assert 0.2 < gradient_flow("relu") < 5
    assert 0.2 < gradient_flow("selu") < 5
    assert gradient_flow("tanh", depth=4) > gradient_flow("tanh", depth=20) * 0.5
    with pytest.raises(ValueError, match="depth must be at least 2"):
        gradient_flow("relu", depth=1)


def test_softmax_is_analysed_as_the_sigmoid_of_one_logit_and_crelu_as_its_first_half():
    soft, sig = properties("softmax", cost=False), properties("sigmoid", cost=False)
    assert soft.output_mean == pytest.approx(sig.output_mean) and soft.derivative_max == pytest.approx(0.25)
    crelu, relu = properties("crelu", cost=False), properties("relu", cost=False)
    assert (crelu.derivative_min, crelu.derivative_max) == (relu.derivative_min, relu.derivative_max)


def test_bounds_look_at_both_tails():
    absolute = adaptact.Mixture(p=-1.0)  # -x + 2 relu(x) = |x|
    p = properties(absolute, cost=False)
    assert p.bounded_below and not p.bounded_above and not p.monotonic
    square = adaptact.SLAF(k=3)
    with torch.no_grad():
        square.coeff.copy_(torch.tensor([0.0, 0.0, -1.0]))  # -x^2
    p = properties(square, cost=False)
    assert p.bounded_above and not p.bounded_below


def test_named_activations_are_analysed_at_a_fixed_initialisation():
    assert properties("acon_c", cost=False) == properties("acon_c", cost=False)


def test_named_acon_is_analysed_at_canonical_parameters_and_says_so(capsys):
    from adaptact.analysis.properties import CANONICAL, response
    from adaptact.cli import main

    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    for name in ("acon_c", "meta_acon_c"):  # p1 = 1, p2 = 0: x sigmoid(beta x), the same every time
        y = response(name, x, channels=4)
        assert torch.equal(y, response(name, x, channels=4))
    torch.testing.assert_close(response("acon_c", x, channels=4), torch.nn.functional.silu(x).expand(4, -1))
    assert main(["props", "acon_c", "--no-cost", "--depth", "2"]) == 0
    assert CANONICAL in capsys.readouterr().out


@pytest.mark.parametrize("name", ["polynorm", "swiglu", "acon_c_glu"])
def test_no_curve_for_what_is_not_elementwise(name, capsys):
    from adaptact.cli import main

    with pytest.raises(ValueError, match="no elementwise function of its input"):
        properties(name, cost=False)
    assert main(["props", name, "--no-cost"]) == 2
    assert main(["plot", name, "--output", "unused.png"]) == 2
    assert "no elementwise function" in capsys.readouterr().err


def test_the_default_property_table_leaves_out_what_has_no_curve(monkeypatch):
    from adaptact.cli import main
    import adaptact.analysis as analysis

    asked = []
    monkeypatch.setattr(analysis, "property_table",
                        lambda names, **kw: (asked.extend(names), (("name",), []))[1])
    assert main(["props", "--no-cost"]) == 0
    assert "polynorm" not in asked and {"xielu", "relu2", "golu", "acon_c"} <= set(asked)
