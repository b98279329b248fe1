"""Run directories and the default loggers: W&B (offline unless told otherwise) and a local CSV.

Every run gets its own directory ``<root>/<experiment>/<run id>/`` holding ``config.yaml``,
``metrics.csv``, ``summary.json``, ``checkpoints/``, the plugins' files and the W&B run files
(``wandb/offline-run-*``), so two runs never write into each other's files.

Example:
    >>> run = Run.create(RunSettings(experiment="demo", root="/tmp/runs"))
    >>> run.dir.parent.name, run.dir.name == run.id
    ('demo', True)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

__all__ = ["Run", "RunSettings", "default_loggers", "find_wandb_logger", "wandb_mode"]


@dataclass
class RunSettings:
    """Where a run goes and how it shows up in W&B (the ``run:`` section of a config).

    Args:
        experiment: the experiment's name, used as the W&B ``group`` and as a folder name;
            defaults to the config file's name.
        tags: W&B tags, added to the automatic ones (task, architecture, data).
        root: folder under which run directories are made.
        project: W&B project.
        wandb: log to W&B besides the local CSV.

    Example:
        >>> RunSettings().project
        'tdl-lightning'
    """

    experiment: str | None = None
    tags: list[str] = field(default_factory=list)
    root: str = "runs"
    project: str = "tdl-lightning"
    wandb: bool = True


@dataclass
class Run:
    """One run's identity: its id, experiment name and directory.

    Example:
        >>> run = Run(id="20260101-000000-abcd", experiment="lenet_mnist", dir=Path("runs/x"))
        >>> run.name
        'lenet_mnist-20260101-000000-abcd'
    """

    id: str
    experiment: str
    dir: Path
    tags: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, settings: RunSettings, experiment: str | None = None) -> Run:
        """A new run with a fresh id (time stamp plus random suffix); nothing is written yet.

        Under ``wandb agent`` (or with ``WANDB_RUN_ID`` set, e.g. to share one id across the nodes
        of a multi-node job) the id W&B gives is used, so the run directory and W&B run match.

        Example:
            >>> Run.create(RunSettings(), experiment="x").experiment
            'x'
        """
        run_id = os.environ.get("WANDB_RUN_ID") or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        name = settings.experiment or experiment or "run"
        return cls(run_id, name, Path(settings.root) / name / run_id, list(settings.tags))

    @property
    def name(self) -> str:
        """The W&B run name: ``<experiment>-<id>``."""
        return f"{self.experiment}-{self.id}"

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``summary.json`` (final metrics and where things went) into the run directory.

        Example:
            >>> import tempfile
            >>> run = Run("id", "demo", Path(tempfile.mkdtemp()))
            >>> run.write_summary({"val/acc": 0.9}).name
            'summary.json'
        """
        path = self.dir / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return path


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else ``online`` when ``WANDB_API_KEY`` is set, else ``offline``.

    Example:
        >>> wandb_mode() in ("online", "offline", "disabled", "dryrun")
        True
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def default_loggers(run: Run, settings: RunSettings, job_type: str) -> list[Logger]:
    """The loggers a run gets by default: a CSV of metrics in the run directory, then W&B.

    The CSV logger comes first, so Lightning puts ``config.yaml`` and ``checkpoints/`` straight into
    the run directory.

    Example:
        >>> import tempfile
        >>> run = Run.create(RunSettings(experiment="demo", root=tempfile.mkdtemp(), wandb=False))
        >>> [type(lg).__name__ for lg in default_loggers(run, RunSettings(wandb=False), "fit")]
        ['CSVLogger']
    """
    csv_logger = CSVLogger(save_dir=str(run.dir), name="", version="")
    _ = csv_logger.experiment  # opens metrics.csv now, before config.yaml is written beside it
    loggers: list[Logger] = [csv_logger]
    if settings.wandb:
        loggers.append(
            WandbLogger(
                name=run.name,
                id=run.id,
                save_dir=str(run.dir),
                project=settings.project,
                group=run.experiment,
                job_type=job_type,
                tags=run.tags,
                mode=wandb_mode(),
            )
        )
    return loggers


def find_wandb_logger(loggers: list[Logger]) -> WandbLogger | None:
    """The first W&B logger among ``loggers``, or ``None``.

    Example:
        >>> find_wandb_logger([]) is None
        True
    """
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
