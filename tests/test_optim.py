"""param_groups: no weight decay on activation parameters, norms and biases."""

import torch
from torch import nn

import adaptact


def ids(group):
    return {id(p) for p in group["params"]}


def test_param_groups_spare_activations_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), adaptact.MetaAconC(8),
                          nn.Conv2d(8, 8, 3, bias=False), adaptact.create("prelu", channels=8),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10), adaptact.AReLU())
    decay, no_decay = adaptact.param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert ids(decay) == {id(model[0].weight), id(model[3].weight), id(model[6].weight)}
    expected = {id(p) for m in (model[1], model[2], model[4], model[7]) for p in m.parameters()}
    expected |= {id(model[0].bias), id(model[6].bias)}
    assert ids(no_decay) == expected  # Meta-ACON's generator (2-D fc weights) included
    assert len(ids(decay) | ids(no_decay)) == len(list(model.parameters()))
    torch.optim.SGD(adaptact.param_groups(model, 1e-4), lr=0.1).step()  # a valid argument to an optimizer


def test_param_groups_count_shared_parameters_once_and_skip_frozen():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared, nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = adaptact.param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert len(no_decay["params"]) == 2  # the two biases


def test_get_act_layer_builds_like_a_class():
    act_layer = adaptact.get_act_layer("swish", learnable=True)
    m = act_layer(inplace=True)
    assert isinstance(m, adaptact.Swish) and m.learnable
    acon = adaptact.get_act_layer("acon_c")(channels=16)
    assert isinstance(acon, adaptact.AconC) and acon.channels == 16
