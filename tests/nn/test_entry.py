"""The registry entries classes declare (nn/entry.py): each builds its class with its options."""

import pytest

import adaptact
from adaptact import nn as ann

DECLARED = [(cls, e) for cls in (getattr(ann, n) for n in ann.__all__) if isinstance(cls, type)
            for e in vars(cls).get("registry_entries", ())]


def test_the_paper_activations_are_declared_on_their_classes():
    names = {e.name: cls for cls, e in DECLARED}
    assert {"arelu", "acon_c", "meta_acon_c", "aprelu", "dy_relu_b", "frelu"} <= set(names)
    assert names["dy_relu_a"] is names["dy_relu_b"] is ann.DyReLU
    assert len(names) == len(DECLARED)  # no name twice


@pytest.mark.parametrize("case", DECLARED, ids=[e.name for _, e in DECLARED])
def test_an_entry_builds_its_class_with_its_options(case):
    cls, entry = case
    spec = adaptact.spec(entry.name)
    assert (spec.family, spec.paper, spec.per_channel, spec.per_sample, spec.ranks) == (
        entry.family, entry.paper, entry.per_channel, entry.per_sample, entry.ranks)
    assert spec.learnable == (entry.family != "classic")
    m = adaptact.create(entry.name, channels=8)
    assert type(m) is cls
    for key, value in entry.options.items():
        assert getattr(m, key) == value
    if entry.per_channel:  # built with its channels, not lazily
        assert getattr(m, "channels", None) == 8
    assert spec.learnable == any(p.requires_grad for p in m.parameters())


def test_every_built_in_of_ours_is_declared_on_its_class():
    """The registry's table holds torch's classes and PReLU's two factories alone."""
    declared = {e.name for _, e in DECLARED}
    for name in adaptact.available():
        if adaptact.spec(name).definition is not None:  # made by adaptact.define in another test
            continue
        m = adaptact.create(name, channels=8)
        ours = isinstance(m, ann.ActivationModule) and type(m).__module__.startswith("adaptact.nn.")
        assert ours == (name in declared), name
