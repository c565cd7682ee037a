"""The comparison report's figures: per setup, heatmaps of the first and the selected measure,
the learning curves (the baseline and the verdict's best in colour, the rest faded) and the
forest plot of the verdict's differences with their corrected intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..files import StagedFiles
from .cells import Measure, aggregate, columns, grouped, measure_of, setting_text
from .verdict import BETTER, WORSE, Comparison

__all__ = ["HIGHLIGHTED", "plots"]

HIGHLIGHTED = 6  # activations drawn in colour in the learning curves, beside the baseline


def plots(rows: Sequence[dict], out: Path, stem: str, stage: StagedFiles,
          comparisons: Sequence[Comparison] = (), baseline: str | None = None) -> list[Path]:
    """The heatmaps of the first and selected measures, the learning curves (the baseline and the
    ``HIGHLIGHTED`` best of the verdict in colour, the rest faded) and, with a verdict, the forest
    plot of its differences."""
    import numpy as np

    from ..analysis.plots import pyplot

    plt = pyplot()

    cols = columns(rows)
    names = [n for _, group in grouped(rows) for n in group]
    paths = []
    m = measure_of(rows[0])
    unit = "epoch" if not rows[0].get("iters") else "iteration"

    fig, axes = plt.subplots(1, 2, figsize=(2 * (4.5 + 1.3 * len(cols)), 0.35 * len(names) + 2.2),
                             squeeze=False)
    first = "first evaluation" if unit == "iteration" else "first epoch"
    for ax, (metric, title) in zip(axes[0], ((m.first, first), (m.best, "selected"))):
        stats = aggregate(rows, metric, m.scale)
        grid = np.array([[stats.get((a, *c), (np.nan,))[0] for c in cols] for a in names])
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
        ax.set_xticks(range(len(cols)), [f"{o} {lr:g}" for o, lr in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("optimizer, learning rate")
        ax.set_ylabel("activation")
        ax.set_title(f"{m.label}, {title}")
        for i in range(len(names)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.{3 if m.lower_is_better else 1}f}", ha="center", va="center",
                            fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(stage.add(out / f"{stem}heatmap.png", lambda p: fig.savefig(p, dpi=110, format="png")))
    plt.close(fig)

    order = [c.activation for c in comparisons]  # the verdict's ranking, else the first column's
    if not order:
        by_mean = aggregate(rows, m.best, m.scale)
        sign = 1 if m.lower_is_better else -1
        order = sorted(names, key=lambda a: min((sign * v[0] for k, v in by_mean.items() if k[0] == a),
                                                default=math.inf))
    shown = ([baseline] if baseline else []) + [a for a in order if a != baseline][:HIGHLIGHTED]
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols) + 2.5, 4), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    markers = ("o", "s", "^", "D", "v", "P", "X")
    for ax, c in zip(axes[0], cols):
        for a in [n for n in names if n not in shown] + shown[::-1]:  # the highlighted drawn last, on top
            mine = [r for r in rows if (r["activation"], r["optimizer"], r["lr"]) == (a, *c)]
            if not mine:
                continue
            mean = m.scale * np.mean(np.array([r[m.curve] for r in mine]), axis=0)
            steps = mine[0].get("evals") or range(1, len(mean) + 1)
            if a not in shown:
                ax.plot(steps, mean, color="0.75", linewidth=0.8, zorder=1)
                continue
            i = shown.index(a)
            style = ({"color": "black", "linewidth": 2.2, "linestyle": "--"} if a == baseline else
                     {"color": colours(i % 10), "linewidth": 1.6, "marker": markers[i % len(markers)],
                      "markevery": max(1, len(mean) // 8), "markersize": 4})
            ax.plot(steps, mean, label=a, zorder=2, **style)
        ax.set_title(f"{c[0].upper()} lr={c[1]:g}")
        ax.set_xlabel(unit)
        ax.set_ylabel(f"{m.label}, mean over seeds")
        ax.grid(alpha=0.3)
    others = len(names) - len(shown)
    if others > 0:
        axes[0][-1].plot([], [], color="0.75", linewidth=0.8, label=f"the other {others}")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    rank = {a: i for i, a in enumerate(shown)}  # the legend in the verdict's order, the baseline first
    ordered = sorted(zip(handles, labels), key=lambda hl: rank.get(hl[1], len(rank)))
    axes[0][-1].legend(*zip(*ordered), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0)
    fig.tight_layout()
    paths.append(stage.add(out / f"{stem}curves.png",
                           lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight")))
    plt.close(fig)
    if comparisons and baseline:
        paths.append(_forest(plt, comparisons, baseline, m, out / f"{stem}forest.png", stage))
    return paths


def _forest(plt, comparisons: Sequence[Comparison], baseline: str, m: Measure, path: Path,
            stage: StagedFiles) -> Path:
    """Each activation's difference to ``baseline`` at the tuned settings with its corrected
    interval, ranked as the verdict ranks them; coloured by outcome, hollow where a setting had
    not converged."""
    colour = {BETTER: "tab:green", WORSE: "tab:red"}
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(comparisons) + 1.6))
    ends = [x for c in comparisons for x in (c.difference.mean, c.difference.low, c.difference.high)
            if math.isfinite(x)] + [0.0]
    reach = max(ends) - min(ends) or 1.0
    edge = (min(ends) - 0.1 * reach, max(ends) + 0.1 * reach)  # an unbounded interval runs to it, dashed
    for y, c in enumerate(comparisons):
        d = c.difference
        col = colour.get(c.outcome, "0.35")
        if d.pairs >= 2:
            unbounded = math.isinf(d.low) or math.isinf(d.high)
            ax.plot([max(d.low, edge[0]), min(d.high, edge[1])], [y, y], color=col, linewidth=1.8,
                    linestyle="--" if unbounded else "-")
        ax.plot([d.mean], [y], marker="o", markersize=6, color=col,
                markerfacecolor="white" if c.unconverged else col)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(comparisons)),
                  [f"{c.activation} ({setting_text(c.setting)})" for c in comparisons])
    ax.invert_yaxis()
    direction = "; negative is better" if m.lower_is_better else ""
    ax.set_xlabel(f"difference to {baseline} at the tuned settings ({m.unit}{direction})")
    ax.set_title("Holm-corrected intervals; green better, red worse, grey unresolved; hollow: not converged",
                 fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = stage.add(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out
