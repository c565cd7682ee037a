"""The ``adaptact`` command line: argument parsing and error reporting; the work lives in the
library (``adaptact.registry``, ``adaptact.analysis``, ``adaptact.experiments``).

Exit codes: 0 success; 2 a mistake in the input (one line, ``adaptact: error: ...``: bad options,
paths that cannot be read or written, unusable databases, data or checkpoints, missing extras);
130 interrupted (Ctrl-C); 143 terminated (SIGTERM; worker processes are stopped with it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from .errors import UserError
from .tables import format_table

__all__ = ["build_parser", "main"]

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Configure, Run]] = {}


def command(name: str, help: str):
    """Register ``run(args) -> exit code`` under ``name``; ``configure(parser)`` adds options."""

    def wrap(configure: Configure):
        def register(run: Run):
            _COMMANDS[name] = (help, configure, run)
            return run

        return register

    return wrap


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


def _positive(convert, maximum: float | None = None):
    """A finite number > 0 (at most ``maximum``)."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {convert.__name__}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, got {text}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


def _list_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("classic", "learnable", "adaptive"), help="only this family")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")


@command("list", "table of every activation: family, learnable, per sample, parameters, paper")(
    _list_configure)
def _list(args: argparse.Namespace) -> int:
    from .registry import ALIASES, GATED, catalogue

    sys.stdout.write(format_table(*catalogue(args.family), args.format))
    if args.format == "markdown":
        aliases = ", ".join(f"{a} ({n})" for a, n in sorted(ALIASES.items()) if a not in GATED)
        sys.stdout.write(f"\nGated (GLU) forms, 2H channels in, H out: {', '.join(GATED)}, and <name>_glu "
                         f"for any name above as the gate (acon_c_glu).\nOther names: {aliases}.\n")
    return 0


CLI_DEFAULTS = {"optimizers": ["sgd", "adam"], "lrs": [1e-2, 1e-3], "seeds": 5}


