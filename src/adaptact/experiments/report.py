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

Language models are measured by loss instead (``LOSS``: nats per character, lower is better): the
test loss at the evaluation with the lowest validation loss, with the same ranks, paired
differences and summary, worded for a loss ("lowers the test loss by ...").
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..registry import spec
from ..files import StagedFiles, remove_stale_temporaries
from .language import NATS_PER_BIT
from .stats import Difference, paired_difference

__all__ = ["ACCURACY", "GROUPS", "LOSS", "Measure", "aggregate", "differences", "markdown_table",
           "measure_of", "ranks", "usable", "write_report"]

GROUPS = (("classic", "Non-learnable"), ("learnable", "Learnable"), ("adaptive", "Adaptive"))
CSV_COLUMNS = ("dataset", "model", "activation", "family", "policy", "optimizer", "lr", "seed", "epochs",
               "batch_size", "device", "protocol", "scale", "loss", "validation", "status", "first_epoch_acc",
               "best_epoch", "best_acc", "last_acc", "wall_time", "epoch_time", "activation_params",
               "peak_memory", "backend", "error", "key", "metric", "iters", "first_loss", "best_loss",
               "last_loss", "iter_time", "saved_memory", "source", "start_activation", "init", "source_acc",
               "converted_acc", "source_loss", "converted_loss")
Cell = tuple[str, str, float]  # (activation, optimizer, lr)


@dataclass(frozen=True)
class Measure:
    """How a kind of run is measured: the row's fields for the selected, first and last
    evaluation and the curve; ``scale`` from the stored value to the table's unit; the wording."""

    first: str
    best: str
    last: str
    curve: str
    scale: float
    unit: str  # of a difference: "points", "nats"
    label: str  # what a cell holds
    lower_is_better: bool
    better: str  # the summary's verbs
    worse: str


ACCURACY = Measure("first_epoch_acc", "best_acc", "last_acc", "test_acc", 100.0, "points",
                   "test accuracy (%)", False, "beats", "trails")
LOSS = Measure("first_loss", "best_loss", "last_loss", "test_loss", 1.0, "nats per character",
               "test loss (nats per character)", True, "lowers the test loss of", "raises the test loss of")


def measure_of(row: Mapping) -> Measure:
    return LOSS if row.get("metric") == "loss" else ACCURACY


def usable(row: dict) -> bool:
    """A run that finished with finite measures: the only kind reported in the tables."""
    m = measure_of(row)
    try:
        values = [row[m.first], row[m.best], *row[m.curve]]
        return (row.get("status", "ok") == "ok" and bool(row[m.curve])
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


def aggregate(rows: Sequence[dict], metric: str,
              scale: float = 100.0) -> dict[Cell, tuple[float, float, int]]:
    """(activation, optimizer, lr) -> (mean, std, seeds) of ``scale`` * ``metric`` over seeds
    (sample std; accuracies in %)."""
    groups: dict[Cell, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["activation"], r["optimizer"], r["lr"])].append(scale * r[metric])
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


def differences(rows: Sequence[dict], metric: str, baseline: str,
                scale: float = 100.0) -> dict[Cell, Difference]:
    """Per cell, the difference of ``scale`` * ``metric`` (points of % for accuracies) to
    ``baseline`` in the same column, paired by seed."""
    by_cell: dict[Cell, dict[int, float]] = defaultdict(dict)
    for r in rows:
        by_cell[(r["activation"], r["optimizer"], r["lr"])][r["seed"]] = scale * r[metric]
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


def _diff_text(d: Difference, digits: int = 2) -> str:
    if math.isnan(d.half_width):
        return f"{d.mean:+.{digits}f} (1 seed)"
    interval = f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
    return interval + ("*" if d.excludes_zero else "")


