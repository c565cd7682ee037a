"""The comparison report: Markdown tables in the AReLU paper's layout that also decide, PNG figures
and a CSV.

Rows are activations grouped as non-learnable / learnable / adaptive; columns are optimizer x
learning rate; cells are test accuracy (%) mean ± std over seeds with the rank in the column,
best in bold. "Best" is the test accuracy at the epoch a validation split picks (protocol 2), or,
without a validation split (protocol 1, and ``--protocol arelu`` as the paper), the best test
accuracy over the epochs, a selection on the test set that the report names as such. Against a
baseline activation each cell also gets its mean difference, paired by seed, with a 95% interval,
and a summary at the top counts where an activation beats or trails it. Runs that diverged or
failed are listed apart, never as accuracies.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..registry import spec
from ..files import StagedFiles, remove_stale_temporaries
from .stats import Difference, paired_difference

__all__ = ["GROUPS", "aggregate", "differences", "markdown_table", "ranks", "usable", "write_report"]

GROUPS = (("classic", "Non-learnable"), ("learnable", "Learnable"), ("adaptive", "Adaptive"))
CSV_COLUMNS = ("dataset", "model", "activation", "family", "policy", "optimizer", "lr", "seed", "epochs",
               "batch_size", "device", "protocol", "scale", "loss", "validation", "status", "first_epoch_acc",
               "best_epoch", "best_acc", "last_acc", "wall_time", "epoch_time", "activation_params",
               "peak_memory", "backend", "error", "key")
Cell = tuple[str, str, float]  # (activation, optimizer, lr)


def usable(row: dict) -> bool:
    """A run that finished with finite accuracies: the only kind reported as accuracies."""
    try:
        values = [row["first_epoch_acc"], row["best_acc"], *row["test_acc"]]
        return (row.get("status", "ok") == "ok" and bool(row["test_acc"])
                and all(math.isfinite(v) for v in values))
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


def aggregate(rows: Sequence[dict], metric: str) -> dict[Cell, tuple[float, float, int]]:
    """(activation, optimizer, lr) -> (mean %, std %, seeds) of ``metric`` over seeds (sample std)."""
    groups: dict[Cell, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["activation"], r["optimizer"], r["lr"])].append(100.0 * r[metric])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def ranks(stats: Mapping[Cell, tuple[float, float, int]], lower_is_better: bool = False) -> dict[Cell, int]:
    """Rank of each cell's mean within its column (1 = best; ties share the better rank)."""
    columns: dict[tuple[str, float], list[float]] = defaultdict(list)
    for (_, o, lr), (mean, _, _) in stats.items():
        columns[(o, lr)].append(mean)
    sign = -1 if lower_is_better else 1
    return {cell: 1 + sum(sign * m > sign * mean for m in columns[cell[1:]])
            for cell, (mean, _, _) in stats.items()}


def differences(rows: Sequence[dict], metric: str, baseline: str) -> dict[Cell, Difference]:
    """Per cell, the difference of ``metric`` (points of %) to ``baseline`` in the same column,
    paired by seed."""
    by_cell: dict[Cell, dict[int, float]] = defaultdict(dict)
    for r in rows:
        by_cell[(r["activation"], r["optimizer"], r["lr"])][r["seed"]] = 100.0 * r[metric]
    out = {}
    for (a, o, lr), values in by_cell.items():
        base = by_cell.get((baseline, o, lr))
        if a != baseline and base:
            diff = paired_difference(values, base)
            if diff is not None:
                out[(a, o, lr)] = diff
    return out


def _columns(rows: Sequence[dict]) -> list[tuple[str, float]]:
    return sorted({(r["optimizer"], r["lr"]) for r in rows}, key=lambda c: (c[0], -c[1]))


def _activations(rows: Sequence[dict]) -> list[tuple[str, list[str]]]:
    names = sorted({r["activation"] for r in rows})
    return [(title, [n for n in names if _family(n) == fam]) for fam, title in GROUPS]


def _diff_text(d: Difference) -> str:
    if math.isnan(d.half_width):
        return f"{d.mean:+.2f} (1 seed)"
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" + ("*" if d.excludes_zero else "")


