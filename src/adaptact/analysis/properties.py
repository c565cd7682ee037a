"""Numbers that describe an activation: monotonicity, smoothness, bounds, derivative range,
zero-centredness, dying units, saturation, parameters, cost and gradient flow.

Everything is measured numerically in float64 on the module as it is (learnable activations
at their current parameters), in eval mode:

* the curve is evaluated once on a symmetric input: a grid of [-6, 6] with step 1e-4 plus
  far points at +-1e2..1e5, laid along the last dim of a (1, C, G) tensor with every channel
  holding the same values (channel 1 held at 0 for modules without per-channel state, so
  softmax is analysed as the sigmoid of one logit against a zero one). Per-sample activations
  (Meta-ACON, APReLU) thus see one fixed input and their beta/alpha is held fixed across it.
  FReLU, whose condition is a spatial window, sees each value as a uniform 3x3 map (its
  curve for uniform inputs, the centre pixel read) and its gradient flow is measured through
  1x1 convolutions on 4x4 maps instead of linear layers.
* f' is the central difference between neighbouring grid points of that one evaluation, so
  it is the elementwise derivative with any generated beta/alpha held fixed.
* per-channel modules report the channel-wise worst case (min of minima, max of maxima;
  monotonic/smooth/bounded only if every channel is).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..registry import create, spec

__all__ = ["CANONICAL", "PROPERTY_COLUMNS", "Properties", "canonical", "gradient_flow", "properties",
           "property_table", "relative_cost", "response"]

STEP = 1e-4
SPAN = 6.0
FAR = (1e2, 1e3, 1e4, 1e5)


@dataclass(frozen=True)
class Properties:
    """What :func:`properties` measures (see the module docstring for how)."""

    name: str
    monotonic: bool
    smooth: bool  # C1: no jump in f' larger than 1e-2 between grid steps of 1e-4
    bounded_below: bool
    bounded_above: bool
    output_mean: float  # under N(0, 1) input
    output_std: float
    dying_fraction: float  # share of N(0, 1) inputs where f' == 0
    saturation: float  # share of [-6, 6] where |f'| < 1e-3
    derivative_min: float
    derivative_max: float
    params_per_channel: float  # learnable parameters per channel at C = 64 (0 for layer-shared ones)
    params_shared: int  # learnable parameters shared by the layer
    relative_cost: float | None  # forward+backward time over ReLU's on CPU (None if not measured)

    def as_dict(self) -> dict:
        return asdict(self)


CANONICAL = ("learnable activations given by name are analysed at canonical parameters: ACON-C and "
             "Meta-ACON-C with p1 = 1, p2 = 0 (the papers' starting switch between x and 0; their "
             "official code draws p1, p2 at random), beta = 1 for ACON-A/B/C, the others at their "
             "constructors' initial values; the generators of Meta-ACON-C, APReLU and DY-ReLU and "
             "FReLU's convolution at a seeded draw; a trained model: --checkpoint")


@torch.no_grad()
def canonical(module: nn.Module) -> nn.Module:
    """``module`` with the canonical parameters of ``CANONICAL`` (in place; returned)."""
    from ..nn import AconC, MetaAconC

    if isinstance(module, AconC | MetaAconC):
        module.p1.fill_(1.0)
        module.p2.fill_(0.0)
    return module


def _module(activation: str | nn.Module, channels: int, seed: int = 0) -> tuple[str, nn.Module, int]:
    """(name, module, channels); a name is built at canonical parameters (``CANONICAL``), with
    the rest drawn under ``seed``; a module is taken as it is."""
    if isinstance(activation, str):
        s = spec(activation)
        if not s.elementwise:
            raise ValueError(f"{s.name!r} is no elementwise function of its input (it normalises over or "
                             "splits the channels): it has no curve to analyse")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return s.name, canonical(create(s.name, channels=channels)), channels
    c = getattr(activation, "channels", None) or getattr(activation, "num_parameters", None)
    return type(activation).__name__, activation, int(c) if c else 0


def response(activation: str | nn.Module, x: torch.Tensor, channels: int = 4) -> torch.Tensor:
    """f(x) for a 1-D float64 ``x``, per channel: (C, len(x)) (C = 1 for shared activations).

    For a module, ``channels`` is its channel count (0 for modules without per-channel state).

    The module is copied to float64 and eval mode; see the module docstring for the layout.
    """
    name, module, c = _module(activation, channels)
    if isinstance(activation, str) and not spec(name).per_channel:
        c = 0
    elif not isinstance(activation, str):
        c = channels
    module = copy.deepcopy(module).double().eval()
    if _needs_maps(module):  # a spatial condition: each value as a uniform 3x3 map, its centre read
        with torch.no_grad():
            return module(x.reshape(-1, 1, 1, 1).expand(-1, c, 3, 3).clone())[:, :, 1, 1].T
    if c:
        inp = x.reshape(1, 1, -1).expand(1, c, -1).clone()
    else:
        inp = torch.stack((x, torch.zeros_like(x))).unsqueeze(0)
    with torch.no_grad():
        y = module(inp)[0]
    return y if c else y[:1]


def _needs_maps(module: nn.Module) -> bool:
    """Whether the activation conditions on a spatial window (FReLU) and so takes 2-D maps only."""
    from ..nn import FReLU

    return isinstance(module, FReLU) and module.dims == 2


def _grid() -> tuple[torch.Tensor, slice]:
    n = round(2 * SPAN / STEP)
    grid = torch.linspace(-SPAN, SPAN, n + 1, dtype=torch.float64)
    far = torch.tensor(FAR, dtype=torch.float64)
    x = torch.cat((-far.flip(0), grid, far))
    return x, slice(len(FAR), len(FAR) + n + 1)


def relative_cost(activation: str | nn.Module, channels: int = 64, repeats: int = 9) -> float:
    """Forward+backward time over ReLU's on a (32, C, 28, 28) float32 CPU tensor: the best of
    ``repeats`` runs each, interleaved so that load from elsewhere hits both alike (C =
    ``channels``; a module given directly must have that many channels if it has any).

    The eager path is timed (adaptact's modules on their "autograd" backend: the hand-written
    backward where there is one): compiling the CPU default for one measurement would cost tens of
    seconds per activation; ``adaptact bench-kernels`` times every backend side by side."""
    from ..nn import ActivationModule

    _, module, _ = _module(activation, channels)
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, ActivationModule):
            m.backend = "autograd"
    relu = nn.ReLU()
    x = torch.randn(32, channels, 28, 28, requires_grad=True)
    best = {id(module): float("inf"), id(relu): float("inf")}
    for i in range(repeats + 2):
        for m in (module, relu):
            start = time.perf_counter()
            m(x).sum().backward()
            if i >= 2:  # two warm-ups
                best[id(m)] = min(best[id(m)], time.perf_counter() - start)
    return best[id(module)] / best[id(relu)]


def properties(activation: str | nn.Module, channels: int = 4, cost: bool = True,
               seed: int = 0) -> Properties:
    """Measure an activation given by registry name or as a module (at its current parameters).

    ``channels`` sizes per-channel modules built from a name (their initial parameters drawn
    with ``seed``, so the numbers repeat); ``cost=False`` skips timing.
    """
    name, module, c = _module(activation, channels, seed)
    per_channel = bool(c) and (not isinstance(activation, str) or spec(name).per_channel)
    c = c if per_channel else 0
    x, inner = _grid()
    y = response(module, x, c)
    g = y[:, inner]
    d = (g[:, 2:] - g[:, :-2]) / (2 * STEP)  # f' at grid[1:-1]
    xs = x[inner][1:-1]
    jumps = (d[:, 1:] - d[:, :-1]).abs().amax()
    diffs = y[:, 1:] - y[:, :-1]
    monotonic = bool(((diffs >= -1e-12).all(1) | (diffs <= 1e-12).all(1)).all())
    # per channel: values on [-1e2, 1e2] against those out to +-1e5 (bounded: grows by less than 1)
    near = torch.cat((y[:, inner], y[:, [len(FAR) - 1, len(y[0]) - len(FAR)]]), dim=1)
    bounded_above = bool((y.amax(1) <= near.amax(1) + 1.0).all())
    bounded_below = bool((y.amin(1) >= near.amin(1) - 1.0).all())
    far_slopes = torch.cat((diffs[:, : len(FAR)] / (x[1 : len(FAR) + 1] - x[: len(FAR)]),
                            diffs[:, -len(FAR):] / (x[-len(FAR):] - x[-len(FAR) - 1 : -1])), dim=1)

    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(100_000, generator=gen, dtype=torch.float64)
    out = response(module, normal, c)
    d_at_normal = torch.stack([_interp(normal, xs, d[i]) for i in range(d.shape[0])])
    inside = normal.abs() < SPAN - 2 * STEP
    dying = float(((d_at_normal.abs() < 1e-9) & inside).double().mean(1).amax())

    if isinstance(activation, str) and per_channel:  # count at a typical width, as `adaptact list` does
        c, module_for_count = 64, _module(name, 64, seed)[1]
    else:
        module_for_count = module
    n_params = sum(p.numel() for p in module_for_count.parameters() if p.requires_grad)
    return Properties(
        name=name,
        monotonic=monotonic,
        smooth=bool(jumps < 1e-2),
        bounded_below=bounded_below,
        bounded_above=bounded_above,
        output_mean=float(out.mean()),
        output_std=float(out.std()),
        dying_fraction=dying,
        saturation=float((d.abs() < 1e-3).double().mean(1).amax()),
        derivative_min=float(torch.minimum(d.amin(), far_slopes.amin())),
        derivative_max=float(torch.maximum(d.amax(), far_slopes.amax())),
        params_per_channel=n_params / c if per_channel else 0.0,
        params_shared=0 if per_channel else n_params,
        relative_cost=(relative_cost(activation if isinstance(activation, str) else module, c or 64)
                       if cost else None),
    )


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (xp, fp) at x (xp sorted); clamps outside."""
    idx = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return fp[idx - 1] * (1 - w) + fp[idx] * w


