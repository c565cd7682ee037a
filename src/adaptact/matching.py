"""Function-preserving initialisation: set an activation's parameters so that it computes, as closely
as its family allows, the activation it replaces (``replace_activations(init="match")``).

A pretrained network converted at the papers' initialisation computes another function before its
first step; matched, it starts where the pretraining left it. Input-conditioned activations first
become constant in their input: the last layer of the generator (Meta-ACON-C's and APReLU's fc2,
DY-ReLU's fc2, FReLU's depthwise convolution) gets zero weights and bias, so the generated value is
the bias of what follows (bn2's, FReLU's BatchNorm's, or DY-ReLU's initial coefficients) in training
and evaluation alike. Then the remaining scalars (each class's ``fit_parameters``) are fitted by
least squares over
standard-normal-weighted inputs, what pre-activations look like, from a few starts where closed
forms exist (ACON-C with p1 = 1, p2 = 0, beta = 1.702 is x sigmoid(1.702 x); DY-ReLU with
coefficients (1, 0) and (0, 0) is ReLU; FReLU with a zero funnel is ReLU). The fit error is the
largest |new - old| on [-FIT_RANGE, FIT_RANGE]; past ``FIT_TOLERANCE`` the family cannot come close
(AReLU cannot become GELU; Meta-ACON-C's beta in (0, 1) cannot become ReLU's step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .nn import ActivationModule
from .nn.base import FITS

__all__ = ["FIT_RANGE", "FIT_TOLERANCE", "FROZEN", "fit_error", "fitted", "frozen_knobs", "match"]

FIT_RANGE = 3.0  # the fit error is measured on [-FIT_RANGE, FIT_RANGE]
FIT_TOLERANCE = 0.05  # past this a conversion warns, naming the site
# a fitted knob that moves the output by less than this per unit (root mean square over the
# standard-normal-weighted grid, the largest channel's) is saturated: its gradients vanish, so
# training leaves it where the fit put it. Matched to ReLU, LeakyReLU, GELU or SiLU the saturated
# ones measure 4e-6 and less (ACON's beta of 450-830, the sigmoids of APReLU's slope, Meta-ACON-C's
# beta and AReLU's gain at their ends); every other fitted knob, and each at the papers' values,
# 0.058 and more
FROZEN = 1e-3
FROZEN_STEP = 1e-3  # the finite difference that measures it, in float64
_GRID = torch.linspace(-4.0, 4.0, 801, dtype=torch.float64)  # where the least squares are taken
_WEIGHT = torch.exp(-_GRID.square() / 2)  # standard-normal weights
# the fit error's grid: even on the range, and dense near 0, where a steep fit (ACON with a large
# beta standing in for ReLU) has its largest error in a window of width ~1/beta
_NEAR_ZERO = torch.logspace(-6, math.log10(FIT_RANGE), 600, dtype=torch.float64)
_EVEN = torch.linspace(-FIT_RANGE, FIT_RANGE, 1201, dtype=torch.float64)
_CHECK = torch.cat((_EVEN, _NEAR_ZERO, -_NEAR_ZERO))

def _knobs(m: nn.Module) -> list[Tensor]:
    """Make ``m`` constant in its input (a silenced generator) and return the tensors that then
    set its shape, for the fit: the module's own ``fit_parameters`` (``nn.base.ActivationModule``)."""
    fit = getattr(m, "fit_parameters", None)
    if fit is None:
        raise ValueError(f"init='match' does not know how to fit {type(m).__name__}; {FITS}")
    return fit()


def _probe(m: nn.Module, x: Tensor) -> Tensor:
    """``x`` as an input of ``m`` (every channel the same values along one position dim), and back:
    m's output as (channels, len(x))."""
    channels = int(getattr(m, "channels", None) or getattr(m, "num_parameters", 1) or 1)
    last = getattr(m, "channel_dim", 1) == -1
    maps = getattr(m, "dims", None) == 2  # FReLU's 2-D condition takes maps
    shape = (1, len(x), channels) if last else (1, channels, len(x))
    inp = x.reshape((1, -1, 1) if last else (1, 1, -1)).expand(shape)
    if maps:
        inp = inp.unsqueeze(1) if last else inp.unsqueeze(2)
    y = m(inp.contiguous())
    if maps:
        y = y.squeeze(1) if last else y.squeeze(2)
    return y[0].T if last else y[0]


def fit_error(new: nn.Module, old: Callable[[Tensor], Tensor]) -> float:
    """max |new(x) - old(x)| over x in [-FIT_RANGE, FIT_RANGE] and every channel (float64, eval
    mode)."""
    probe = copy.deepcopy(new).cpu().double().eval()
    with torch.no_grad():
        return float((_probe(probe, _CHECK) - old(_CHECK.clone()).double()).abs().max())


def _fill(knobs: list[Tensor], values: list[list[float]]) -> None:
    with torch.no_grad():
        for knob, value in zip(knobs, values, strict=True):
            if len(value) == 1:
                knob.fill_(value[0])
            else:  # one value per entry of a small vector (DY-ReLU's coefficients)
                knob.copy_(torch.tensor(value, dtype=knob.dtype).reshape(knob.shape))