def markdown_table(rows: Sequence[dict], metric: str, error: bool = False,
                   baseline: str | None = None, measure: Measure = ACCURACY) -> str:
    """The table of ``metric``: mean ± std (rank) per cell, best of each column in bold; with
    ``error`` cells are top-1 error (100 - accuracy), best = lowest. With ``baseline``, a second
    line per table gives the paired differences to it (``differences``; * where the 95% interval
    excludes 0). ``measure``: the scale and direction (``LOSS``: as stored, lowest best, 3
    decimals)."""
    stats = aggregate(rows, metric, measure.scale)
    if error:
        stats = {k: (100.0 - mean, std, n) for k, (mean, std, n) in stats.items()}
    rank = ranks(stats, lower_is_better=error or measure.lower_is_better)
    diffs = differences(rows, metric, baseline, measure.scale) if baseline else {}
    digits = 3 if measure.lower_is_better else 2
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
                cell = f"{mean:.{digits}f} ± {std:.{digits}f} ({rank[(a, *c)]})"
                if (a, *c) in diffs:
                    cell += f"<br>Δ {_diff_text(diffs[(a, *c)], digits)}"
                cells.append(f"**{cell}**" if rank[(a, *c)] == 1 else cell)
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary(rows: Sequence[dict], baseline: str, metric: str, measure: Measure = ACCURACY) -> list[str]:
    """One line per activation: where its paired 95% interval against ``baseline`` lies above or
    below 0 (better or worse by ``measure``'s direction), and by how much on average there."""
    diffs = differences(rows, metric, baseline, measure.scale)
    settings = len(_columns(rows))
    digits = 3 if measure.lower_is_better else 2
    sign = -1 if measure.lower_is_better else 1
    lines = []
    for a in sorted({cell[0] for cell in diffs}):
        mine = [d for cell, d in diffs.items() if cell[0] == a]
        wins = [d for d in mine if d.excludes_zero and sign * d.mean > 0]
        losses = [d for d in mine if d.excludes_zero and sign * d.mean < 0]
        for ds, verb in ((wins, measure.better), (losses, measure.worse)):
            if ds:
                mean = statistics.fmean(d.mean for d in ds)  # signed points of accuracy; a loss's size
                by = f"{abs(mean):.{digits}f}" if measure.lower_is_better else f"{mean:+.{digits}f}"
                half = statistics.fmean(d.half_width for d in ds)
                lines.append(f"- {a} {verb} {baseline} by {by} ± {half:.{digits}f} {measure.unit} in "
                             f"{len(ds)} of {settings} settings")
        if not wins and not losses:
            lines.append(f"- {a}: no difference to {baseline} that the seeds can tell "
                         f"({len(mine)} of {settings} settings compared)")
    return lines


def _conversions(rows: Sequence[dict], source: str) -> list[str]:
    """For networks converted from another activation before fine-tuning: the pretrained network's
    test accuracy (a language model's test loss) on ``source`` before and after the conversion,
    before any step (how much of its function the conversion keeps), mean ± std over seeds."""
    measure = measure_of(rows[0]) if rows else ACCURACY
    language = measure is LOSS
    before_field, after_field = ("source_loss", "converted_loss") if language else ("source_acc",
                                                                                    "converted_acc")
    converted = [r for r in rows if r.get(after_field, -1) >= 0]
    if not converted:
        return []
    seeds: dict[str, dict[int, dict]] = defaultdict(dict)  # the runs of each seed start alike: one each
    for r in converted:
        seeds[r["activation"]][r["seed"]] = r
    scale, digits = measure.scale, 3 if measure.lower_is_better else 2  # as markdown_table shows them

    def cell(values: list[float], sign: str = "") -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{scale * statistics.fmean(values):{sign}.{digits}f} ± {scale * std:.{digits}f}"

    head = "the same head" if language else "its head is the source's"
    lines = [f"### The conversion before the first step: {measure.label} on {source}", "",
             f"The pretrained network, then the same network with its activations replaced ({head}).", "",
             "| activation | pretrained | converted | change |", "|---|---|---|---|"]
    for a, by_seed in sorted(seeds.items()):
        rs = list(by_seed.values())
        change = [r[after_field] - r[before_field] for r in rs]
        before, after = cell([r[before_field] for r in rs]), cell([r[after_field] for r in rs])
        lines.append(f"| {a} | {before} | {after} | {cell(change, '+')} |")
    return lines + [""]


def _mib(values: Sequence[int]) -> str:
    top = max(values)
    return f"{top / 2**20:.1f}" if top >= 0 else "-"