def gradient_flow(activation: str, depth: int = 20, width: int = 64, batch: int = 256,
                  seed: int = 0) -> float:
    """||dL/dW_first|| / ||dL/dW_last|| of a depth-``depth`` MLP (Linear + activation per layer,
    LeCun-normal weights N(0, 1/fan_in), zero biases) on N(0, 1) input and random labels, at
    initialisation (training mode, cross-entropy loss).

    Near 1: gradients flow; << 1: they vanish towards the input; >> 1: they explode.
    """
    if depth < 2:
        raise ValueError(f"depth must be at least 2, got {depth}")
    torch.manual_seed(seed)
    factor = spec(activation).channel_factor if isinstance(activation, str) else 1
    maps = isinstance(activation, str) and spec(activation).ranks == (4,)  # 1x1 convs on 4x4 maps
    layers: list[nn.Module] = []
    inner = int(width / factor)  # the activation's input width: it gives ``width`` back
    for _ in range(depth):
        layer = nn.Conv2d(width, inner, 1) if maps else nn.Linear(width, inner)
        layers += [layer, create(activation, channels=inner)]
    if maps:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    layers.append(nn.Linear(width, 10))
    net = nn.Sequential(*layers).double().train()
    for m in net:
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    x = torch.randn(batch, width, *((4, 4) if maps else ()), dtype=torch.float64)
    y = torch.randint(0, 10, (batch,))
    nn.functional.cross_entropy(net(x), y).backward()
    linears = [m for m in net if isinstance(m, nn.Linear | nn.Conv2d)]
    grads = [m.weight.grad for m in (linears[0], linears[-2])]
    assert grads[0] is not None and grads[1] is not None
    first, last = grads[0].norm(), grads[1].norm()
    return float(first / last) if last > 0 else float("inf")


