"""The run directory: its id, its lock, ``summary.json`` and the search for a run to resume.

Every run gets its own directory ``<root>/<experiment>/<run id>/`` holding ``config.yaml``,
``metrics.csv``, ``summary.json``, ``checkpoints/``, the plugins' files and the W&B run files
(``wandb/offline-run-*``), so two runs never write into each other's files. A fit *claims* its
directory before writing anything: a directory that already holds a run is refused unless the
fit resumes it, and a lock file (``.lock``, holding the process id) refuses a second fit of one
run while the first is alive.

Example:
    >>> run = Run.create(RunSettings(experiment="demo", root="/tmp/runs"))
    >>> run.dir.parent.name, run.dir.name == run.id
    ('demo', True)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdl_lightning.errors import ConfigError

__all__ = [
    "Run",
    "RunSettings",
    "figure_folders",
    "is_run_dir",
    "launch_rank",
    "read_summary",
    "strict_json",
    "unfinished_runs",
    "write_json",
]

SUMMARY = "summary.json"
CONFIG = "config.yaml"  # LightningCLI's resolved config
METRICS = "metrics.csv"  # the local CSV logger's rows
HPARAMS = "hparams.yaml"  # Lightning's hyperparameters file, in runs written by plain Lightning loggers
PLUGINS = "plugins"  # each plugin's folder plugins/<name>/: arrays, figures, history
PLUGIN_HISTORIES = f"{PLUGINS}/*/history.json"  # each plugin's scalars, one entry per probe
CHECKPOINTS = "checkpoints"
RUN_MARKERS = (SUMMARY, CONFIG, METRICS, HPARAMS)  # a folder holding one of these is a run directory
LOCK = ".lock"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# the run directory of rank zero, handed to the processes that Lightning's DDP launcher starts
_RUN_DIR_ENV = "TDL_RUN_DIR"


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
        id: the run's id (folder name and W&B run id); default ``WANDB_RUN_ID`` or a fresh
            time stamp. A fit with the id of an existing run is refused unless it resumes it.
        checkpoint_minutes: besides at every epoch end, ``checkpoints/last.ckpt`` is rewritten
            after this many minutes of training, so a killed run loses minutes, not an epoch
            (0: at epoch ends only).
        checkpoint_seconds: the epoch-end checkpoints are at least this many seconds of training
            apart (the end of training always gets one): a full-batch run, whose epochs are one
            step each, does not write a checkpoint at every step (0: at every epoch end).

    Example:
        >>> RunSettings().project
        'tdl-lightning'
    """

    experiment: str | None = None
    tags: list[str] = field(default_factory=list)
    root: str = "runs"
    project: str = "tdl-lightning"
    wandb: bool = True
    id: str | None = None
    checkpoint_minutes: float = 10.0
    checkpoint_seconds: float = 5.0


