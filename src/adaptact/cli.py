"""The ``adaptact`` command line: ``adaptact list`` and friends.

Exit codes: 0 success, 2 bad usage or missing input (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["format_table", "main"]

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Configure, Run]] = {}


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
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]]) + "\n"


def _list_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("classic", "learnable", "adaptive"), help="only this family")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")


@command("list",
         "table of every activation: family, learnable, per sample, parameters, paper")(_list_configure)
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
    p.add_argument("--suite", choices=("resnet",),
                   help="resnet: the ACON paper's ResNet comparison (ResNet-18 at "
                   "width 16; ReLU, Swish, ACON-C, Meta-ACON-C after the 3x3 convs only, APReLU, AReLU)")
    p.add_argument("--model", choices=MODELS,
                   help="default: conv (images), conv1d (mnist1d), linear (digits)")
    p.add_argument("--activations", type=_csv_list("activation"), default=list(DEFAULT_ACTIVATIONS),
                   help="comma-separated registry names (default: the AReLU paper's set + acon_c, "
                        "meta_acon_c, aprelu)")
    p.add_argument("--optimizers", type=_csv_list("optimizer"), default=["sgd", "adam"])
    p.add_argument("--lrs", type=_csv_list("learning rate", _positive(float)), default=[1e-2, 1e-3])
    p.add_argument("--seeds", type=_positive(int), default=5, help="seeds 0..N-1")
    p.add_argument("--epochs", type=_positive(int), default=5)
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--workers", type=_positive(int), default=1, help="parallel runs (one CPU thread each)")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--address", help="Ray cluster address (with --executor ray)")
    p.add_argument("--data-dir",
                   help="folder with the data set's files (else $ADAPTACT_DATA, /usr/share/datasets)")
    p.add_argument("--db", default="results.sqlite", help="SQLite results database (resumable)")
    p.add_argument("--out", default="report", help="report folder")
    p.add_argument("--save-checkpoints", metavar="DIR", help="save each trained model as DIR/<run key>.pt "
                   "(for `adaptact inspect` and `adaptact plot --checkpoint`)")
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

    policies = {}
    if args.suite == "resnet":
        from .bench.sweep import RESNET_SUITE

        args.model = args.model or RESNET_SUITE["model"]
        args.activations = list(RESNET_SUITE["activations"])
        policies = RESNET_SUITE["policies"]
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
                     args.batch_size, args.data_dir, args.save_checkpoints, policies)
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


def _props_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="registry names (default: all)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.add_argument("--no-cost", action="store_true", help="skip the CPU timing (relative_cost)")
    p.add_argument("--depth", type=_positive(int), default=20, help="MLP depth for the gradient-flow ratio")


@command("props", "property table of activations: monotonic, smooth, bounds, f' range, dying, cost, ...")(
    _props_configure)
def _props(args: argparse.Namespace) -> int:
    from .analysis import gradient_flow, properties
    from .registry import available, spec

    try:
        names = [spec(n).name for n in args.names] or available()
    except ValueError as err:
        return _fail(str(err))
    def yes(b):
        return "yes" if b else "no"
    header = ("name", "monotonic", "smooth (C1)", "bounded below", "bounded above", "mean N(0,1)",
              "std N(0,1)",
              "dying", "saturation", "f' min", "f' max", "params/channel", "shared params", "cost vs ReLU",
              f"grad ratio (depth {args.depth})")
    rows = []
    for name in names:
        p = properties(name, cost=not args.no_cost)
        rows.append((name, yes(p.monotonic), yes(p.smooth), yes(p.bounded_below), yes(p.bounded_above),
                     f"{p.output_mean:.3f}", f"{p.output_std:.3f}", f"{p.dying_fraction:.3f}",
                     f"{p.saturation:.3f}", f"{p.derivative_min:.4f}", f"{p.derivative_max:.4f}",
                     f"{p.params_per_channel:g}", p.params_shared,
                     "-" if p.relative_cost is None else f"{p.relative_cost:.2f}",
                     f"{gradient_flow(name, depth=args.depth):.3g}"))
    sys.stdout.write(format_table(header, rows, args.format))
    return 0


def _plot_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="registry names; acon_c draws its family of curves")
    p.add_argument("--derivative", action="store_true", help="also plot f'")
    p.add_argument("--checkpoint", help="a checkpoint saved by `adaptact compare --save-checkpoints`: "
                   "plot the learned activations of its model")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")


@command("plot",
         "plot activation curves (and derivatives), or the learned ones of a checkpoint")(_plot_configure)
def _plot(args: argparse.Namespace) -> int:
    from .analysis.plots import plot_acon_family, plot_curves
    from .registry import spec

    try:
        names = [spec(n).name for n in args.names]
    except ValueError as err:
        return _fail(str(err))
    items: list = list(names)
    if args.checkpoint:
        from .analysis.inspect import learned_activations
        from .bench.checkpoints import load_checkpoint

        try:
            model, _ = load_checkpoint(args.checkpoint)
        except (OSError, ValueError, KeyError) as err:
            return _fail(f"cannot load checkpoint {args.checkpoint}: {err}")
        items += learned_activations(model)
    if not items:
        return _fail("name at least one activation or give --checkpoint")
    if items == ["acon_c"]:
        path = plot_acon_family(args.output)
    else:
        path = plot_curves(items, args.output, derivative=args.derivative)
    print(f"wrote {path}")
    return 0


def _inspect_configure(p: argparse.ArgumentParser) -> None:
    from .bench.data import DATASETS

    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint from `adaptact compare --save-checkpoints` (repeat: an ACON-C one serves "
                        "as the fixed-beta reference for Meta-ACON)")
    p.add_argument("--dataset", choices=DATASETS, required=True, help="data whose test split is run through")
    p.add_argument("--data-dir")
    p.add_argument("--samples", type=_positive(int), default=4, help="random samples to show")
    p.add_argument("--out", default="inspect", help="folder for the PNGs")


@command("inspect", "what trained adaptive activations do: Meta-ACON beta, APReLU alpha, AReLU feature maps")(
    _inspect_configure)
def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .analysis import inspect as ins
    from .bench import data as bench_data
    from .bench.checkpoints import load_checkpoint

    try:
        models = [load_checkpoint(c)[0] for c in args.checkpoint]
        ds = bench_data.load(args.dataset, args.data_dir)
    except bench_data.DataError as err:
        return _fail(str(err))
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        return _fail(f"cannot load checkpoint: {err}")
    reference = next((b for b in map(ins.acon_reference_beta, models) if b is not None), None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, model in enumerate(models):
        try:
            got = ins.collect(model, ds.test_x, keep_maps=args.samples)
        except (RuntimeError, ValueError) as err:
            return _fail(f"{args.checkpoint[k]} does not fit {args.dataset}: {err}")
        tag = f"m{k}-" if len(models) > 1 else ""
        for layer, beta in list(got.meta_acon_beta.items())[:1]:
            written.append(ins.plot_meta_acon_beta(beta, out / f"{tag}meta_acon_beta.png", args.samples,
                                                   reference, layer))
        for layer, alpha in list(got.aprelu_alpha.items())[:1]:
            written.append(ins.plot_aprelu_alpha(alpha, out / f"{tag}aprelu_alpha.png", layer=layer))
        for layer, (pre, post) in list(got.arelu_maps.items())[:1]:
            written.append(ins.plot_arelu_maps(got.inputs, pre, post, out / f"{tag}arelu_maps.png",
                                               args.samples, layer=layer))
    if not written:
        return _fail("no Meta-ACON-C, APReLU or AReLU layer in the given checkpoints")
    for path in written:
        print(f"wrote {path}")
    return 0


def _bench_kernels_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="64,128,56,56", type=_csv_list("shape", _positive(int)),
                   help="input shape N,C,H,W (default: the issue's 64x128x56x56)")
    p.add_argument("--dtypes", default=["float32", "bfloat16"], type=_csv_list("dtype"))
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--repeats", type=_positive(int), default=20)
    p.add_argument("--json", default="bench-kernels.json", help="where to write the full results")


@command("bench-kernels", "forward+backward time and memory of each backend against the bandwidth floor")(
    _bench_kernels_configure)
def _bench_kernels(args: argparse.Namespace) -> int:
    from .bench.kernels import format_results, run_kernel_bench, write_json

    bad = [d for d in args.dtypes if d not in ("float32", "float16", "bfloat16")]
    if bad:
        return _fail(f"unknown dtype {bad[0]!r}; choose from float32, float16, bfloat16")
    if len(args.shape) < 2:
        return _fail("--shape needs at least N,C")
    report = run_kernel_bench(tuple(args.shape), tuple(args.dtypes), args.device, repeats=args.repeats)
    sys.stdout.write(format_results(report))
    print(f"\nJSON: {write_json(report, args.json)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="adaptact",
                                     description="Adaptive activation functions for PyTorch.")
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