def _least_squares(probe: nn.Module, knobs: list[Tensor], target: Tensor) -> None:
    """Fit ``knobs`` so that ``probe`` computes ``target`` on the grid, standard-normal weighted."""
    opt = torch.optim.LBFGS(knobs, lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (_WEIGHT * (_probe(probe, _GRID) - target).square()).sum(-1).mean()
        loss.backward()
        return loss

    with torch.enable_grad():  # the caller may hold a network under no_grad
        opt.step(closure)


_NOT_CONFIG = {"channels", "channel_dim", "inplace", "training", "_backend", "ran_backend", "_triton_failed"}


def _config(m: nn.Module) -> tuple:
    """What besides the channels shapes ``m``'s fit: its class and plain settings."""
    return (type(m), tuple(sorted((k, v) for k, v in vars(m).items()
                                  if isinstance(v, bool | int | float | str) and k not in _NOT_CONFIG)))


def match(new: nn.Module, old: Callable[[Tensor], Tensor],
          cache: dict[tuple, list[Tensor]] | None = None) -> float:
    """Set ``new``'s parameters (in place) so that it computes ``old`` (an elementwise activation:
    a module or a function of a tensor) as closely as its family allows; returns the fit error
    (``fit_error``). ``new`` must have its channels (a lazy module has no parameters yet); one
    without parameters has nothing to set and gets its fit error only. ``cache``: fits already
    made, by settings and target values (a model's sites of one kind are fitted once; every
    channel takes the same values, so the width does not enter)."""
    if getattr(new, "initialized", True) is False:
        raise ValueError(f"init='match' needs {type(new).__name__}'s channels: a lazy module has no "
                         "parameters until its first input")
    try:
        with torch.no_grad():
            target = old(_GRID.clone()).double()
            far = old(torch.tensor([-6.0, -5.0], dtype=torch.float64)).double()
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"init='match' fits elementwise activations; {old!r} is not one ({err})") from None
    if not any(True for _ in new.parameters()):
        return fit_error(new, old)
    key = (_config(new), target.numpy().tobytes())
    if cache is not None and key in cache:
        _set(_knobs(new), cache[key])
        return fit_error(new, old)
    negative_slope = float(far[1] - far[0])
    probe = copy.deepcopy(new).cpu().double().eval()
    if isinstance(probe, ActivationModule):
        probe.backend = "reference"
    knobs = _knobs(probe)
    best: tuple[float, list[Tensor]] | None = None
    for start in probe.fit_starts(negative_slope):  # type: ignore[operator]
        _fill(knobs, start)
        for k in knobs:
            k.requires_grad_(True)
        _least_squares(probe, knobs, target)
        with torch.no_grad():
            loss = float((_WEIGHT * (_probe(probe, _GRID) - target).square()).sum(-1).mean())
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, [k.detach().clone() for k in knobs])
    assert best is not None
    _set(_knobs(new), best[1])
    if cache is not None:
        cache[key] = best[1]
    return fit_error(new, old)


def fitted(new: nn.Module) -> tuple:
    """What the match set in ``new``: its class and settings with the value each fitted knob holds
    (every channel holds the same), so sites fitted alike compare equal whatever else (a silenced
    generator's first layer) they hold. ``new`` is unchanged (a copy gives the knobs)."""
    probe = copy.deepcopy(new)
    names = {id(p): n for n, p in probe.named_parameters()}
    knobs = [(names[id(k)], float(k.detach().flatten()[0])) for k in _knobs(probe) if id(k) in names]
    return (_config(new), tuple(knobs))


def frozen_knobs(new: nn.Module) -> list[str]:
    """The names of a matched ``new``'s fitted knobs (``fit_parameters``) that its output hardly
    depends on where they are (under ``FROZEN`` per unit, by a finite difference of
    ``FROZEN_STEP``): a match that reached its target by saturating them leaves the activation
    unable to learn away from it. A copy is probed (float64, training mode as fine-tuning runs it,
    its generator silenced as the match left it); ``new`` is unchanged."""
    probe = copy.deepcopy(new).cpu().double().train()
    if isinstance(probe, ActivationModule):
        probe.backend = "reference"
    names = {id(p): n for n, p in probe.named_parameters()}
    knobs = [k for k in _knobs(probe) if id(k) in names]
    weight = _WEIGHT / _WEIGHT.sum()
    frozen = []
    with torch.no_grad():
        base = _probe(probe, _GRID)
        for knob in knobs:
            knob.add_(FROZEN_STEP)
            slope = (_probe(probe, _GRID) - base) / FROZEN_STEP
            knob.sub_(FROZEN_STEP)
            if not float(slope.square().mul(weight).sum(-1).sqrt().max()) >= FROZEN:  # nan: frozen too
                frozen.append(names[id(knob)])
    return frozen


def _set(knobs: list[Tensor], values: list[Tensor]) -> None:
    """Fitted values into knobs: as they are, or (a per-channel knob of another width) the value
    every channel took."""
    with torch.no_grad():
        for knob, value in zip(knobs, values, strict=True):
            if value.shape == knob.shape:
                knob.copy_(value.to(knob.dtype))
            else:
                knob.fill_(float(value.flatten()[0]))
