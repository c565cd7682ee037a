"""The comparison report: Markdown tables in the AReLU paper's layout that also decide, PNG figures
and a CSV.

Rows are activations grouped as non-learnable / learnable / adaptive; columns are optimizer x
learning rate; cells are test accuracy (%) mean ± std over seeds with the rank in the column,
best in bold. "Best" is the test accuracy at the epoch a validation split picks (protocol 2), or,
without a validation split (protocol 1, and ``--protocol arelu`` as the paper), the best test
accuracy over the epochs, a selection on the test set that the report names as such. Against a
baseline activation each cell also gets its mean difference, paired by seed, with its interval
corrected over the table (Holm). The Summary at the top is the verdict at tuned settings
(``verdict.py``): each activation at its own best setting against the baseline at its own,
corrected over all comparisons, ranked better / indistinguishable / worse. Runs that diverged or
failed are listed apart, never as accuracies.

Language models are measured by loss instead (``LOSS``: nats per character, lower is better): the
test loss at the evaluation with the lowest validation loss, with the same ranks, paired
differences and verdict.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
import dataclasses
from pathlib import Path

from ..files import StagedFiles, remove_stale_temporaries
from .cells import (ACCURACY, LOSS, Cell, Measure, aggregate, columns, differences, family, grouped,
                    measure_of, ranks, setting_text, usable)
from .language import NATS_PER_BIT
from .protocols import protocol_names
from . import report_figures
from .stats import ALPHA, MAX_SEEDS_NEEDED, POWER, Difference, holm
from .verdict import BETTER, UNTESTED, WORSE, Comparison, selection_basis, still_improving, verdict

__all__ = ["CSV_FIELDS", "baseline_of", "label", "markdown_table", "setups_of", "snr_tables", "verdict_of",
           "write_report"]

# runs.csv: (column, the row's field, its unit's factor from the stored value); names carry units.
_PERCENT, _MIB = 100.0, 1 / 2**20
CSV_FIELDS = (
    ("dataset", "dataset", None), ("model", "model", None), ("activation", "activation", None),
    ("family", "family", None), ("policy", "policy", None), ("optimizer", "optimizer", None),
    ("lr", "lr", None), ("seed", "seed", None), ("epochs", "epochs", None), ("iters", "iters", None),
    ("batch_size", "batch_size", None), ("device", "device", None), ("protocol", "protocol", None),
    ("scale", "scale", None), ("loss", "loss", None), ("validation_percent", "validation", _PERCENT),
    ("status", "status", None), ("metric", "metric", None),
    ("first_acc_percent", "first_epoch_acc", _PERCENT), ("best_epoch", "best_epoch", None),
    ("best_acc_percent", "best_acc", _PERCENT), ("last_acc_percent", "last_acc", _PERCENT),
    ("first_loss_nats", "first_loss", 1.0), ("best_loss_nats", "best_loss", 1.0),
    ("last_loss_nats", "last_loss", 1.0), ("wall_time_s", "wall_time", 1.0),
    ("epoch_time_s", "epoch_time", 1.0), ("iter_time_ms", "iter_time", 1000.0),
    ("activation_params", "activation_params", None), ("saved_memory_mib", "saved_memory", _MIB),
    ("peak_memory_mib", "peak_memory", _MIB), ("backend", "backend", None),
    ("source", "source", None), ("start_activation", "start_activation", None), ("init", "init", None),
    ("source_acc_percent", "source_acc", _PERCENT), ("converted_acc_percent", "converted_acc", _PERCENT),
    ("source_loss_nats", "source_loss", 1.0), ("converted_loss_nats", "converted_loss", 1.0),
    ("training_version", "training_version", None), ("error", "error", None), ("key", "key", None))
CSV_COLUMNS = tuple(name for name, _, _ in CSV_FIELDS)
# the fields a run of the other kind, or a run before the field existed, stores a stand-in in
_ACCURACY_ONLY = ("first_epoch_acc", "best_acc", "last_acc", "source_acc", "converted_acc")
_LOSS_ONLY = ("first_loss", "best_loss", "last_loss", "source_loss", "converted_loss")
_NEGATIVE_IS_MISSING = ("activation_params", "saved_memory", "peak_memory", "source_acc", "converted_acc",
                        "source_loss", "converted_loss")
_ZERO_IS_MISSING = ("iters", "iter_time", "epoch_time")


def _file_stem(text: str) -> str:
    """``text`` as a plain file name part: letters, digits and ``._+-`` only, no leading dot, so
    names taken from a database can never point outside the report folder."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip(".")[:120] or "_"