def launch_rank() -> int:
    """This process's global rank as the launcher (torchrun, SLURM, Lightning's DDP) set it, else 0.

    Example:
        >>> launch_rank() >= 0
        True
    """
    for name in ("RANK", "SLURM_PROCID", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    # Lightning's own DDP launcher starts the other processes with LOCAL_RANK (and NODE_RANK) set
    return int(os.environ.get("LOCAL_RANK", "0") or 0) + int(os.environ.get("NODE_RANK", "0") or 0)


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
    resumed: bool = False
    wandb_mode: Any = None  # the WandbMode the loggers chose
    _owns_lock: bool = field(default=False, repr=False)
    _made_dir: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, settings: RunSettings, experiment: str | None = None) -> Run:
        """A run named by ``settings.id``, ``WANDB_RUN_ID`` or a fresh id; nothing is written yet.

        ``WANDB_RUN_ID`` (set by ``wandb agent``, or exported to share one id across the nodes of
        a multi-node job) names the run when ``settings.id`` does not, so the run directory and
        the W&B run match. In a DDP process that is not rank zero, the run is rank zero's.

        Example:
            >>> Run.create(RunSettings(id="r1"), experiment="x").dir.as_posix()
            'runs/x/r1'
        """
        name = settings.experiment or experiment or "run"
        inherited = os.environ.get(_RUN_DIR_ENV)
        if launch_rank() != 0 and inherited:
            path = Path(inherited)
            return cls(path.name, name, path, list(settings.tags))
        run_id = settings.id or os.environ.get("WANDB_RUN_ID") or _fresh_id()
        if not _ID.match(run_id):
            raise ConfigError(
                f"run id {run_id!r} is not a valid run id: use letters, digits, '-', '_' and '.' "
                "(it names a folder and the W&B run)"
            )
        return cls(run_id, name, Path(settings.root) / name / run_id, list(settings.tags))

    @property
    def name(self) -> str:
        """The W&B run name: ``<experiment>-<id>``."""
        return f"{self.experiment}-{self.id}"

    def claim(self, resume: bool = False) -> None:
        """Make (or, to resume, reopen) the run directory and take its lock; refuse what would clash.

        Raises:
            ConfigError: the run exists and ``resume`` is false; another live process holds the
                run; or the directory cannot be written.

        Example:
            >>> import tempfile
            >>> run = Run.create(RunSettings(id="a", root=tempfile.mkdtemp()), "demo")
            >>> run.claim(); (run.dir / ".lock").is_file()
            True
            >>> again = Run.create(RunSettings(id="a", root=str(run.dir.parents[1])), "demo")
            >>> again.claim()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            tdl_lightning.errors.ConfigError: run a is being written by process ... (this one) ...
            >>> run.release()
        """
        if launch_rank() != 0:
            return
        exists = self.dir.is_dir() and any(self.dir.iterdir())
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self._made_dir = not self.dir.exists()
            self.dir.mkdir(exist_ok=True)
            self._lock()
        except OSError as err:  # read-only, no permission, a file where a folder should be
            raise ConfigError(
                f"cannot write the run directory {self.dir}: {err.strerror or err}: "
                "pick a writable folder with --run.root"
            ) from None
        if exists and not resume:
            self.release()
            raise ConfigError(
                f"run {self.id} already exists in {self.dir}: continue it with "
                f"`tdl fit --resume {self.dir}`, or start a new run with another --run.id "
                "(or unset WANDB_RUN_ID)"
            )
        self.resumed = exists
        os.environ[_RUN_DIR_ENV] = str(self.dir)

    def _lock(self) -> None:
        lock = self.dir / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is not None:
                    who = " (this one)" if holder == os.getpid() else ""
                    raise ConfigError(
                        f"run {self.id} is being written by process {holder}{who} on this machine: "
                        "wait for it to end, or start a new run with another --run.id"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a process that died (kill -9)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self._owns_lock = True
            return

    def release(self) -> None:
        """Give the lock back (the run directory stays).

        Example:
            >>> import tempfile
            >>> run = Run.create(RunSettings(id="r", root=tempfile.mkdtemp()), "demo")
            >>> run.claim(); run.release(); (run.dir / ".lock").exists(), run.dir.is_dir()
            (False, True)
        """
        if self._owns_lock:
            (self.dir / LOCK).unlink(missing_ok=True)
            self._owns_lock = False

    def discard(self) -> None:
        """Remove the run directory if this process made it (a start that failed before any result).

        Example:
            >>> import tempfile
            >>> run = Run.create(RunSettings(id="r", root=tempfile.mkdtemp()), "demo")
            >>> run.claim(); run.discard(); run.dir.exists(), run.dir.parent.exists()
            (False, False)
        """
        self.release()
        if self._made_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            for folder in (self.dir.parent, self.dir.parent.parent):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: no other run, no other experiment

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write ``summary.json`` (final metrics and where things went) into the run directory.

        Example:
            >>> import tempfile
            >>> run = Run("id", "demo", Path(tempfile.mkdtemp()))
            >>> run.write_summary({"val/acc": 0.9}).name
            'summary.json'
        """
        return write_json(self.dir / SUMMARY, summary)


def _fresh_id() -> str:
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _lock_holder(lock: Path) -> int | None:
    """The live process that holds ``lock``, or ``None`` when the lock is stale or unreadable."""
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def strict_json(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by ``None``, so it dumps as strict JSON.

    Example:
        >>> strict_json({"a": [1.0, float("nan")], "b": float("inf")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as strict JSON (``null`` for NaN/inf), atomically: a temporary file, then rename.

    Example:
        >>> import tempfile
        >>> path = write_json(Path(tempfile.mkdtemp()) / "x.json", {"loss": float("nan")})
        >>> path.read_text()
        '{\\n  "loss": null\\n}'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict_json(data), indent=2, sort_keys=True, default=str, allow_nan=False)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` as a dict, or ``None`` when it is missing or unreadable.

    Example:
        >>> read_summary(Path("/nonexistent")) is None
        True
    """
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: it holds ``summary.json``, ``config.yaml``, ``metrics.csv``
    or ``hparams.yaml``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> is_run_dir(folder), bool(write_json(folder / SUMMARY, {})), is_run_dir(folder)
        (False, True, True)
    """
    return any((Path(path) / marker).is_file() for marker in RUN_MARKERS)


def figure_folders(run_dir: Path) -> list[str]:
    """The folders of a run that hold figures (``plugins/<name>/`` with a PNG), relative to the run
    directory, sorted.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "plugins" / "pinn").mkdir(parents=True)
        >>> _ = (run / "plugins/pinn/solution_step0000008.png").write_bytes(b"")
        >>> (run / "plugins" / "hessian").mkdir()  # arrays only: no figure
        >>> figure_folders(run)
        ['plugins/pinn/']
    """
    folders = sorted(p for p in (Path(run_dir) / PLUGINS).glob("*/") if any(p.glob("*.png")))
    return [f"{PLUGINS}/{p.name}/" for p in folders]


def unfinished_runs(experiment_dir: Path) -> list[Path]:
    """The runs of one experiment that can be resumed, newest first: a checkpoint and no finished summary.

    Example:
        >>> unfinished_runs(Path("/nonexistent"))
        []
    """
    if not experiment_dir.is_dir():
        return []
    found = []
    for run_dir in experiment_dir.iterdir():
        summary = read_summary(run_dir) or {}
        if summary.get("status", "finished") != "finished" or not (run_dir / SUMMARY).exists():
            checkpoints = list((run_dir / CHECKPOINTS).glob("*.ckpt"))
            if checkpoints:
                found.append((max(c.stat().st_mtime for c in checkpoints), run_dir))
    return [run_dir for _, run_dir in sorted(found, reverse=True)]
