"""What trained adaptive activations do: per-sample Meta-ACON beta, APReLU alpha, DY-ReLU
pieces, FReLU's spatial condition, AReLU maps.

Forward hooks collect, over a data set, the beta each Meta-ACON-C layer generates for every
sample, the alpha of every APReLU layer, the slopes and intercepts of every DY-ReLU layer, the
share of each FReLU layer's elements where the funnel condition T(x) wins over x, and AReLU's
pre- and post-activation feature maps;
the plot functions draw them. Models to inspect come from ``adaptact compare --save-checkpoints``
(``adaptact.experiments.checkpoints.load_checkpoint``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..nn import AconC, ActivationModule
from .plots import pyplot, save_figure

__all__ = ["Collected", "acon_reference_beta", "collect", "learned_activations", "plot_aprelu_alpha",
           "plot_arelu_maps", "plot_dy_relu_pieces", "plot_frelu_share", "plot_meta_acon_beta"]


def learned_activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every activation with learnable parameters in ``model``."""
    return [(f"{name} ({type(m).__name__})", m) for name, m in model.named_modules()
            if isinstance(m, (ActivationModule, nn.PReLU)) and any(True for _ in m.parameters())]


@dataclass
class Collected:
    """Per-layer tensors over the data set, keyed by module path."""

    meta_acon_beta: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, C), (N, 1) or per pixel
    aprelu_alpha: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, C) or (N, 1)
    # a, b: (N, C or 1, K)
    dy_relu_pieces: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    frelu_share: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, C): share of elements T(x) > x
    # (pre, post) of the first AReLU layers with spatial dims (after convolutions)
    arelu_maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    inputs: torch.Tensor | None = None  # the first ``keep_maps`` inputs


@torch.no_grad()
def collect(model: nn.Module, x: torch.Tensor, batch_size: int = 500, keep_maps: int = 8) -> Collected:
    """Run ``model`` (eval mode) over ``x`` and collect what its adaptive activations compute."""
    out = Collected(inputs=x[:keep_maps].clone())
    parts: dict[str, dict[str, list]] = {}
    hooks = []

    def hook(name: str):
        def fn(module: ActivationModule, args: tuple, output: torch.Tensor) -> None:
            found = module.inspected(args[0], output)  # what the class says the analysis reads
            if found is None:
                return
            what, value = found
            if what == "arelu_maps":  # feature maps: the first batch's first ``keep_maps``
                if name not in out.arelu_maps:
                    out.arelu_maps[name] = tuple(t[:keep_maps].clone() for t in value)  # type: ignore[attr-defined]
                return
            parts.setdefault(what, {}).setdefault(name, []).append(value)

        return fn

    for name, m in model.named_modules():
        if isinstance(m, ActivationModule):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    out.meta_acon_beta = {k: torch.cat(v) for k, v in parts.get("meta_acon_beta", {}).items()}
    out.aprelu_alpha = {k: torch.cat(v) for k, v in parts.get("aprelu_alpha", {}).items()}
    out.dy_relu_pieces = {k: (torch.cat([a for a, _ in v]), torch.cat([b for _, b in v]))
                          for k, v in parts.get("dy_relu_pieces", {}).items()}
    out.frelu_share = {k: torch.cat(v) for k, v in parts.get("frelu_share", {}).items()}
    return out


def plot_dy_relu_pieces(a: torch.Tensor, b: torch.Tensor, path: str | Path, samples: int = 4,
                        layer: str = "") -> Path:
    """DY-ReLU's generated pieces for a few samples: each piece's slope a_k and intercept b_k over
    channels (one box per sample and piece); 1 and 0 mark ReLU's."""
    plt = pyplot()
    n, k = min(samples, len(a)), a.shape[-1]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * n * k, 4.5))
    for ax, values, what, ref in ((axes[0], a, "slope a_k", 1.0), (axes[1], b, "intercept b_k", 0.0)):
        data = [values[i, :, j].numpy() for i in range(n) for j in range(k)]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(data) + 1), [f"s{i} k{j + 1}" for i in range(n) for j in range(k)],
                      rotation=30)
        ax.axhline(ref, color="k", ls=":", lw=1)
        ax.set(xlabel="sample, piece", ylabel=f"{what} over channels")
    fig.suptitle(f"DY-ReLU pieces per sample {layer}".strip())
    return save_figure(fig, path)