def _costs(rows: Sequence[dict]) -> str:
    """Time per epoch (or per iteration, in ms, for runs by iterations), parameters the activation
    adds, the bytes one training step saves for its backward, peak memory (CUDA) and the backend its
    adaptive modules ran (``train.run``'s ``backend``: a fallback shows here), per activation."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["activation"]].append(r)
    iterations = any(r.get("iters") for r in rows)
    time_label = "time per iteration (ms)" if iterations else "time per epoch (s)"
    lines = [f"| activation | {time_label} | activation parameters | saved for backward (MiB) | "
             "peak memory (MiB) | backend |", "|---|---|---|---|---|---|"]
    for a, rs in sorted(by.items()):
        if iterations:
            time_text = f"{1000 * statistics.fmean(r['iter_time'] for r in rs):.3g}"
        else:
            epoch = statistics.fmean(r.get("epoch_time") or r["wall_time"] / max(1, len(r["test_acc"]))
                                     for r in rs)
            time_text = f"{epoch:.3g}"
        params = max(r.get("activation_params", -1) for r in rs)
        ran = Counter(r.get("backend") or "-" for r in rs)  # "-": no adaptive module, or a row from before
        backend = ", ".join(b if len(ran) == 1 else f"{b} ({n})" for b, n in sorted(ran.items()))
        lines.append(f"| {a} | {time_text} | {params if params >= 0 else '-'} | "
                     f"{_mib([r.get('saved_memory', -1) for r in rs])} | "
                     f"{_mib([r.get('peak_memory', -1) for r in rs])} | {backend} |")
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

    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols) + 2.5, 4), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    styles = ("-", "--", ":", "-.")
    for ax, c in zip(axes[0], cols):
        for i, a in enumerate(names):  # colour and line style together tell up to 40 curves apart
            mine = [r for r in rows if (r["activation"], r["optimizer"], r["lr"]) == (a, *c)]
            if mine:
                mean = m.scale * np.mean(np.array([r[m.curve] for r in mine]), axis=0)
                steps = mine[0].get("evals") or range(1, len(mean) + 1)
                ax.plot(steps, mean, label=a, color=colours(i % 10),
                        linestyle=styles[(i // 10) % len(styles)])
        ax.set_title(f"{c[0].upper()} lr={c[1]:g}")
        ax.set_xlabel(unit)
        ax.set_ylabel(f"{m.label}, mean over seeds")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    paths.append(stage.add(out / f"{stem}curves.png",
                           lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight")))
    plt.close(fig)
    return paths


def write_report(rows: Sequence[dict], out_dir: str | Path, plots: bool = True, baseline: str | None = None,
                 setup: Mapping[str, object] | None = None) -> list[Path]:
    """Write report.md, runs.csv and (with matplotlib) heatmap and learning-curve PNGs per
    (dataset, model, epochs, batch size, protocol) found in ``rows``. Returns the files written.

    ``baseline``: the activation the others are compared with (skipped where it has no runs; None:
    relu where it ran, else gelu, and gelu for language models);
    ``setup``: lines for the setup block (data sizes, command, machine, ...).

    Only runs with finite accuracies are reported as accuracies; diverged and failed ones are
    listed apart. File names are made of plain characters whatever the database holds, so
    everything stays in ``out_dir``. Every file is rendered under a temporary name first; only
    when all are complete are they renamed into place, report.md last: a writer killed while
    rendering leaves the previous report as it was."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # of a writer killed before
    rows = [{**r, "activation": label(r)} for r in rows]
    with StagedFiles() as stage:
        written = _stage_report(rows, out, plots, baseline, setup or {}, stage)
        stage.commit()
    return written


def label(row: Mapping) -> str:
    """The row's name in the tables: its activation, with the policy that placed it where that is
    not "all" ("meta_acon_c (resnet_after_3x3)") and, for a network converted from another
    activation before fine-tuning, where from and how ("acon_c (from relu, init match)")."""
    name = row["activation"]
    if row.get("policy", "all") != "all":
        name += f" ({row['policy']})"
    if row.get("init"):
        name += f" (from {row['start_activation']}, init {row['init']})"
    return name


def _language_sections(group: Sequence[dict], base: str | None, source: str = "") -> list[str]:
    """A language model's tables: the test loss where the validation loss is lowest (with the
    paired differences to ``base``), that lowest validation loss, the same test loss in bits per
    character, the last evaluation's, and the costs; fine-tuned from ``source``, also the first
    evaluation's (paired to ``base``) and the conversions (``_conversions``)."""
    seeds = max(n for _, _, n in aggregate(group, "best_loss", 1.0).values())
    val = [{**r, "best_val_loss": r["val_loss"][r["best_epoch"] - 1]} for r in group]
    bits = LOSS.scale / NATS_PER_BIT
    return [f"Up to {seeds} seeds per cell. Loss in nats per character (lower is better); bits per character "
            "= nats / ln 2.", "",
            "### Test loss at the evaluation with the lowest validation loss", "",
            markdown_table(group, "best_loss", baseline=base, measure=LOSS),
            "### Lowest validation loss", "", markdown_table(val, "best_val_loss", measure=LOSS),
            "### Test bits per character at that evaluation", "",
            markdown_table(group, "best_loss", measure=dataclasses.replace(LOSS, scale=bits)),
            "### Test loss at the last evaluation", "", markdown_table(group, "last_loss", measure=LOSS),
            *(["### Test loss at the first evaluation", "",
               markdown_table(group, "first_loss", baseline=base, measure=LOSS), *_conversions(group, source)]
              if source else []),
            "### Costs", "", _costs(group)]