PROPERTY_COLUMNS = ("name", "monotonic", "smooth (C1)", "bounded below", "bounded above", "mean N(0,1)",
                    "std N(0,1)", "dying", "saturation", "f' min", "f' max", "params/channel",
                    "shared params", "cost vs ReLU")


def property_table(names: Sequence[str], cost: bool = True, depth: int = 20
                   ) -> tuple[tuple[str, ...], list[tuple]]:
    """(header, rows) of the property table (``adaptact props``): one row per activation, with the
    gradient-flow ratio of a depth-``depth`` MLP in the last column."""
    def yes(b: bool) -> str:
        return "yes" if b else "no"

    rows = []
    for name in names:
        p = properties(name, cost=cost)
        rows.append((name, yes(p.monotonic), yes(p.smooth), yes(p.bounded_below), yes(p.bounded_above),
                     f"{p.output_mean:.3f}", f"{p.output_std:.3f}", f"{p.dying_fraction:.3f}",
                     f"{p.saturation:.3f}", f"{p.derivative_min:.4f}", f"{p.derivative_max:.4f}",
                     f"{p.params_per_channel:g}", p.params_shared,
                     "-" if p.relative_cost is None else f"{p.relative_cost:.2f}",
                     f"{gradient_flow(name, depth=depth):.3g}"))
    return (*PROPERTY_COLUMNS, f"grad ratio (depth {depth})"), rows
