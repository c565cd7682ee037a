"""Matplotlib figures of activation curves and derivatives (headless: the Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import require
from .properties import response

__all__ = ["acon_c_derivative_bounds", "plot_acon_family", "plot_curves", "save_figure"]

G_MIN, G_MAX = -0.0998, 1.0998  # range of d/du [u sigmoid(u)], ACON paper


def pyplot():
    """matplotlib's pyplot on the Agg backend (MissingExtra naming adaptact[bench] without it)."""
    require("matplotlib", "bench").use("Agg")
    return require("matplotlib.pyplot", "bench")


def acon_c_derivative_bounds(p1: float, p2: float) -> tuple[float, float]:
    """(lower, upper) limits of ACON-C's derivative, whatever beta (ACON paper, Sec. 3)."""
    a, b = p2 + G_MIN * (p1 - p2), p2 + G_MAX * (p1 - p2)
    return min(a, b), max(a, b)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write and close a figure (PNG where ``path`` has no suffix)."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, format=None if path.suffix else "png")
    pyplot().close(fig)
    return path


def _derivative(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.gradient(y, spacing=(x,), dim=-1)[0]


def plot_curves(activations: Sequence[str | tuple[str, nn.Module]], path: str | Path,
                derivative: bool = False,
                span: float = 5.0) -> Path:
    """f (and f' with ``derivative``) of each activation, by name or as (label, module).

    Per-channel modules draw one thin line per channel (learned ones differ by channel). Names
    are drawn at canonical parameters (``analysis.properties.CANONICAL``), as the title says.
    """
    plt = pyplot()
    x = torch.linspace(-span, span, 2001, dtype=torch.float64)
    ncols = 2 if derivative else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, item in enumerate(activations):
        label, act = (item, item) if isinstance(item, str) else item
        if isinstance(act, str):
            y = response(act, x)
        else:
            c = getattr(act, "channels", 0) or 0
            y = response(act, x, c)
        color = cmap(i % 10)
        for j, row in enumerate(y):
            kw = {"color": color, "lw": 1.6 if len(y) == 1 else 0.8, "alpha": 1 if len(y) == 1 else 0.6,
                  "label": label if j == 0 else None}
            axes[0][0].plot(x, row, **kw)
            if derivative:
                axes[0][1].plot(x, _derivative(x, row), **kw)
    named = any(isinstance(item, str) for item in activations)
    axes[0][0].set(xlabel="x", ylabel="f(x)",
                   title="activation" + (" (named ones at canonical parameters)" if named else ""))
    if derivative:
        axes[0][1].set(xlabel="x", ylabel="f'(x)", title="derivative")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_acon_family(path: str | Path, settings: Sequence[tuple[float, float, float]] = (
        (1.0, 0.0, 1.0), (1.0, 0.25, 1.0), (1.0, 0.25, 10.0), (1.5, -0.5, 1.0), (0.5, 1.0, 1.0)),
        span: float = 5.0) -> Path:
    """ACON-C for several (p1, p2, beta): curves, and derivatives with their learnable bounds
    p2 + (p1 - p2) * (-0.0998, 1.0998) drawn as dashed lines."""
    from ..functional import acon_c

    plt = pyplot()
    x = torch.linspace(-span, span, 2001, dtype=torch.float64)
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (p1, p2, beta) in enumerate(settings):
        def t(v):
            return torch.tensor([v], dtype=torch.float64)
        y = acon_c(x, t(p1), t(p2), t(beta))
        label = f"p1={p1:g}, p2={p2:g}, β={beta:g}"
        ax_f.plot(x, y, color=cmap(i), label=label)
        ax_d.plot(x, _derivative(x, y), color=cmap(i), label=label)
        for bound in acon_c_derivative_bounds(p1, p2):
            ax_d.axhline(bound, color=cmap(i), ls="--", lw=0.8)
    ax_f.set(xlabel="x", ylabel="ACON-C(x)", title="ACON-C: (p1 - p2)x σ(β(p1 - p2)x) + p2 x")
    ax_d.set(xlabel="x", ylabel="d ACON-C / dx", title="derivative; dashed: learnable bounds")
    for ax in (ax_f, ax_d):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
