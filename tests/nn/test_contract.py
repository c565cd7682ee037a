"""torch.nn's contract on every public module: built on the meta device (deferred init) with
``device``/``dtype``, ``reset_parameters``, a repr made from configuration alone (no ``.item()``:
no GPU sync, works on meta tensors), and docstrings whose Examples run as written."""

import doctest
import inspect

import pytest
import torch
from torch import nn

import adaptact
from adaptact import nn as ann

MODULES = [getattr(ann, name) for name in ann.__all__
           if inspect.isclass(getattr(ann, name)) and issubclass(getattr(ann, name), nn.Module)
           and getattr(ann, name) not in (ann.ActivationModule, ann.ChannelModule)]
PER_CHANNEL = {ann.AconA, ann.AconB, ann.AconC, ann.MetaAconC, ann.APReLU, ann.DyReLU, ann.FReLU, ann.Maxout}
STATELESS = {ann.CReLU, ann.MaxoutPool, ann.TanhGELU, ann.GoLU, ann.ReLU2, ann.GatedActivation,
             ann.SwiGLUOSS, ann.QuickGELU, ann.Laplace, ann.SqrtSoftplus, ann.ClippedGELU}
ARGS = {ann.PReLU: {"num_parameters": 6}, ann.Swish: {"learnable": True},
        ann.GatedActivation: {"gate": nn.SiLU()}}


def _build(cls, **factory):
    args = {"channels": 6} if cls in PER_CHANNEL else dict(ARGS.get(cls, {}))
    return cls(**args, **({} if cls in STATELESS else factory))


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_builds_on_the_meta_device_and_reprs(cls):
    m = _build(cls, device="meta", dtype=torch.float16)
    assert all(t.is_meta and t.dtype == torch.float16 for t in m.parameters())
    assert type(m).__name__ in repr(m)
    if cls not in STATELESS:
        m.reset_parameters()  # on meta tensors too
        real = _build(cls)
        before = {k: v.clone() for k, v in real.state_dict().items()}
        with torch.no_grad():  # every tensor of its state moved: as uninitialised memory after to_empty
            for t in [*real.parameters(), *real.buffers()]:
                t.add_(1)
        torch.manual_seed(0)
        real.reset_parameters()
        for k, v in real.state_dict().items():  # back to the initial values (random ones: same law)
            if not k.endswith(("p1", "p2", "weight", "bias")) or cls in (ann.AReLU, ann.PReLU):
                torch.testing.assert_close(v, before[k], msg=k)


@pytest.mark.parametrize("cls", [c for c in MODULES if c not in STATELESS], ids=lambda c: c.__name__)
def test_deferred_init_gives_the_module_as_built(cls):
    """Built on the meta device, ``to_empty`` then ``reset_parameters`` (FSDP2's and torchtitan's
    deferred init): every entry the initialisation sets to given values has them (before: DY-ReLU's
    lambdas and initial pieces and xIELU's beta and eps kept whatever memory to_empty gave)."""
    with torch.device("meta"):
        m = _build(cls)
    m.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*m.parameters(), *m.buffers()]:
            t.fill_(float("nan") if t.is_floating_point() else 7)
    m.reset_parameters()
    for k, v in _build(cls).state_dict().items():
        if not k.endswith(("p1", "p2", "weight", "bias")) or cls in (ann.AReLU, ann.PReLU):
            torch.testing.assert_close(m.state_dict()[k], v, msg=k)
        else:  # a random initialisation: drawn anew
            assert not m.state_dict()[k].isnan().any(), k


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_docstrings_have_args_and_examples_that_run(cls):
    doc = inspect.getdoc(cls)
    assert ".. math::" in doc and "Args:" in doc and "Examples:" in doc, cls.__name__
    globs = {"torch": torch, "adaptact": adaptact, **{c.__name__: c for c in MODULES}}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted and not result.failed, cls.__name__


def test_registry_examples_run():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder(recurse=False).find(adaptact.get_act_layer, globs={
            "torch": torch, "get_act_layer": adaptact.get_act_layer}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
