"""The ``tdl sweep`` command line: its options, and the exit status a shell or SLURM sees.

Example:
    >>> _parser().parse_args(["s.yaml", "--parallel", "2", "--shard", "1/4"]).shard
    (1, 4)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tdl_lightning.errors import TDLError
from tdl_lightning.sweep.plan import parse_shard
from tdl_lightning.sweep.runner import run_sweep

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdl sweep",
        description="Run a W&B sweep config locally: every point a normal `tdl fit` run of experiment "
        "<sweep name>; finished runs are skipped, so the same command resumes an interrupted sweep. "
        "On a terminal a live status shows the points done, running and failed and an ETA; "
        "elsewhere each event is one line.",
        epilog="then: tdl compare runs/<sweep name> --output sweep.png. Online: wandb sweep CONFIG; "
        "wandb agent <sweep id>",
    )
    parser.add_argument(
        "config", help="a W&B sweep config (YAML), e.g. experiments/sweeps/edge_of_chaos.yaml"
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=None,
        metavar="N",
        help="run at most N points (random/bayes: how many to draw; default run_cap)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="K",
        help="runs at once (default 1), each on its own GPU (round robin over CUDA_VISIBLE_DEVICES) "
        "and its share of the usable CPUs",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="i/N",
        help="run only the i-th (from 0) of N shares of the points, e.g. one task of a SLURM job array",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random/bayes draws (default 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``tdl sweep CONFIG [--max-runs N] [--parallel K] [--shard i/N] [--seed S] [--dry-run]``.

    Exits 130 when interrupted, and with an error naming the logs when a run failed.

    Example:
        >>> main(["experiments/sweeps/edge_of_chaos.yaml", "--dry-run"])  # doctest: +SKIP
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    report = run_sweep(
        args.config,
        max_runs=args.max_runs,
        parallel=args.parallel,
        dry_run=args.dry_run,
        seed=args.seed,
        shard=args.shard,
    )
    if report.interrupted:
        raise SystemExit(130)
    failed = [run for run in report.runs if run.status == "failed"]
    if failed:
        raise TDLError(
            f"{len(failed)} of {len(report.runs)} runs failed; their logs: "
            + ", ".join(str(run.log) for run in failed)
            + ". Fix and rerun: finished runs are skipped"
        )
    if not args.dry_run:
        print(f"compare them: tdl compare {report.runs_dir} --output {report.name}.png")
