"""The ``adaptact`` command line: ``adaptact list`` and friends.

Exit codes: 0 success, 2 bad usage or missing input (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

__all__ = ["main", "format_table"]

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
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
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