def markdown_table(rows: Sequence[dict], metric: str, error: bool = False,
                   baseline: str | None = None) -> str:
    """The table of ``metric``: mean ± std (rank) per cell, best of each column in bold; with
    ``error`` cells are top-1 error (100 - accuracy), best = lowest. With ``baseline``, a second
    line per table gives the paired differences to it (``differences``; * where the 95% interval
    excludes 0)."""
    stats = aggregate(rows, metric)
    if error:
        stats = {k: (100.0 - mean, std, n) for k, (mean, std, n) in stats.items()}
    rank = ranks(stats, lower_is_better=error)
    diffs = differences(rows, metric, baseline) if baseline else {}
    cols = _columns(rows)
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
                cell = f"{mean:.2f} ± {std:.2f} ({rank[(a, *c)]})"
                if (a, *c) in diffs:
                    cell += f"<br>Δ {_diff_text(diffs[(a, *c)])}"
                cells.append(f"**{cell}**" if rank[(a, *c)] == 1 else cell)
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary(rows: Sequence[dict], baseline: str, metric: str) -> list[str]:
    """One line per activation: where its paired 95% interval against ``baseline`` lies above or
    below 0, and by how much on average there."""
    diffs = differences(rows, metric, baseline)
    settings = len(_columns(rows))
    lines = []
    for a in sorted({cell[0] for cell in diffs}):
        mine = [d for cell, d in diffs.items() if cell[0] == a]
        wins = [d for d in mine if d.excludes_zero and d.mean > 0]
        losses = [d for d in mine if d.excludes_zero and d.mean < 0]
        if wins:
            lines.append(f"- {a} beats {baseline} by {statistics.fmean(d.mean for d in wins):+.2f} ± "
                         f"{statistics.fmean(d.half_width for d in wins):.2f} points in {len(wins)} of "
                         f"{settings} settings")
        if losses:
            lines.append(f"- {a} trails {baseline} by {statistics.fmean(d.mean for d in losses):+.2f} ± "
                         f"{statistics.fmean(d.half_width for d in losses):.2f} points in {len(losses)} of "
                         f"{settings} settings")
        if not wins and not losses:
            lines.append(f"- {a}: no difference to {baseline} that the seeds can tell "
                         f"({len(mine)} of {settings} settings compared)")
    return lines


def _costs(rows: Sequence[dict]) -> str:
    """Time per epoch, parameters the activation adds, peak memory (CUDA) and the backend its
    adaptive modules ran (``train.run``'s ``backend``: a fallback shows here), per activation."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["activation"]].append(r)
    lines = ["| activation | time per epoch (s) | activation parameters | peak memory (MiB) | backend |",
             "|---|---|---|---|---|"]
    for a, rs in sorted(by.items()):
        epoch = statistics.fmean(r.get("epoch_time") or r["wall_time"] / max(1, len(r["test_acc"]))
                                 for r in rs)
        params = max(r.get("activation_params", -1) for r in rs)
        peak = max(r.get("peak_memory", -1) for r in rs)
        ran = Counter(r.get("backend") or "-" for r in rs)  # "-": no adaptive module, or a row from before
        backend = ", ".join(b if len(ran) == 1 else f"{b} ({n})" for b, n in sorted(ran.items()))
        lines.append(f"| {a} | {epoch:.3g} | {params if params >= 0 else '-'} | "
                     f"{f'{peak / 2**20:.1f}' if peak >= 0 else '-'} | {backend} |")
    return "\n".join(lines) + "\n"


def _not_ok(rows: Sequence[dict]) -> str:
    """Runs that diverged or failed (or hold non-finite numbers), with their first error."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["activation"], r["optimizer"], r["lr"], r.get("status", "ok"))].append(r)
    lines = ["| activation | optimizer | lr | status | runs | error |", "|---|---|---|---|---|---|"]
    for (a, o, lr, status), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        error = next((r.get("error") for r in rs if r.get("error")), "")
        error = " ".join(str(error).split()).replace("|", "/")[:160]
        lines.append(f"| {a} | {o} | {lr:g} | {status if status != 'ok' else 'non-finite'} | {len(rs)} | "
                     f"{error} |")
    return "\n".join(lines) + "\n"


