"""A sweep's runs and what became of them; :func:`plan_sweep` marks the ones that finished before.

Example:
    >>> run = SweepRun(1, {"model.init_args.sigma_w": 1.5, "run.experiment": "eoc"}, ["tdl", "fit"])
    >>> report = SweepReport("eoc", Path("runs/eoc"), [run])
    >>> run.label(), report.count("planned")
    ('sigma_w=1.5', 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdl_lightning.errors import ConfigError
from tdl_lightning.sweep.commands import EXPERIMENT_KEY, build_command, config_files, fixed_options, runs_root
from tdl_lightning.sweep.config import SweepConfig
from tdl_lightning.sweep.resume import config_matches, expected_settings, find_finished_runs
from tdl_lightning.sweep.sampling import expand_sweep

__all__ = ["SweepReport", "SweepRun", "plan_sweep"]


@dataclass
class SweepRun:
    """One point of a sweep and what became of it.

    Attributes:
        index: its place in the sweep (1-based).
        point: ``{parameter: value}``.
        command: the command as written for a person (``tdl fit ... --key=value``).
        status: ``planned``, ``skipped`` (finished before), ``done``, ``failed`` or ``interrupted``.
        run_dir: the run's directory, when known.
        seconds: how long it ran.
        log: the file holding its output.

    Example:
        >>> SweepRun(1, {"lr": 0.1}, ["tdl", "fit", "--lr=0.1"]).label()
        'lr=0.1'
    """

    index: int
    point: dict[str, Any]
    command: list[str]
    status: str = "planned"
    run_dir: Path | None = None
    seconds: float | None = None
    log: Path | None = None

    def label(self) -> str:
        """The swept values in short: ``sigma_w=1.5 depth=8`` (``run.experiment`` left out).

        Example:
            >>> SweepRun(2, {"a.depth": 8, "run.experiment": "x"}, []).label()
            'depth=8'
        """
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.point.items() if k != EXPERIMENT_KEY)


@dataclass
class SweepReport:
    """What :func:`~tdl_lightning.sweep.run_sweep` did: every run with its status, and whether it
    was interrupted.

    Example:
        >>> report = SweepReport("eoc", Path("runs/eoc"), [SweepRun(1, {}, [], status="done")])
        >>> report.count("done"), report.interrupted
        (1, False)
    """

    name: str
    runs_dir: Path
    runs: list[SweepRun]
    interrupted: bool = False

    def count(self, status: str) -> int:
        """How many runs have ``status``.

        Example:
            >>> SweepReport("s", Path("runs/s"), [SweepRun(1, {}, [], status="failed")]).count("done")
            0
        """
        return sum(run.status == status for run in self.runs)


def plan_sweep(
    config: str | Path | SweepConfig, max_runs: int | None = None, seed: int = 0
) -> tuple[SweepConfig, SweepReport]:
    """Expand a sweep and mark the runs that already finished (``skipped``); nothing is run.

    Example:
        >>> sweep, report = plan_sweep("experiments/sweeps/edge_of_chaos.yaml")  # doctest: +SKIP
        >>> [run.status for run in report.runs][:2]  # doctest: +SKIP
        ['planned', 'planned']
    """
    sweep = config if isinstance(config, SweepConfig) else SweepConfig.load(config)
    points = expand_sweep(sweep, max_runs=max_runs, seed=seed)
    first = build_command(sweep, points[0]) if points else []
    for file in config_files(first):
        if not file.is_file():
            raise ConfigError(
                f"the sweep's command reads {file}, which is not there from {Path.cwd()}: run tdl sweep "
                "from the repository root (command paths are relative to it, as for `wandb agent`)"
            )
    runs_dir = runs_root(first, fixed_options(first)) / sweep.experiment
    finished = find_finished_runs(runs_dir)
    runs = []
    for index, point in enumerate(points, start=1):
        command = build_command(sweep, point)
        run = SweepRun(index, point, command)
        wanted = expected_settings(command)
        match = next((f for f in finished if config_matches(f[1], wanted)), None)
        if match is not None:
            finished.remove(match)  # one finished run stands for one point: duplicates run again
            run.status, run.run_dir = "skipped", match[0]
        runs.append(run)
    return sweep, SweepReport(sweep.name, runs_dir, runs)
