"""The ``adaptact`` command line: ``adaptact list`` and friends.

Exit codes: 0 success, 2 bad usage or missing input (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["format_table", "main"]

_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register ``run(args) -> exit code`` under ``name``; ``configure(parser)`` adds options."""

    def wrap(configure: Callable[[argparse.ArgumentParser], None]):
        def register(run: Callable[[argparse.Namespace], int]):
            _COMMANDS[name] = (help, configure, run)
            return run

        return register

    return wrap


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], fmt: str = "markdown") -> str:
    """Render rows as a Markdown table (aligned) or CSV."""
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue()
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]]) + "\n"


def _list_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("classic", "learnable", "adaptive"), help="only this family")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")


@command("list", "table of every activation: family, learnable, per sample, parameters, paper")(_list_configure)
def _list(args: argparse.Namespace) -> int:
    from .registry import available, create, spec

    probe = 64
    rows = []
    for name in available(args.family):
        s = spec(name)
        module = create(name, channels=probe)
        n = sum(p.numel() for p in module.parameters())
        params = f"{n / probe:g}" if s.per_channel else (f"0 (+{n} shared)" if n else "0")
        rows.append((name, s.family, "yes" if s.learnable else "no", "yes" if s.per_sample else "no",
                     params, s.paper))
    header = ("name", "family", "learnable", "adapts per sample", f"params per channel (C={probe})", "paper")
    sys.stdout.write(format_table(header, rows, args.format))
    return 0


def _csv_list(kind: str, convert=str):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        try:
            return [convert(t) for t in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"bad {kind} list {text!r}: {err}") from None

    return parse


def _positive(convert):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {convert.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _compare_configure(p: argparse.ArgumentParser) -> None:
    from .bench.data import DATASETS
    from .bench.executors import EXECUTORS
    from .bench.models import MODELS
    from .bench.sweep import DEFAULT_ACTIVATIONS

    p.add_argument("--dataset", choices=DATASETS, default="mnist1d")
    p.add_argument("--model", choices=MODELS, help="default: conv (images), conv1d (mnist1d), linear (digits)")
    p.add_argument("--activations", type=_csv_list("activation"), default=list(DEFAULT_ACTIVATIONS),
                   help="comma-separated registry names (default: the AReLU paper's set + acon_c, meta_acon_c, aprelu)")
    p.add_argument("--optimizers", type=_csv_list("optimizer"), default=["sgd", "adam"])
    p.add_argument("--lrs", type=_csv_list("learning rate", _positive(float)), default=[1e-2, 1e-3])
    p.add_argument("--seeds", type=_positive(int), default=5, help="seeds 0..N-1")
    p.add_argument("--epochs", type=_positive(int), default=5)
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--workers", type=_positive(int), default=1, help="parallel runs (one CPU thread each)")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--address", help="Ray cluster address (with --executor ray)")
    p.add_argument("--data-dir", help="folder with the data set's files (else $ADAPTACT_DATA, /usr/share/datasets)")
    p.add_argument("--db", default="results.sqlite", help="SQLite results database (resumable)")
    p.add_argument("--out", default="report", help="report folder")
    p.add_argument("--no-progress", action="store_true")


def _fail(message: str) -> int:
    sys.stderr.write(f"adaptact: error: {message}\n")
    return 2


DEFAULT_MODEL = {"fashion-mnist": "conv", "mnist": "conv", "mnist1d": "conv1d", "digits": "linear"}


@command("compare", "train a network with each activation, optimizer, lr and seed; write the report")(
    _compare_configure)
def _compare(args: argparse.Namespace) -> int:
    from .bench import data as bench_data
    from .bench.report import write_report
    from .bench.store import ResultStore
    from .bench.sweep import expand, run_sweep
    from .bench.train import OPTIMIZERS
    from .registry import spec

    try:
        activations = [spec(a).name for a in args.activations]
    except ValueError as err:
        return _fail(str(err))
    bad = [o for o in args.optimizers if o not in OPTIMIZERS]
    if bad:
        return _fail(f"unknown optimizer {bad[0]!r}; choose from {', '.join(OPTIMIZERS)}")
    if args.address and args.executor != "ray":
        return _fail("--address needs --executor ray")
    try:
        bench_data.load(args.dataset, args.data_dir)
    except bench_data.DataError as err:
        return _fail(str(err))
    model = args.model or DEFAULT_MODEL[args.dataset]
    configs = expand(args.dataset, model, activations, args.optimizers, args.lrs, args.seeds, args.epochs,
                     args.batch_size, args.data_dir)
    with ResultStore(args.db) as store:
        summary = run_sweep(configs, store, args.executor, args.workers, args.address, not args.no_progress)
        rows = [r for r in store.rows() if r["key"] in {c.key for c in configs}]
    files = write_report(rows, args.out)
    print(f"{summary.ran} runs done now, {summary.already_done} already in {args.db}; report: {files[0]}")
    return 0


def _report_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite results database written by `adaptact compare`")
    p.add_argument("--out", default="report", help="report folder")
    p.add_argument("--dataset", help="only runs on this data set")


@command("report", "rebuild the comparison report from a results database")(_report_configure)
def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench.report import write_report
    from .bench.store import ResultStore

    if not Path(args.db).is_file():
        return _fail(f"no results database at {args.db}")
    with ResultStore(args.db) as store:
        rows = [r for r in store.rows() if args.dataset in (None, r["dataset"])]
    if not rows:
        return _fail(f"no runs in {args.db}" + (f" for dataset {args.dataset}" if args.dataset else ""))
    files = write_report(rows, args.out)
    print(f"report of {len(rows)} runs: {files[0]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="adaptact", description="Adaptive activation functions for PyTorch.")
    parser.add_argument("--version", action="version", version=f"adaptact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, configure, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