def _stage_report(rows: Sequence[dict], out: Path, plots: bool, baseline: str | None,
                  setup: Mapping[str, object], stage: StagedFiles) -> list[Path]:
    written = [stage.add(out / "runs.csv", lambda p: _write_csv(rows, p))]
    setups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        held = r.get("validation", 0.1) if r.get("protocol", 1) >= 2 else 0.0
        setups[(r["dataset"], r["model"], r["epochs"], r["batch_size"], r.get("protocol", 1), held,
                r.get("iters", 0), r.get("source", ""))].append(r)
    measures = {measure_of(r) for r in rows}
    what = " or ".join(m.label for m in (ACCURACY, LOSS) if m in measures) or ACCURACY.label
    md = ["# Activation comparison", "",
          (f"{what[0].upper()}{what[1:]}, mean ± std over seeds, (rank in the column); best of each column "
           "in bold. Δ: mean difference to the baseline, paired by seed, [95% interval], * where it "
           "excludes 0. Rebuild with `adaptact report --db DB --out DIR`."), ""]
    if setup:
        md += ["## Setup", ""] + [f"- {k}: {v}" for k, v in setup.items()] + [""]
    body: list[str] = []
    summary: list[str] = []
    for (dataset, model, epochs, batch, protocol, held, iters, source), rows_ in sorted(
            setups.items(), key=lambda kv: str(kv[0])):
        length = f"{iters} iterations" if iters else f"{epochs} epochs"
        kind = f"i{iters}" if iters else f"e{epochs}"
        origin = f"from-{source}-" if source else ""
        stem = _file_stem(f"{dataset}-{model}-{kind}-{origin}") if len(setups) > 1 else ""
        group = [r for r in rows_ if usable(r)]
        failed = [r for r in rows_ if not usable(r)]
        language = measure_of(rows_[0]) is LOSS
        title = f"{dataset}, {model}, batch {batch}, {length}"
        title += "" if held or language else ", no validation split"
        title += f", fine-tuned from {source}" if source else ""
        body += [f"## {title}", ""]
        present = {r["activation"] for r in group}
        chosen = baseline if baseline is not None else (
            "relu" if "relu" in present and not language else "gelu")  # transformers: against GELU
        base = chosen if chosen in present else None
        if group and language:
            body += _language_sections(group, base, source)
            if base:
                summary += [f"**{title}** (against {base}, test loss at the evaluation with the lowest "
                            "validation loss):", "", *_summary(group, base, "best_loss", LOSS), ""]
        elif group:
            seeds = max(n for _, _, n in aggregate(group, "best_acc").values())
            point = "evaluation" if iters else "epoch"  # what the accuracies are measured after
            if held:
                best = (f"### Test accuracy at the {point} with the best validation accuracy "
                        f"({100 * held:g}% of the training set held out)")
            else:
                best = (f"### Best test accuracy over {length} (the papers' measure: the {point} is "
                        f"selected on the test set, so it flatters every activation; the last {point}'s "
                        "below is not selected)")
            body += [f"Up to {seeds} seeds per cell.", "", best, "",
                     markdown_table(group, "best_acc", baseline=base),
                     f"### Test accuracy after the first {point}", "",
                     markdown_table(group, "first_epoch_acc")]
            if protocol >= 2:
                body += [f"### Test accuracy after the last {point}", "", markdown_table(group, "last_acc")]
            if not str(model).startswith(("conv", "linear", "vit")):  # ImageNet-style: the ACON paper's error
                body += [f"### Top-1 error (%) at the selected {point}", "",
                         markdown_table(group, "best_acc", True)]
            body += _conversions(group, source)
            body += ["### Costs", "", _costs(group)]
            lines = _summary(group, base, "best_acc") if base else []
            if lines:
                measure = (f"test accuracy at the selected {point}" if held
                           else f"best test accuracy over the {point}s")
                summary += [f"**{title}** (against {base}, {measure}):", "", *lines, ""]
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