def _interval_text(d: Difference, digits: int = 2) -> str:
    """"mean [low, high]", an unbounded end as ∞ (``stats._interval``: every seed differing by the
    same amount, too few of them to rule any value out)."""
    def bound(x: float) -> str:
        return ("+∞" if x > 0 else "-∞") if math.isinf(x) else f"{x:+.{digits}f}"

    return f"{d.mean:+.{digits}f} [{bound(d.low)}, {bound(d.high)}]"


def _diff_text(d: Difference, digits: int = 2) -> str:
    if d.pairs < 2:
        return f"{d.mean:+.{digits}f} (1 seed)"
    return _interval_text(d, digits) + ("*" if d.excludes_zero else "")


def markdown_table(rows: Sequence[dict], metric: str, error: bool = False,
                   baseline: str | None = None, measure: Measure = ACCURACY,
                   mark_unconverged: bool = False) -> str:
    """The table of ``metric``: mean ± std (rank) per cell, best of each column in bold; with
    ``error`` cells are top-1 error (100 - accuracy), best = lowest. With ``baseline``, a second
    line per table gives the paired differences to it (``differences``), corrected together by
    Holm's procedure over the table's comparisons, with the interval at the level it tested each at
    (* where the correction rejects: the interval excludes 0). ``measure``: the scale and direction
    (``LOSS``: as stored, lowest best, 3 decimals). ``mark_unconverged``: † on cells still
    improving in the last tenth of training (``verdict.still_improving``)."""
    stats = aggregate(rows, metric, measure.scale)
    by_cell: dict[Cell, list[dict]] = defaultdict(list)
    for r in rows:
        by_cell[(r["activation"], r["optimizer"], r["lr"])].append(r)
    moving = {c for c, rs in by_cell.items() if still_improving(rs)} if mark_unconverged else set()
    if error:
        stats = {k: (100.0 - mean, std, n) for k, (mean, std, n) in stats.items()}
    rank = ranks(stats, lower_is_better=error or measure.lower_is_better)
    diffs = holm(differences(rows, metric, baseline, measure.scale)) if baseline else {}
    digits = 3 if measure.lower_is_better else 2
    cols = columns(rows)
    header = "| activation | " + " | ".join(f"{o.upper()} lr={lr:g}" for o, lr in cols) + " |"
    lines = [header, "|---|" + "---|" * len(cols)]
    for title, names in grouped(rows):
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
                cell += " †" if (a, *c) in moving else ""
                if (a, *c) in diffs:
                    cell += f"<br>Δ {_diff_text(diffs[(a, *c)], digits)}"
                cells.append(f"**{cell}**" if rank[(a, *c)] == 1 else cell)
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seeds_text(c: Comparison) -> str:
    """What would resolve an unresolved comparison."""
    if c.seeds_needed is None:
        return "2 seeds or more to test it" if c.outcome == UNTESTED else "none: no mean difference"
    if c.seeds_needed > MAX_SEEDS_NEEDED:
        return f"more than {MAX_SEEDS_NEEDED}"
    return f"{c.seeds_needed}{SAME_MARK if _same_differences(c) else ''}"


SAME_MARK = " ‡"  # a count of the sign-flip test's, not a power's (``stats.seeds_to_resolve``)


def _same_differences(c: Comparison) -> bool:
    """Every seed differed from the baseline by the same amount (``stats``: the t-test cannot tell)."""
    return c.difference.pairs >= 2 and c.difference.sd == 0 and c.difference.mean != 0


