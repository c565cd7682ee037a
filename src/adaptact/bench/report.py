"""The comparison report: Markdown tables in the AReLU paper's layout, PNG figures and a CSV.

Rows are activations grouped as non-learnable / learnable / adaptive; columns are optimizer x
learning rate; cells are test accuracy (%) mean +- std over seeds, best of each column in bold.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..registry import spec
from .files import StagedFiles, remove_stale_temporaries

__all__ = ["GROUPS", "aggregate", "markdown_table", "write_report"]

GROUPS = (("classic", "Non-learnable"), ("learnable", "Learnable"), ("adaptive", "Adaptive"))
CSV_COLUMNS = ("dataset", "model", "activation", "family", "policy", "optimizer", "lr", "seed", "epochs",
               "batch_size", "first_epoch_acc", "best_acc", "final_acc", "wall_time", "diverged", "key")


def usable(row: dict) -> bool:
    """A run that finished with finite accuracies: the only kind reported as accuracies."""
    try:
        values = [row["first_epoch_acc"], row["best_acc"], *row["test_acc"]]
        return not row.get("diverged") and bool(row["test_acc"]) and all(math.isfinite(v) for v in values)
    except (TypeError, KeyError):
        return False


def _file_stem(text: str) -> str:
    """``text`` as a plain file name part: letters, digits and ``._+-`` only, no leading dot, so
    names taken from a database can never point outside the report folder."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip(".")[:120] or "_"


def _family(name: str) -> str:
    try:
        return spec(name.split(" ")[0]).family  # "meta_acon_c (resnet_after_3x3)" -> meta_acon_c
    except ValueError:
        return "classic"


def aggregate(rows: Sequence[dict], metric: str) -> dict[tuple[str, str, float], tuple[float, float, int]]:
    """(activation, optimizer, lr) -> (mean %, std %, seeds) of ``metric`` over seeds (sample std)."""
    groups: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["activation"], r["optimizer"], r["lr"])].append(100.0 * r[metric])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def _columns(rows: Sequence[dict]) -> list[tuple[str, float]]:
    return sorted({(r["optimizer"], r["lr"]) for r in rows}, key=lambda c: (c[0], -c[1]))


def _activations(rows: Sequence[dict]) -> list[tuple[str, list[str]]]:
    names = sorted({r["activation"] for r in rows})
    return [(title, [n for n in names if _family(n) == fam]) for fam, title in GROUPS]


def markdown_table(rows: Sequence[dict], metric: str, error: bool = False) -> str:
    """The table of ``metric``; with ``error`` cells are top-1 error (100 - accuracy), best = lowest."""
    stats = aggregate(rows, metric)
    if error:
        stats = {k: (100.0 - mean, std, n) for k, (mean, std, n) in stats.items()}
    pick = min if error else max
    cols = _columns(rows)
    names = {r["activation"] for r in rows}
    best = {c: pick(stats[(a, *c)][0] for a in names if (a, *c) in stats) for c in cols}
    header = "| activation | " + " | ".join(f"{o.upper()} lr={lr:g}" for o, lr in cols) + " |"
    lines = [header, "|---|" + "---|" * len(cols)]
    for title, names in _activations(rows):
        if not names:
            continue
        lines.append(f"| *{title}* |" + " |" * len(cols))
        for a in names:
            cells = []
            for c in cols:
                if (a, *c) not in stats:
                    cells.append("—")
                    continue
                mean, std, _ = stats[(a, *c)]
                cell = f"{mean:.2f} ± {std:.2f}"
                cells.append(f"**{cell}**" if mean == best[c] else cell)
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            ok = usable(r)
            w.writerow({**{c: r.get(c) for c in CSV_COLUMNS}, "family": _family(r["activation"]),
                        "first_epoch_acc": r["first_epoch_acc"] if ok else "",
                        "best_acc": r["best_acc"] if ok else "", "final_acc": r["test_acc"][-1] if ok else "",
                        "diverged": int(not ok)})


def _failed_runs(rows: Sequence[dict]) -> str:
    """Runs that diverged (or hold non-finite numbers), counted per cell: never shown as accuracies."""
    counts: dict[tuple, int] = defaultdict(int)
    for r in rows:
        counts[(r["activation"], r["optimizer"], r["lr"])] += 1
    lines = ["| activation | optimizer | lr | diverged runs |", "|---|---|---|---|"]
    lines += [f"| {a} | {o} | {lr:g} | {n} |" for (a, o, lr), n in sorted(counts.items())]
    return "\n".join(lines) + "\n"


