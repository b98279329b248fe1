"""Runs: the run directory (id, lock, files, ``summary.json``), its loggers, checkpoints and resume.

The one reader and writer of run directories that ``tdl fit``, ``tdl compare`` and ``tdl sweep``
share. Every run gets its own directory ``<root>/<experiment>/<run id>/`` holding ``config.yaml``,
``metrics.csv``, ``summary.json``, ``checkpoints/``, the plugins' files and the W&B run files
(``wandb/offline-run-*``), so two runs never write into each other's files.

Example:
    >>> run = Run.create(RunSettings(experiment="demo", root="/tmp/runs"))
    >>> run.dir.parent.name, run.dir.name == run.id
    ('demo', True)
"""

from typing import TYPE_CHECKING, Any

from tdl_lightning.runs.directory import (
    Run,
    RunSettings,
    launch_rank,
    read_summary,
    strict_json,
    unfinished_runs,
    write_json,
)
from tdl_lightning.runs.wandb_mode import WandbMode, decide_wandb_mode, resolve_wandb_mode

if TYPE_CHECKING:
    from tdl_lightning.runs.loggers import default_loggers, find_wandb_logger

__all__ = [
    "Run",
    "RunSettings",
    "WandbMode",
    "decide_wandb_mode",
    "default_loggers",
    "find_wandb_logger",
    "launch_rank",
    "read_summary",
    "resolve_wandb_mode",
    "strict_json",
    "unfinished_runs",
    "wandb_mode",
    "write_json",
]


def wandb_mode() -> str:
    """The W&B mode the rule of :func:`decide_wandb_mode` picks here (no network call).

    Example:
        >>> wandb_mode() in ("online", "offline", "disabled", "dryrun")
        True
    """
    return decide_wandb_mode().mode


def __getattr__(name: str) -> Any:
    """The loggers (and Lightning with them) load on first use: ``tdl compare`` and ``tdl sweep``,
    which only read run directories, start at once."""
    if name in ("default_loggers", "find_wandb_logger"):
        from tdl_lightning.runs import loggers

        return getattr(loggers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
