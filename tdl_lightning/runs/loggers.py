"""The default loggers of a run: a local ``metrics.csv`` (appended on resume) and W&B.

Example:
    >>> import tempfile
    >>> from tdl_lightning.runs.directory import Run, RunSettings
    >>> run = Run.create(RunSettings(experiment="demo", root=tempfile.mkdtemp(), wandb=False))
    >>> [type(lg).__name__ for lg in default_loggers(run, RunSettings(wandb=False), "fit")]
    ['RunCSVLogger']
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from tdl_lightning.runs.directory import Run, RunSettings
from tdl_lightning.runs.quiet import hide_wandb_banner
from tdl_lightning.runs.wandb_mode import INIT_TIMEOUT_S, resolve_wandb_mode

__all__ = [
    "RunCSVLogger",
    "default_loggers",
    "find_wandb_logger",
    "keep_metrics_before",
    "metrics_rows",
    "resume_step",
    "set_aside_offline_runs",
]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that continues an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``metrics.csv`` straight into the run directory, appending to what is there.

    Example:
        >>> import tempfile
        >>> RunCSVLogger(tempfile.mkdtemp()).name
        ''
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")

    @property
    def experiment(self) -> ExperimentWriter:
        if not isinstance(self._experiment, ExperimentWriter):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def keep_metrics_before(path: Path, step: int) -> int:
    """Cut the rows of ``metrics.csv`` logged at ``step`` or later (after the checkpoint a run resumes from).

    The resumed run logs those steps again, so each step is in the file once. Returns how many
    rows were cut.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = path.write_text("loss,step\\n1.0,0\\n0.5,1\\n0.4,1\\n0.2,2\\n")
        >>> keep_metrics_before(path, 2), path.read_text().splitlines()[-1]
        (1, '0.4,1')
    """
    if not path.is_file():
        return 0
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
        header = list(rows[0].keys()) if rows else []
    kept = [row for row in rows if not (row.get("step") or "").isdigit() or int(row["step"]) < step]
    if len(kept) == len(rows):
        return 0
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
    partial.replace(path)
    return len(rows) - len(kept)


def resume_step(checkpoint: dict[str, Any]) -> int:
    """The logging step a run resumes at (Lightning logs by batches that stepped).

    With one optimizer that is ``global_step``: the ``_batches_that_stepped`` a checkpoint stores
    lags by one when it was saved during an epoch's closing validation (Lightning adds the one
    back on restore). With several optimizers (manual optimisation, e.g. a GAN) ``global_step``
    counts each optimizer's steps, so the stored count is used.

    Example:
        >>> resume_step({"global_step": 80, "optimizer_states": [{}],
        ...              "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 79}}}})
        80
    """
    loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    if len(checkpoint.get("optimizer_states", [None])) == 1 or "_batches_that_stepped" not in loops:
        return int(checkpoint.get("global_step", 0))
    return int(loops["_batches_that_stepped"])


def default_loggers(run: Run, settings: RunSettings, job_type: str) -> list[Logger]:
    """The loggers a run gets by default: a CSV of metrics in the run directory, then W&B.

    The CSV logger comes first, so Lightning puts ``config.yaml`` and ``checkpoints/`` straight into
    the run directory. W&B writes all its files into the run directory too, resumes the run's
    W&B run when the fit resumes (``resume="allow"``) and gives up after 30 s without a server.
    """
    csv_logger = RunCSVLogger(run.dir)
    _ = csv_logger.experiment  # opens metrics.csv now, before config.yaml is written beside it
    loggers: list[Logger] = [csv_logger]
    if settings.wandb:
        import wandb

        run.wandb_mode = resolve_wandb_mode()
        kwargs: dict[str, Any] = {"resume": "allow"} if run.resumed else {}
        if run.resumed and run.wandb_mode.mode in ("offline", "dryrun"):
            set_aside_offline_runs(run.dir)
        # processes that DDP spawns attach to this W&B run and take its files' folder (media
        # included) from WANDB_DIR, not from the logger: without it they write into ./wandb
        os.environ["WANDB_DIR"] = str(run.dir.resolve())
        wandb_settings = wandb.Settings(init_timeout=INIT_TIMEOUT_S)
        if hide_wandb_banner(run.wandb_mode.mode):
            wandb_settings.silent = True  # offline, its banner repeats the report (see runs/quiet.py)
        wandb_logger = WandbLogger(
            name=run.name,
            id=run.id,
            save_dir=str(run.dir.resolve()),  # absolute: the W&B service has a cwd of its own
            dir=str(run.dir.resolve()),
            project=settings.project,
            group=run.experiment,
            job_type=job_type,
            tags=run.tags,
            mode=run.wandb_mode.mode,
            settings=wandb_settings,
            **kwargs,
        )
        # Lightning passes anonymous=None, which W&B 0.31 answers with a deprecation warning
        if wandb_logger._wandb_init.get("anonymous") is None:
            wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers


def set_aside_offline_runs(run_dir: Path) -> list[Path]:
    """Move a resumed run's earlier W&B offline runs to ``wandb/superseded/`` (kept, not synced).

    W&B keeps little of a killed process's records (a 7-byte ``.wandb`` file was measured after a
    kill -9 half a second past a checkpoint), so a resumed offline run logs the whole history up
    to its checkpoint again, from ``metrics.csv`` (see ``RunLifecycle``): the newest
    ``offline-run-*`` holds every step once, and ``wandb sync <run dir>/wandb/offline-run-*``
    uploads exactly that.

    Example:
        >>> import tempfile
        >>> set_aside_offline_runs(Path(tempfile.mkdtemp()))
        []
    """
    moved = []
    for offline in sorted((run_dir / "wandb").glob("offline-run-*")):
        target = run_dir / "wandb" / "superseded" / offline.name
        target.parent.mkdir(parents=True, exist_ok=True)
        offline.rename(target)
        moved.append(target)
    return moved


def metrics_rows(path: Path) -> list[tuple[int, dict[str, float]]]:
    """``(step, metrics)`` of every row of ``metrics.csv``, empty cells left out.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = path.write_text("epoch,loss,step\\n0,1.5,0\\n0,,1\\n")
        >>> metrics_rows(path)
        [(0, {'epoch': 0.0, 'loss': 1.5}), (1, {'epoch': 0.0})]
    """
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [
            (int(row["step"]), {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)})
            for row in csv.DictReader(file)
            if (row.get("step") or "").isdigit()
        ]


def find_wandb_logger(loggers: list[Logger]) -> WandbLogger | None:
    """The first W&B logger among ``loggers``, or ``None``.

    Example:
        >>> find_wandb_logger([]) is None
        True
    """
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