_SNR = re.compile(r"bearing-snr([-+0-9.e]+)(?:@sim\d+)?")


def snr_tables(rows: Sequence[dict]) -> list[str]:
    """The APReLU paper's layout for runs on the simulated vibration signals at several SNRs:
    per model, optimizer and lr, activation x SNR, test accuracy (%) mean ± std over seeds (at
    the selected epoch). Empty unless there are such runs at two SNRs or more."""
    by_setup: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        match = _SNR.fullmatch(str(r["dataset"]))
        if match and usable(r):
            by_setup[(r["model"], r["optimizer"], r["lr"], r["epochs"])].append({**r, "snr": float(match[1])})
    lines: list[str] = []
    for (model, optimizer, lr, epochs), group in sorted(by_setup.items(), key=lambda kv: str(kv[0])):
        snrs = sorted({r["snr"] for r in group}, reverse=True)
        if len(snrs) < 2:
            continue
        cells: dict[tuple[str, float], list[float]] = defaultdict(list)
        for r in group:
            cells[(r["activation"], r["snr"])].append(100 * r["best_acc"])
        lines += [f"## Fault diagnosis by SNR: {model}, {optimizer.upper()} lr={lr:g}, {epochs} epochs "
                  "(simulated signals)", "",
                  "| activation | " + " | ".join(f"SNR {v:g} dB" for v in snrs) + " | mean |",
                  "|---|" + "---|" * (len(snrs) + 1)]
        for a in sorted({r["activation"] for r in group}):
            means = []
            texts = []
            for v in snrs:
                values = cells.get((a, v), [])
                if not values:
                    texts.append("—")
                    continue
                means.append(statistics.fmean(values))
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                texts.append(f"{means[-1]:.2f} ± {std:.2f} ({len(values)})")
            overall = f"{statistics.fmean(means):.2f}" if len(means) == len(snrs) else "—"
            lines.append(f"| {a} | " + " | ".join(texts) + f" | {overall} |")
        lines.append("")
    return lines


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            ok = usable(r)
            status = r.get("status", "ok")
            w.writerow({**{c: r.get(c) for c in CSV_COLUMNS}, "family": _family(r["activation"]),
                        "status": "non-finite" if status == "ok" and not ok else status,
                        **({} if ok else {"first_epoch_acc": "", "best_acc": "", "last_acc": ""})})


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

    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols) + 2.5, 4), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    styles = ("-", "--", ":", "-.")
    for ax, c in zip(axes[0], cols):
        for i, a in enumerate(names):  # colour and line style together tell up to 40 curves apart
            curves = [r["test_acc"] for r in rows if (r["activation"], r["optimizer"], r["lr"]) == (a, *c)]
            if curves:
                mean = 100 * np.mean(np.array(curves), axis=0)
                ax.plot(range(1, len(mean) + 1), mean, label=a, color=colours(i % 10),
                        linestyle=styles[(i // 10) % len(styles)])
        ax.set_title(f"{c[0].upper()} lr={c[1]:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%), mean over seeds")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    paths.append(stage.add(out / f"{stem}curves.png",
                           lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight")))
    plt.close(fig)
    return paths


def write_report(rows: Sequence[dict], out_dir: str | Path, plots: bool = True, baseline: str | None = "relu",
                 setup: Mapping[str, object] | None = None) -> list[Path]:
    """Write report.md, runs.csv and (with matplotlib) heatmap and learning-curve PNGs per
    (dataset, model, epochs, batch size, protocol) found in ``rows``. Returns the files written.

    ``baseline``: the activation the others are compared with (skipped where it has no runs);
    ``setup``: lines for the setup block (data sizes, command, machine, ...).

    Only runs with finite accuracies are reported as accuracies; diverged and failed ones are
    listed apart. File names are made of plain characters whatever the database holds, so
    everything stays in ``out_dir``. Every file is rendered under a temporary name first; only
    when all are complete are they renamed into place, report.md last: a writer killed while
    rendering leaves the previous report as it was."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # of a writer killed before
    # an activation put in with a policy other than "all" is its own row: "meta_acon_c (resnet_after_3x3)"
    rows = [r if r.get("policy", "all") == "all"
            else {**r, "activation": f"{r['activation']} ({r['policy']})"}
            for r in rows]
    with StagedFiles() as stage:
        written = _stage_report(rows, out, plots, baseline, setup or {}, stage)
        stage.commit()
    return written


def _stage_report(rows: Sequence[dict], out: Path, plots: bool, baseline: str | None,
                  setup: Mapping[str, object], stage: StagedFiles) -> list[Path]:
    written = [stage.add(out / "runs.csv", lambda p: _write_csv(rows, p))]
    setups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        held = r.get("validation", 0.1) if r.get("protocol", 1) >= 2 else 0.0
        setups[(r["dataset"], r["model"], r["epochs"], r["batch_size"], r.get("protocol", 1), held)].append(r)
    md = ["# Activation comparison", "",
          ("Test accuracy (%), mean ± std over seeds, (rank in the column); best of each column in bold. "
           "Δ: mean difference to the baseline in points, paired by seed, [95% interval], * where it "
           "excludes 0. Rebuild with `adaptact report --db DB --out DIR`."), ""]
    if setup:
        md += ["## Setup", ""] + [f"- {k}: {v}" for k, v in setup.items()] + [""]
    body: list[str] = []
    summary: list[str] = []
    for (dataset, model, epochs, batch, protocol, held), rows_ in sorted(setups.items(),
                                                                        key=lambda kv: str(kv[0])):
        stem = _file_stem(f"{dataset}-{model}-e{epochs}-") if len(setups) > 1 else ""
        group = [r for r in rows_ if usable(r)]
        failed = [r for r in rows_ if not usable(r)]
        title = f"{dataset}, {model}, batch {batch}, {epochs} epochs"
        title += "" if held else ", no validation split"
        body += [f"## {title}", ""]
        base = baseline if baseline in {r["activation"] for r in group} else None
        if group:
            seeds = max(n for _, _, n in aggregate(group, "best_acc").values())
            if held:
                best = ("### Test accuracy at the epoch with the best validation accuracy "
                        f"({100 * held:g}% of the training set held out)")
            else:
                best = (f"### Best test accuracy over {epochs} epochs (the papers' measure: the epoch is "
                        "selected on the test set, so it flatters every activation; the last epoch's below "
                        "is not selected)")
            body += [f"Up to {seeds} seeds per cell.", "", best, "",
                     markdown_table(group, "best_acc", baseline=base),
                     "### Test accuracy after the first epoch", "", markdown_table(group, "first_epoch_acc")]
            if protocol >= 2:
                body += ["### Test accuracy after the last epoch", "", markdown_table(group, "last_acc")]
            if not str(model).startswith(("conv", "linear")):  # ImageNet-style: the ACON paper's error
                body += ["### Top-1 error (%) at the selected epoch", "",
                         markdown_table(group, "best_acc", True)]
            body += ["### Costs", "", _costs(group)]
            if base:
                measure = ("test accuracy at the selected epoch" if held
                           else "best test accuracy over the epochs")
                summary += [f"**{title}** (against {base}, {measure}):", "",
                            *_summary(group, base, "best_acc"), ""]
        dead = sorted({f"{o.upper()} lr={lr:g}" for o, lr in _columns(rows_)} -
                      {f"{o.upper()} lr={lr:g}" for o, lr in _columns(group)})
        if dead:
            body += [f"No activation converged with: {', '.join(dead)}.", ""]
        if failed:
            body += ["### Runs that diverged or failed (not in the tables above)", "", _not_ok(failed)]
        if plots and group:
            for p in _plots(group, out, stem, stage):
                written.append(p)
                body += [f"![{p.stem}]({p.name})", ""]
    if summary:
        md += ["## Summary", "", *summary]
    md += snr_tables(rows)
    md += body
    written.insert(0, stage.add(out / "report.md", lambda p: p.write_text("\n".join(md))))
    return written