def plot_frelu_share(share: torch.Tensor, path: str | Path, layer: str = "") -> Path:
    """Per channel, the share of elements where FReLU's spatial condition T(x) wins over x (mean
    over the data set, and its spread over samples)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * share.shape[1] + 2), 4.5))
    ax.boxplot(list(share.T.numpy()), showfliers=False)
    ax.set(xlabel="channel", ylabel="share of elements where T(x) > x",
           title=f"FReLU: where the funnel condition wins {layer}".strip())
    ax.set_ylim(0, 1)
    return save_figure(fig, path)


def plot_meta_acon_beta(beta: torch.Tensor, path: str | Path, samples: int = 4,
                        acon_beta: torch.Tensor | None = None,
                        layer: str = "", seed: int = 0) -> Path:
    """Distribution over channels of the beta Meta-ACON generates for a few random samples of one
    layer, beside ACON-C's fixed beta (its learned per-channel values, or 1, its initial value)."""
    plt = pyplot()
    idx = sorted(random.Random(seed).sample(range(len(beta)), min(samples, len(beta))))
    data = [beta[i].numpy() for i in idx]
    labels = [f"sample {i}" for i in idx]
    ref = acon_beta.detach().flatten().float().numpy() if acon_beta is not None else None
    fig, ax = plt.subplots(figsize=(1.6 * (len(data) + 1) + 2, 4.5))
    ax.violinplot(data, showmedians=True)
    if ref is not None:
        ax.violinplot([ref], positions=[len(data) + 1], showmedians=True)
        labels.append("ACON-C (learned, fixed)")
    else:
        ax.axhline(1.0, color="k", ls="--", lw=1, label="ACON-C fixed beta = 1 (init)")
        ax.legend(fontsize=8)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
    ax.set_xlabel("input sample")
    ax.set_ylabel("beta over channels")
    ax.set_title(f"Meta-ACON-C switching factor per sample {layer}".strip())
    return save_figure(fig, path)


def plot_aprelu_alpha(alpha: torch.Tensor, path: str | Path, samples: int = 16, layer: str = "") -> Path:
    """Per-sample APReLU slopes: a (sample x channel) heat map of alpha, and its spread per sample."""
    plt = pyplot()
    a = alpha[:samples].numpy()
    fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    im = ax_h.imshow(a, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax_h.set(xlabel="channel", ylabel="input sample", title=f"APReLU alpha {layer}".strip())
    fig.colorbar(im, ax=ax_h, label="alpha")
    ax_b.boxplot(list(a), showfliers=False)
    ax_b.set(xlabel="input sample", ylabel="alpha over channels", title="spread of alpha per sample")
    return save_figure(fig, path)


def plot_arelu_maps(inputs: torch.Tensor, pre: torch.Tensor, post: torch.Tensor, path: str | Path,
                    samples: int = 3, channels: int = 4, layer: str = "") -> Path:
    """For a few test images: the image, then AReLU's pre- and post-activation maps of a few channels.
    1-D signals are drawn as curves."""
    plt = pyplot()
    n, c = min(samples, len(pre)), min(channels, pre.shape[1])
    fig, axes = plt.subplots(n, 1 + 2 * c, figsize=(2 * (1 + 2 * c), 2.1 * n), squeeze=False)
    for i in range(n):
        panels = [("input", inputs[i, 0])] + [(f"pre ch{j}", pre[i, j]) for j in range(c)] + [
            (f"post ch{j}", post[i, j]) for j in range(c)]
        for ax, (title, img) in zip(axes[i], panels):
            if img.ndim == 2:
                ax.imshow(img.numpy(), cmap="coolwarm" if title != "input" else "gray")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.plot(img.numpy())
            ax.set_xlabel(title, fontsize=8)
            ax.set_ylabel(f"sample {i}", fontsize=8)
    fig.suptitle(f"AReLU pre- and post-activation feature maps {layer}".strip())
    return save_figure(fig, path)


def acon_reference_beta(model: nn.Module) -> torch.Tensor | None:
    """The learned per-channel beta of the first ACON-C layer in ``model`` (None if there is none)."""
    for m in model.modules():
        if isinstance(m, AconC):
            return m.beta.detach()
    return None