def _compare_configure(p: argparse.ArgumentParser) -> None:
    from .experiments.comparison import MAX_LR, MAX_RUNS, MAX_SEEDS
    from .datasets.builtin import DATASETS
    from .experiments.executors import EXECUTORS
    from .models.catalogue import MODELS
    from .experiments.protocols import PROTOCOLS

    p.add_argument("--protocol", choices=[n for n in PROTOCOLS if n != "default"],
                   help="arelu: the AReLU paper's experiment as its code runs it (MNIST in [0, 1], "
                        "ConvMNIST, log-softmax + NLL, SGD and Adam at lr 1e-2,1e-3,1e-4,1e-5, 20 epochs, "
                        "5 seeds, its activation set, best test accuracy over the epochs); nanogpt: "
                        "nanoGPT's CPU recipe on shakespeare-char (gpt-char, AdamW lr 1e-3, batch 12, 2000 "
                        "iterations, 3 seeds, the LLM-era activations against the adaptive ones, gelu the "
                        "baseline; the protocol of text data when none is named); transfer: each "
                        "activation's network pretrained on mnist1d (SGD lr 1e-2, 50 epochs) and fine-tuned "
                        "on mnist1d-shifted (SGD lr 1e-3,1e-4,1e-5, 20 epochs), the AReLU repository's "
                        "transfer experiment; convert: one relu network per seed pretrained so, converted to "
                        "each adaptive activation with init match and paper, fine-tuned at lr 1e-3 and "
                        "compared with keeping relu; convert-gpt: the same for a gelu gpt-char pretrained "
                        "by nanogpt's recipe on shakespeare-no-comedies and fine-tuned on "
                        "shakespeare-comedies (AdamW lr 3e-4, 500 iterations); the options below override it")
    p.add_argument("--dataset", metavar="NAME|MODULE:LOADER",
                   help=f"a built-in data set ({', '.join(DATASETS)}; default mnist1d) or your own: "
                        "module:attribute of a callable returning (train_x, train_y, test_x, test_y) tensors")
    p.add_argument("--snr", type=_csv_list("SNR", float), metavar="DB[,DB...]",
                   help="with --dataset bearing: one sweep per SNR, white noise at that many dB (the APReLU "
                        "paper: 5,3,1); without it the signals are clean")
    p.add_argument("--suite", choices=("resnet",),
                   help="resnet: the ACON paper's ResNet comparison (ResNet-18 at width 16; ReLU, Swish, "
                        "ACON-C, Meta-ACON-C after the 3x3 convs only, APReLU, AReLU, DY-ReLU-B, FReLU)")
    p.add_argument("--model", metavar="NAME|MODULE:FACTORY",
                   help=f"a built-in network ({', '.join(MODELS)}; default: conv for images, conv1d for "
                        "mnist1d, linear for digits) or your own: module:attribute of a callable "
                        "activation_name -> nn.Module")
    p.add_argument("--baseline", help="the activation the report compares the others with (default: relu "
                                      "where it ran, else gelu; gelu for language models)")
    p.add_argument("--source", metavar="NAME|MODULE:LOADER",
                   help="fine-tune: pretrain each network on this data set, then fine-tune it on --dataset "
                        "with a fresh classifier head (a language model keeps its own; protocols transfer, "
                        "convert and convert-gpt)")
    p.add_argument("--base", help="fine-tune: pretrain this activation and convert its network to each of "
                                  "--activations (default: each pretrained with itself)")
    p.add_argument("--inits", type=_csv_list("init"), metavar="paper,match",
                   help="with --base: how the new activations are put in (replace_activations' init)")
    p.add_argument("--pretrain-optimizer", help="fine-tune: the pretraining's optimizer (default sgd)")
    p.add_argument("--pretrain-lr", type=_positive(float, MAX_LR), help="default 0.01")
    p.add_argument("--pretrain-epochs", type=_positive(int), help="default 50")
    p.add_argument("--pretrain-iters", type=_positive(int),
                   help="fine-tune: pretrain by this many iterations instead of epochs (language models; "
                        "convert-gpt: 2000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision (fp16 on CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--activations", type=_csv_list("activation"),
                   help="comma-separated registry names (default: the AReLU paper's kinds in adaptact's "
                        "variants + acon_c, meta_acon_c, aprelu)")
    p.add_argument("--optimizers", type=_csv_list("optimizer"), help="default: sgd,adam")
    p.add_argument("--lrs", type=_csv_list("learning rate", _positive(float, MAX_LR)),
                   help="default: 0.01,0.001")
    p.add_argument("--seeds", type=_positive(int, MAX_SEEDS), help="seeds 0..N-1 (default 5)")
    p.add_argument("--epochs", type=_positive(int), help="default 5")
    p.add_argument("--iters", type=_positive(int),
                   help="train by iterations instead of epochs (warm-up, cosine schedule, gradient clipping; "
                        "language models train only this way)")
    p.add_argument("--eval-every", type=_positive(int), metavar="N",
                   help="with --iters: evaluate every N iterations (default: a tenth of them)")
    p.add_argument("--batch-size", type=_positive(int), help="default 128")
    p.add_argument("--workers", type=_positive(int), default=1, help="parallel runs (one CPU thread each)")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--address", help="Ray cluster address (with --executor ray)")
    p.add_argument("--data-dir",
                   help="folder with the data set's files (else $ADAPTACT_DATA, /usr/share/datasets)")
    p.add_argument("--db", default="results.sqlite", help="SQLite results database (resumable)")
    p.add_argument("--out", default="report", help="report folder")
    p.add_argument("--save-checkpoints", metavar="DIR", help="save each trained model as DIR/<run key>.pt "
                   "(for `adaptact inspect` and `adaptact plot --checkpoint`; fine-tuning's pretrained "
                   "networks go here too, else to <db>-checkpoints)")
    p.add_argument("--extra-runs", type=_positive(int, MAX_RUNS), default=0, metavar="N",
                   help="after the sweep, add seeds to the comparisons the report's verdict leaves "
                        "unresolved (the activation's and the baseline's tuned settings, as many as would "
                        "resolve the observed difference), until they resolve or N more runs are spent; "
                        "resumable")
    p.add_argument("--no-progress", action="store_true")


@command("compare", "train a network with each activation, optimizer, lr and seed; write the report")(
    _compare_configure)
