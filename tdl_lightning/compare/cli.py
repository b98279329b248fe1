"""The ``tdl compare`` command line: read the runs, print the table (or JSON), write the figure.

Example:
    >>> main(["runs/edge_of_chaos_sweep", "--metric", "val/acc", "--output", "eoc.png"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tdl_lightning.compare.comparison import compare_runs
from tdl_lightning.compare.figure import plot_comparison
from tdl_lightning.errors import TDLError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tdl compare``.

    Example:
        >>> args = build_parser().parse_args(["runs/a", "runs/b", "-m", "val/acc", "hessian/*", "--json"])
        >>> args.runs, args.metric, args.json, args.output
        (['runs/a', 'runs/b'], ['val/acc', 'hessian/*'], True, None)
    """
    parser = argparse.ArgumentParser(
        prog="tdl compare",
        description="Compare local runs (no server needed): the config keys that differ, final and "
        "best metrics, and a figure of their curves and plugin curves.",
        epilog="example: tdl compare runs/edge_of_chaos_sweep --metric val/acc --output eoc.png",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories (runs/<experiment>/<id>) or folders of runs (runs/<experiment>)",
    )
    parser.add_argument(
        "--metric",
        "-m",
        action="extend",
        nargs="+",
        default=None,
        metavar="NAME",
        help="metrics to compare (names or globs such as 'hessian/*'); default: the "
        "metrics in the runs' summary.json",
    )
    parser.add_argument(
        "--plugins",
        action="extend",
        nargs="+",
        default=None,
        metavar="GLOB",
        help="plugin scalars to draw in the figure (e.g. 'init_statistics/q_layer_*'); default all",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON (for scripts)")
    parser.add_argument("--output", "-o", metavar="FIG", help="write a figure of the curves (.png/.pdf/.svg)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``tdl compare RUN_DIR... [--metric NAME ...] [--json] [--output FIG]``.

    Problems with single runs are printed to stderr and the others are compared; when no run
    can be read, the command fails with the list of reasons.

    Example:
        >>> main(["runs/edge_of_chaos_sweep", "--metric", "val/acc", "--output", "eoc.png"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    comparison = compare_runs(args.runs, metrics=args.metric)
    for problem in comparison.problems:
        print(f"tdl compare: skipped {problem.message()}", file=sys.stderr)
    if not comparison.runs:
        raise TDLError("no run to compare: " + "; ".join(p.message() for p in comparison.problems))
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2, default=str))
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # a pipe or a file: no need to squeeze the table into 80 columns
            console = Console(width=max(80, Console(width=400).measure(comparison.table()).maximum))
        console.print(comparison.table())
    if args.output:
        path = plot_comparison(comparison, args.output, plugins=args.plugins)
        print(f"tdl compare: figure written to {path}", file=sys.stderr if args.json else sys.stdout)