def _verdict_lines(comparisons: Sequence[Comparison], baseline: str, basis: str,
                   measure: Measure) -> list[str]:
    """The ranked verdict of one setup: a sentence per outcome, then the table (``verdict``)."""
    digits = 3 if measure.lower_is_better else 2
    by: dict[str, list[str]] = defaultdict(list)
    for c in comparisons:
        by[c.outcome].append(c.activation)
    tested = sum(c.difference.pairs >= 2 for c in comparisons)
    base_setting = setting_text(comparisons[0].baseline_setting)
    judged = ("the validation split" if basis == "validation"
              else "the last training loss (no validation split)")
    lines = [f"Each activation at its own best setting, chosen by {judged}, against {baseline} at its best "
             f"({base_setting}); paired by seed; Holm-corrected over {tested} "
             f"comparison{'s' if tested != 1 else ''} (family-wise "
             f"{ALPHA:.0%}).", ""]
    if "baseline" in {u for c in comparisons for u in c.unconverged}:
        lines += [f"{baseline}'s own setting was still improving in the last tenth of training: every "
                  "comparison below rests on an unconverged baseline.", ""]
    for outcome, text in ((BETTER, f"Better than {baseline}"), (WORSE, f"Worse than {baseline}")):
        lines.append(f"- {text}: " + (", ".join(by[outcome]) if by[outcome] else "none") + ".")
    unresolved = by["indistinguishable"] + by[UNTESTED]
    if unresolved:
        where = ("the seeds that would resolve each are in the last column" if by["indistinguishable"]
                 else "one seed each")
        lines.append(f"- Not resolved by these seeds: {len(unresolved)} ({where}).")
    shaky = [c.activation for c in comparisons if "activation" in c.unconverged]
    if shaky:
        lines.append("- Resting on a setting still improving at the end of training (†): "
                     f"{', '.join(shaky)}.")
    lines += ["", f"| rank | activation | setting | Δ {measure.unit} [corrected interval] | "
                  f"P(better than {baseline}) [95% interval] | verdict | seeds | "
                  f"seeds to resolve ({POWER:.0%} power) |",
              "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(comparisons, 1):
        d, pi = c.difference, c.improvement
        interval = _interval_text(d, digits) if d.pairs >= 2 else f"{d.mean:+.{digits}f}"
        chance = f"{pi.probability:.2f}" + ("" if math.isnan(pi.low) else f" [{pi.low:.2f}, {pi.high:.2f}]")
        mark = " †" if "activation" in c.unconverged else ""
        resolve = "" if c.outcome in (BETTER, WORSE) else _seeds_text(c)
        lines.append(f"| {i} | {c.activation} | {setting_text(c.setting)}{mark} | {interval} | {chance} | "
                     f"{c.outcome} | {d.pairs} | {resolve} |")
    lower = ", negative is lower" if measure.lower_is_better else ""
    lines += ["", f"Δ: mean difference to {baseline} over the seeds both ran (in {measure.unit}{lower}); "
                  "the interval is the paired t interval at the level Holm's procedure tested it at, so it "
                  "excludes 0 exactly where the verdict is better or worse. P: the chance that a run of the "
                  f"activation is better than a run of {baseline} (rliable's probability of improvement), "
                  "with Newcombe's score interval, which stays wide where a few seeds all beat the baseline. "
                  f"Seeds to resolve: per activation and baseline, for {POWER:.0%} power against the "
                  "observed difference at the strictest corrected level; `adaptact compare --extra-runs N` "
                  "adds them."
                  + (f" {SAME_MARK.strip()}: every seed differed by the same amount, where the t-test cannot "
                     "tell; the count at which the exact sign-flip test could decide, should the seeds "
                     "added keep to it." if any(_same_differences(c) and c.outcome not in (BETTER, WORSE)
                                               for c in comparisons) else ""),
              ""]
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


def _costs(rows: Sequence[dict], baseline: str | None = None) -> str:
    """Time per training step (ms; the median of each run's after its first two, which run eagerly
    and compile; a run's wall time per epoch where the rows predate it) with its ratio to
    ``baseline``'s, parameters the activation adds, the bytes one training step saves for its
    backward, peak memory (CUDA's allocator; not measured on the CPU) and the backend its adaptive
    modules ran (``train.run``'s ``backend``: a fallback shows here), per activation; under the
    table, what shared the machine while the runs were timed (their ``timed_under``)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["activation"]].append(r)
    iterations = any(r.get("iters") for r in rows)
    steps = all((r.get("iter_time") or 0) > 0 for r in rows)  # rows from before it have none

    def seconds(rs: list[dict]) -> float:
        if steps:
            return statistics.fmean(r["iter_time"] for r in rs)
        return statistics.fmean(r.get("epoch_time") or r["wall_time"] / max(1, len(r["test_acc"]))
                                for r in rs)

    time_label = ("time per iteration (ms)" if iterations else "time per training step (ms)" if steps
                  else "time per epoch (s)")
    base_time = seconds(by[baseline]) if baseline in by else math.nan
    ratio_label = f" | time / {baseline}'s" if baseline in by else ""
    lines = [f"| activation | {time_label}{ratio_label} | activation parameters | saved for backward (MiB) | "
             "peak memory (MiB) | backend |", "|---|---|" + "---|" * bool(ratio_label) + "---|---|---|---|"]
    cpu_only = all(str(r.get("device", "cpu")).startswith("cpu") for r in rows)
    for a, rs in sorted(by.items()):
        t = seconds(rs)
        time_text = f"{(1000 if steps else 1) * t:.3g}"
        if ratio_label:
            time_text += f" | {t / base_time:.2f}" if base_time > 0 else " | "
        params = max(r.get("activation_params", -1) for r in rs)
        ran = Counter(r.get("backend") or "-" for r in rs)  # "-": no adaptive module, or a row from before
        backend = ", ".join(b if len(ran) == 1 else f"{b} ({n})" for b, n in sorted(ran.items()))
        peak = "not measured" if cpu_only else _mib([r.get("peak_memory", -1) for r in rs])
        lines.append(f"| {a} | {time_text} | {params if params >= 0 else '-'} | "
                     f"{_mib([r.get('saved_memory', -1) for r in rs])} | {peak} | {backend} |")
    loads = sorted({r.get("timed_under") or "" for r in rows})
    load = "; ".join(x for x in loads if x) or "under a load that was not recorded"
    if "" in loads and load != "under a load that was not recorded":
        load += "; some under a load that was not recorded"
    measured = ("Times are each run's median training step after its first two (eager, then compiling), "
                "so compiling is no step's cost" if steps else
                "Times are each run's wall time per epoch, loading the data, compiling and evaluating "
                "included (these runs predate the step time)")
    note = (measured + "; the sweep's own, mean over runs, timed " + load
            + ": they move with whatever else the machine ran, so read them as ratios within this table. "
            "`adaptact bench-kernels` times the activations apart, side by side."
            + " Peak memory is CUDA's allocator peak: runs on the CPU do not measure it." * cpu_only)
    return "\n".join(lines) + "\n\n" + note + "\n"


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


def _csv_row(row: Mapping, protocol: str) -> dict:
    """``row`` in the report's units, an empty cell wherever it holds no value (the other measure's
    fields, -1 and 0 stand-ins, a run that finished without finite numbers)."""
    ok = usable(dict(row))
    status = row.get("status", "ok")
    loss = row.get("metric") == "loss"
    missing = set(_ACCURACY_ONLY if loss else _LOSS_ONLY)
    missing |= {f for f in _NEGATIVE_IS_MISSING if (row.get(f) or 0) < 0 or row.get(f) is None}
    missing |= {f for f in _ZERO_IS_MISSING if not row.get(f)}
    if not ok:
        missing |= {*_ACCURACY_ONLY[:3], *_LOSS_ONLY[:3], "best_epoch"}
    values = {**row, "family": family(row["activation"]), "protocol": protocol,
              "training_version": row.get("protocol"),
              "status": "non-finite" if status == "ok" and not ok else status}
    out = {}
    for name, field, factor in CSV_FIELDS:
        value = values.get(field)
        if field in missing or value is None:
            out[name] = ""
        elif factor is not None:
            out[name] = f"{factor * float(value):.10g}"
        else:
            out[name] = value
    return out


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r, protocol in zip(rows, protocol_names(rows)):
            w.writerow(_csv_row(r, protocol))


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
            markdown_table(group, "best_loss", baseline=base, measure=LOSS, mark_unconverged=True),
            "### Lowest validation loss", "", markdown_table(val, "best_val_loss", measure=LOSS),
            "### Test bits per character at that evaluation", "",
            markdown_table(group, "best_loss", measure=dataclasses.replace(LOSS, scale=bits)),
            "### Test loss at the last evaluation", "", markdown_table(group, "last_loss", measure=LOSS),
            *(["### Test loss at the first evaluation", "",
               markdown_table(group, "first_loss", baseline=base, measure=LOSS), *_conversions(group, source)]
              if source else []),
            "### Costs", "", _costs(group, base)]


def setups_of(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
    """``rows`` by the setup they ran in (the report's sections): data set, model, epochs, batch
    size, row format, validation share, iterations, source of fine-tuning."""
    setups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        held = r.get("validation", 0.1) if r.get("protocol", 1) >= 2 else 0.0
        setups[(r["dataset"], r["model"], r["epochs"], r["batch_size"], r.get("protocol", 1), held,
                r.get("iters", 0), r.get("source", ""))].append(r)
    return setups


def baseline_of(group: Sequence[dict], baseline: str | None = None) -> str | None:
    """The activation ``group``'s (usable runs of one setup) others are compared with: ``baseline``,
    or by default relu where it ran, else gelu (gelu for language models); None where it has no run."""
    present = {r["activation"] for r in group}
    language = bool(group) and measure_of(group[0]) is LOSS
    chosen = baseline if baseline is not None else "relu" if "relu" in present and not language else "gelu"
    return chosen if chosen in present else None


def verdict_of(rows: Sequence[dict], baseline: str | None) -> list[Comparison]:
    """``verdict.verdict`` of one setup's rows (labelled as the report labels them) against
    ``baseline`` on its measure at the selected evaluation; [] without a baseline."""
    group = [r for r in rows if usable(r)]
    if baseline is None or not group:
        return []
    m = measure_of(group[0])
    return verdict(rows, group, baseline, m.best, m.scale, m.lower_is_better)


def _stage_report(rows: Sequence[dict], out: Path, plots: bool, baseline: str | None,
                  setup: Mapping[str, object], stage: StagedFiles) -> list[Path]:
    written = [stage.add(out / "runs.csv", lambda p: _write_csv(rows, p))]
    setups = setups_of(rows)
    measures = {measure_of(r) for r in rows}
    what = " or ".join(m.label for m in (ACCURACY, LOSS) if m in measures) or ACCURACY.label
    md = ["# Activation comparison", "",
          (f"{what[0].upper()}{what[1:]}, mean ± standard deviation over seeds, (rank in the column); "
           "best of each column in bold; † where the setting was still improving in the last tenth of "
           "training. Δ: mean difference to the baseline, paired by seed, [interval] corrected by Holm's "
           "procedure over the table's comparisons, * where the correction finds a difference. ± is always a "
           "standard deviation, [lo, hi] always an interval. Rebuild with `adaptact report --db DB --out "
           "DIR`."), ""]
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
        comparisons: list[Comparison] = []
        title = f"{dataset}, {model}, batch {batch}, {length}"
        title += "" if held or language else ", no validation split"
        title += f", fine-tuned from {source}" if source else ""
        body += [f"## {title}", ""]
        base = baseline_of(group, baseline)
        if group and language:
            body += _language_sections(group, base, source)
            comparisons = verdict_of(rows_, base)
            if base and comparisons:
                summary += [f"### {title}", "", "Measure: the test loss at the evaluation with the lowest "
                            "validation loss.", "",
                            *_verdict_lines(comparisons, base, selection_basis(group), LOSS)]
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
                     markdown_table(group, "best_acc", baseline=base, mark_unconverged=True),
                     f"### Test accuracy after the first {point}", "",
                     markdown_table(group, "first_epoch_acc")]
            if protocol >= 2:
                body += [f"### Test accuracy after the last {point}", "", markdown_table(group, "last_acc")]
            if not str(model).startswith(("conv", "linear", "vit")):  # ImageNet-style: the ACON paper's error
                body += [f"### Top-1 error (%) at the selected {point}", "",
                         markdown_table(group, "best_acc", True)]
            body += _conversions(group, source)
            body += ["### Costs", "", _costs(group, base)]
            comparisons = verdict_of(rows_, base)
            if base and comparisons:
                measure = (f"the test accuracy at the {point} the validation split selects" if held
                           else f"the best test accuracy over the {point}s (selected on the test set)")
                summary += [f"### {title}", "", f"Measure: {measure}.", "",
                            *_verdict_lines(comparisons, base, selection_basis(group), ACCURACY)]
        dead = sorted({f"{o.upper()} lr={lr:g}" for o, lr in columns(rows_)} -
                      {f"{o.upper()} lr={lr:g}" for o, lr in columns(group)})
        if dead:
            body += [f"No activation converged with: {', '.join(dead)}.", ""]
        if failed:
            body += ["### Runs that diverged or failed (not in the tables above)", "", _not_ok(failed)]
        if plots and group:
            for p in report_figures.plots(group, out, stem, stage, comparisons, base):
                written.append(p)
                body += [f"![{p.stem}]({p.name})", ""]
    if summary:
        md += ["## Summary", "", *summary]
    md += snr_tables(rows)
    md += body
    written.insert(0, stage.add(out / "report.md", lambda p: p.write_text("\n".join(md))))
    return written