def _compare(args: argparse.Namespace) -> int:
    import shlex

    from .experiments.comparison import CompareRequest, run

    from .experiments.protocols import for_data

    given = {k: getattr(args, k) for k in ("optimizers", "lrs", "seeds")}
    if args.protocol is None and for_data(args.dataset) == "default":
        # the command line's own defaults: both optimizers, two rates, 5 seeds
        given = {k: v if v is not None else CLI_DEFAULTS[k] for k, v in given.items()}
    request = CompareRequest(
        model=args.model, data=args.dataset, activations=args.activations, **given, epochs=args.epochs,
        iters=args.iters, eval_every=args.eval_every, batch_size=args.batch_size, protocol=args.protocol,
        suite=args.suite, snr=args.snr, source=args.source, base=args.base, inits=args.inits,
        pretrain_optimizer=args.pretrain_optimizer, pretrain_lr=args.pretrain_lr,
        pretrain_epochs=args.pretrain_epochs, pretrain_iters=args.pretrain_iters, baseline=args.baseline,
        db=args.db, out=args.out,
        data_dir=args.data_dir,
        save_checkpoints=args.save_checkpoints, workers=args.workers, executor=args.executor,
        address=args.address, device=args.device, amp=args.amp, compile=args.compile,
        progress=not args.no_progress, command=shlex.join(["adaptact", *sys.argv[1:]]),
        extra_runs=args.extra_runs)
    rows = run(request)
    s = rows.summary
    for line in s.notes():
        print(line, file=sys.stderr)
    added = f" ({rows.extra} of them extra seeds for unresolved comparisons)" if rows.extra else ""
    print(f"{s.ran} runs done now, {s.already_done} already in {args.db}{added}; report: {rows.report[0]}")
    return 0


def _report_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite results database written by `adaptact compare`")
    p.add_argument("--out", default="report", help="report folder")
    p.add_argument("--dataset", help="only runs on this data set")
    p.add_argument("--baseline", help="the activation the others are compared with (default: relu where it "
                                      "ran, else gelu; gelu for language models)")


@command("report", "rebuild the comparison report from a results database")(_report_configure)
def _report(args: argparse.Namespace) -> int:
    from .experiments.comparison import report

    files = report(args.db, args.out, args.dataset, baseline=args.baseline)
    print(f"report: {files[0]}")
    return 0


def _props_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="registry names (default: all)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.add_argument("--no-cost", action="store_true", help="skip the CPU timing (relative_cost)")
    p.add_argument("--depth", type=_positive(int, 1000), default=20,
                   help="MLP depth for the gradient-flow ratio (2 to 1000)")


@command("props", "property table of activations: monotonic, smooth, bounds, f' range, dying, cost, ...")(
    _props_configure)
def _props(args: argparse.Namespace) -> int:
    from .analysis import property_table
    from .registry import available, spec

    if args.depth < 2:
        raise UserError(f"--depth must be at least 2, got {args.depth}")
    try:
        names = [spec(n).name for n in args.names] or [n for n in available() if spec(n).elementwise]
        header, rows = property_table(names, cost=not args.no_cost, depth=args.depth)
    except ValueError as err:
        raise UserError(str(err)) from None
    sys.stdout.write(format_table(header, rows, args.format))
    if args.format == "markdown":
        from .analysis.properties import CANONICAL

        print(f"\nNote: {CANONICAL}. Cost: forward+backward time over ReLU's on a (32, 64, 28, 28) float32 "
              "CPU tensor, eager (`adaptact bench-kernels` times the compiled default and every backend).")
    return 0


def _plot_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="registry names; acon_c draws its family of curves")
    p.add_argument("--derivative", action="store_true", help="also plot f'")
    p.add_argument("--checkpoint", help="a checkpoint saved by `adaptact compare --save-checkpoints`: "
                   "plot the learned activations of its model")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")


@command("plot", "plot activation curves (and derivatives), or the learned ones of a checkpoint")(
    _plot_configure)
def _plot(args: argparse.Namespace) -> int:
    from .experiments.figures import plot_activations

    print(f"wrote {plot_activations(args.names, args.output, args.derivative, args.checkpoint)}")
    return 0


