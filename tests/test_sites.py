"""Where a model's activations are and what produces each one's input (``adaptact.sites``): the
producers' layouts, the sites of a traced holder, of a Sequential and of a holder fx cannot trace."""

import pytest
from torch import nn

from adaptact.sites import activation_producers, find_sites, is_activation, left_alone, producer_layout
from tests.test_convert import SmallNet


@pytest.mark.parametrize(("layer", "layout"), [
    (nn.Conv2d(3, 8, 3), (8, 1)), (nn.Conv1d(3, 5, 1), (5, 1)), (nn.Linear(4, 6), (6, -1)),
    (nn.BatchNorm2d(7), (7, 1)), (nn.GroupNorm(2, 6), (6, 1)), (nn.LayerNorm(9), (9, -1)),
    (nn.RMSNorm(11), (11, -1)), (nn.Embedding(10, 12), (12, -1)), (nn.ReLU(), None), (nn.Dropout(), None)])
def test_a_producer_names_its_channels_and_the_dim_they_are_on(layer, layout):
    assert producer_layout(layer) == layout


def test_each_activation_module_gets_the_layer_feeding_it():
    """A Sequential's activation: the producer registered before it; a traced holder's: the layer its
    call is fed by (through pass-through ops); a norm that applies its own activation: the norm.
    Functional calls have no path of their own and are left out."""
    assert activation_producers(SmallNet()) == {"stem.2": "stem.1", "block.relu": "block.conv2",
                                                "norm_act.act": "norm_act"}


class _Untraceable(nn.Module):
    """A forward fx cannot trace (control flow on a value)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.GELU()

    def forward(self, x):
        if x.sum() > 0:
            return self.act(self.fc(x))
        return self.act(-self.fc(x))


def test_a_holder_fx_cannot_trace_gets_registration_orders_producer_as_a_guess():
    model = nn.Sequential(nn.Linear(3, 4), _Untraceable(), nn.Sigmoid())
    sites, graphs, causal = find_sites(model)
    (site,) = sites
    assert (site.path, site.channels, site.producer, site.guessed) == ("1.act", 6, "1.fc", True)
    assert site.node is None and graphs == {} and not causal
    assert left_alone(model[2]) and not is_activation(model[2]) and is_activation(model[1].act)