def _plots(rows: Sequence[dict], out: Path, stem: str, stage: StagedFiles) -> list[Path]:
    import numpy as np

    from ..analysis.plots import pyplot

    plt = pyplot()

    cols = _columns(rows)
    names = [n for _, group in _activations(rows) for n in group]
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(2 * (4.5 + 1.3 * len(cols)), 0.35 * len(names) + 2.2),
                             squeeze=False)
    for ax, (metric, title) in zip(axes[0], (("first_epoch_acc", "first epoch"), ("best_acc", "best epoch"))):
        stats = aggregate(rows, metric)
        grid = np.array([[stats.get((a, *c), (np.nan,))[0] for c in cols] for a in names])
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
        ax.set_xticks(range(len(cols)), [f"{o} {lr:g}" for o, lr in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("optimizer, learning rate")
        ax.set_ylabel("activation")
        ax.set_title(f"test accuracy (%), {title}")
        for i in range(len(names)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(stage.add(out / f"{stem}heatmap.png", lambda p: fig.savefig(p, dpi=110, format="png")))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 4), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, c in zip(axes[0], cols):
        for i, a in enumerate(names):
            curves = [r["test_acc"] for r in rows if (r["activation"], r["optimizer"], r["lr"]) == (a, *c)]
            if curves:
                mean = 100 * np.mean(np.array(curves), axis=0)
                ax.plot(range(1, len(mean) + 1), mean, label=a, color=cmap(i % 20),
                        linestyle="-" if _family(a) == "adaptive" else "--")
        ax.set_title(f"{c[0].upper()} lr={c[1]:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%), mean over seeds")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    paths.append(stage.add(out / f"{stem}curves.png", lambda p: fig.savefig(p, dpi=110, format="png")))
    plt.close(fig)
    return paths


def write_report(rows: Sequence[dict], out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.md, runs.csv and (with matplotlib) heatmap and learning-curve PNGs per
    (dataset, model, epochs, batch size) found in ``rows``. Returns the files written.

    Only runs with finite accuracies are reported as accuracies; diverged ones are counted apart.
    File names are made of plain characters whatever the database holds, so everything stays in
    ``out_dir``. Every file is rendered under a temporary name first; only when all are complete
    are they renamed into place, report.md last: a writer killed while rendering leaves the
    previous report as it was."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # of a writer killed before
    # an activation put in with a policy other than "all" is its own row: "meta_acon_c (resnet_after_3x3)"
    rows = [r if r.get("policy", "all") == "all"
            else {**r, "activation": f"{r['activation']} ({r['policy']})"}
            for r in rows]
    with StagedFiles() as stage:
        written = _stage_report(rows, out, plots, stage)
        stage.commit()
    return written


def _stage_report(rows: Sequence[dict], out: Path, plots: bool, stage: StagedFiles) -> list[Path]:
    written = [stage.add(out / "runs.csv", lambda p: _write_csv(rows, p))]
    setups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        setups[(r["dataset"], r["model"], r["epochs"], r["batch_size"])].append(r)
    md = ["# Activation comparison", "",
          ("Test accuracy (%), mean ± std over seeds; best of each column in bold. "
           "Rebuild with `adaptact report --db DB --out DIR`."), ""]
    for (dataset, model, epochs, batch), setup in sorted(setups.items(), key=lambda kv: str(kv[0])):
        stem = _file_stem(f"{dataset}-{model}-e{epochs}-") if len(setups) > 1 else ""
        group = [r for r in setup if usable(r)]
        failed = [r for r in setup if not usable(r)]
        md += [f"## {dataset}, {model}, batch {batch}, {epochs} epochs", ""]
        if group:
            seeds = max(n for _, _, n in aggregate(group, "best_acc").values())
            md += [f"Up to {seeds} seeds per cell.", "",
                   "### Test accuracy after the first epoch", "", markdown_table(group, "first_epoch_acc"),
                   f"### Best test accuracy over {epochs} epochs", "", markdown_table(group, "best_acc")]
            if not str(model).startswith(("conv", "linear")):  # ImageNet-style: the ACON paper's error
                md += [f"### Top-1 error (%) at the best of {epochs} epochs", "",
                       markdown_table(group, "best_acc", True)]
        if failed:
            md += ["### Diverged runs (not in the tables above)", "", _failed_runs(failed)]
        if plots and group:
            for p in _plots(group, out, stem, stage):
                written.append(p)
                md += [f"![{p.stem}]({p.name})", ""]
    written.insert(0, stage.add(out / "report.md", lambda p: p.write_text("\n".join(md))))
    return written