def _inspect_configure(p: argparse.ArgumentParser) -> None:
    from .datasets.builtin import DATASETS

    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint from `adaptact compare --save-checkpoints` (repeat: an ACON-C one serves "
                        "as the fixed-beta reference for Meta-ACON)")
    p.add_argument("--dataset", choices=DATASETS, required=True, help="data whose test split is run through")
    p.add_argument("--data-dir")
    p.add_argument("--samples", type=_positive(int, 64), default=4,
                   help="random samples to show (at most 64)")
    p.add_argument("--out", default="inspect", help="folder for the PNGs")


@command("inspect", "what trained adaptive activations do: Meta-ACON beta, APReLU alpha, AReLU feature maps")(
    _inspect_configure)
def _inspect(args: argparse.Namespace) -> int:
    from .experiments.figures import inspect_checkpoints

    for path in inspect_checkpoints(args.checkpoint, args.dataset, args.data_dir, args.samples, args.out):
        print(f"wrote {path}")
    return 0


def _bench_kernels_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="64,128,56,56", type=_csv_list("shape", _positive(int, 2**31)),
                   help="input shape N,C,H,W (default: 64x128x56x56, a ResNet stage)")
    p.add_argument("--dtypes", default=["float32", "bfloat16"], type=_csv_list("dtype"))
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--activations", type=_csv_list("activation"),
                   help="default: arelu,acon_c,meta_acon_c,aprelu; with --context causal or token: "
                        "meta_acon_c,aprelu,dy_relu_b")
    p.add_argument("--threads", type=_positive(int, 4096), help="CPU threads (default: torch's)")
    p.add_argument("--channel-dim", type=int, default=1,
                   help="the dim of --shape holding the channels: 1, or -1 for transformer tokens (B,T,C)")
    p.add_argument("--context", default="sample",
                   help="the input-conditioned activations' sequence context: sample (default), causal or "
                        "token (these take a shape B,T,C or B,C,T)")
    p.add_argument("--repeats", type=_positive(int, 10_000), default=20, help="interleaved rounds")
    p.add_argument("--json", default="bench-kernels.json", help="where to write the full results")


@command("bench-kernels", "forward+backward time and memory of each backend against the bandwidth floor and "
                          "torch.compile")(
    _bench_kernels_configure)
def _bench_kernels(args: argparse.Namespace) -> int:
    from .kernel_benchmark import format_results, run_kernel_bench, write_json

    report = run_kernel_bench(tuple(args.shape), tuple(args.dtypes), args.device,
                              activations=None if args.activations is None else tuple(args.activations),
                              repeats=args.repeats, json_path=args.json, threads=args.threads,
                              channel_dim=args.channel_dim, context=args.context)
    sys.stdout.write(format_results(report))
    print(f"\nJSON: {write_json(report, args.json)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``adaptact compare: error: ...`` (exit 2), without the
    usage block (``--help`` prints it); its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (--help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="adaptact",
                                     description="Adaptive activation functions for PyTorch.")
    parser.add_argument("--version", action="version", version=f"adaptact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, configure, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(run=run)
    return parser


def _fail(message: str) -> int:
    sys.stderr.write(f"adaptact: error: {' '.join(message.split())}\n")  # one line
    return 2


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like an exception (exit 143), so worker pools are stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _working_directory_importable() -> None:
    """``module:attribute`` specs (``--model``, ``--dataset``, ``--activations``) name modules of the
    working directory, as under ``python -m adaptact``: the ``adaptact`` script's own path starts at
    its bin folder instead (spawned workers inherit the path)."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)


def main(argv: Sequence[str] | None = None) -> int:
    if any("\0" in a for a in (sys.argv[1:] if argv is None else argv)):
        return _fail("arguments cannot hold NUL characters")
    if argv is None:  # the command line itself
        _working_directory_importable()
    args = build_parser().parse_args(argv)
    with _sigterm_exits():
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:
            sys.stderr.write("adaptact: interrupted\n")
            return 130
        except UserError as err:
            return _fail(str(err))
        except OSError as err:  # a path given that cannot be read or written
            where = f"{err.filename}: " if err.filename else ""
            return _fail(f"{where}{err.strerror or err}")


if __name__ == "__main__":
    sys.exit(main())
