"""``tdl fit --resume runs/<experiment>/<run id>``: continue a run in its own directory.

The run's saved ``config.yaml`` is the base, any other options go on top, and the run keeps its
id, directory, W&B run and last checkpoint (``checkpoints/last.ckpt``, or the newest ``.ckpt``).

Example:
    >>> resume_arguments(["fit", "--trainer.max_epochs", "3"])
    (['fit', '--trainer.max_epochs', '3'], None)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.directory import CHECKPOINTS, CONFIG, SUMMARY, read_summary, unfinished_runs

__all__ = [
    "check_training_left",
    "evaluated_checkpoint",
    "latest_checkpoint",
    "resume_arguments",
    "resolve_last",
]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """``checkpoints/last.ckpt`` of a run, else its newest ``.ckpt``, else ``None``.

    Example:
        >>> latest_checkpoint(Path("/nonexistent")) is None
        True
    """
    folder = Path(run_dir) / CHECKPOINTS
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resume_arguments(argv: list[str]) -> tuple[list[str], Path | None]:
    """``argv`` with ``--resume RUN_DIR`` replaced by the run's config, id, directory and checkpoint.

    Raises:
        ConfigError: ``RUN_DIR`` is not a run directory, or it has no checkpoint yet.

    Example:
        >>> resume_arguments(["fit", "--resume", "/nonexistent"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: --resume /nonexistent: not a run directory ...
    """
    rest, run_dir = [], None
    items = iter(argv)
    for item in items:
        if item == "--resume":
            run_dir = next(items, "")
        elif item.startswith("--resume="):
            run_dir = item.split("=", 1)[1]
        else:
            rest.append(item)
    if run_dir is None:
        return argv, None
    if not rest or rest[0] != "fit":
        raise ConfigError("--resume continues a training run: use it with `tdl fit --resume RUN_DIR`")
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise ConfigError(
            f"--resume {run_dir}: not a run directory (no config.yaml there): give a folder "
            "runs/<experiment>/<run id> that `tdl fit` made"
        )
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise ConfigError(
            f"--resume {run_dir}: the run has no checkpoint to continue from (it stopped before its "
            "first one): start it again as a new run"
        )
    # the saved config first, the user's options on top, the run's identity last
    identity = [
        "--run.id",
        path.name,
        "--run.root",
        str(path.parent.parent),
        "--run.experiment",
        path.parent.name,
    ]
    return [
        "fit",
        "--config",
        str(path / CONFIG),
        *rest[1:],
        *identity,
        "--ckpt_path",
        str(checkpoint),
    ], path


def evaluated_checkpoint(root: Path, experiment: str, alias: str) -> tuple[Path, Path]:
    """``(checkpoint, its run)`` that ``tdl validate|test|predict --ckpt_path last|best`` evaluates.

    Each evaluation is a run of its own, whose checkpoint callback has saved nothing, so Lightning's
    aliases would find nothing (``last``: the untrained weights, with a warning; ``best``: an error).
    Here they name the experiment's runs under ``root``: ``last`` the newest checkpoint of any of
    them, ``best`` the best checkpoint (``summary.json``'s ``best_checkpoint``) of the fit that
    finished last.

    Raises:
        ConfigError: no run of ``experiment`` has such a checkpoint.

    Example:
        >>> evaluated_checkpoint(Path("/nonexistent"), "lenet", "best")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: --ckpt_path best: no finished fit of lenet ...
    """
    folder = Path(root) / experiment
    found: list[tuple[float, Path, Path]] = []  # (when, checkpoint, run)
    for run_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        if alias == "last":
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is not None:
                found.append((checkpoint.stat().st_mtime, checkpoint, run_dir))
            continue
        summary = read_summary(run_dir) or {}
        best = Path(str(summary.get("best_checkpoint") or ""))
        if summary.get("subcommand") == "fit" and summary.get("status") == "finished" and best.is_file():
            found.append(((run_dir / SUMMARY).stat().st_mtime, best, run_dir))
    if not found:
        what = "checkpoint of a run" if alias == "last" else "finished fit"
        raise ConfigError(
            f"--ckpt_path {alias}: no {what} of {experiment} in {folder}: train one with "
            "`tdl fit`, or give the path of a .ckpt file"
        )
    _, checkpoint, run_dir = max(found, key=lambda item: item[0])
    return checkpoint, run_dir


def resolve_last(root: Path, experiment: str) -> tuple[Path, list[Path]]:
    """The newest unfinished run of ``experiment`` under ``root`` (for ``--ckpt_path last``), and the others.

    Raises:
        ConfigError: there is no unfinished run with a checkpoint.

    Example:
        >>> resolve_last(Path("/nonexistent"), "lenet")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: --ckpt_path last: no unfinished run of lenet ...
    """
    candidates = unfinished_runs(Path(root) / experiment)
    if not candidates:
        raise ConfigError(
            f"--ckpt_path last: no unfinished run of {experiment} with a checkpoint in "
            f"{Path(root) / experiment}: "
            "give a .ckpt file, or `tdl fit --resume runs/<experiment>/<run id>`"
        )
    return candidates[0], candidates[1:]


def check_training_left(
    checkpoint: Mapping[str, Any],
    path: str | Path,
    max_epochs: int | None,
    max_steps: int | None,
    max_time: str | dict[str, int] | timedelta | None = None,
) -> None:
    """Refuse a fit from ``checkpoint`` that would train nothing: it has reached ``max_epochs``,
    ``max_steps`` or ``max_time`` already (e.g. ``tdl fit --resume`` of a finished run).

    Lightning would restore the checkpoint, stop at once and end the fit with no metrics; refused
    here, before the run directory or W&B is touched, the run's files stay as they were. The limits
    are the ``Trainer``'s (``max_epochs=None`` is 1000 epochs unless ``max_steps`` is set; ``-1`` is
    no limit; ``max_time`` as ``DD:HH:MM:SS``, a dict of ``timedelta`` arguments or a ``timedelta``),
    the epochs are those Lightning counts (``epoch_progress.current.processed``), and the training
    time is that of Lightning's ``Timer`` state in the checkpoint.

    Raises:
        ConfigError: nothing is left to train; the message says which limit to raise.

    Example:
        >>> loops = {"fit_loop": {"epoch_progress": {"current": {"processed": 3}}}}
        >>> check_training_left({"loops": loops, "global_step": 60}, "last.ckpt", 5, -1)  # 2 epochs left
        >>> check_training_left({"loops": loops, "global_step": 60}, "last.ckpt", 3, -1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: last.ckpt has trained 3 epochs (step 60) and trainer.max_epochs ...
    """
    try:
        epochs = int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
        step = int(checkpoint["global_step"])
    except (KeyError, TypeError, ValueError):  # not a Lightning fit checkpoint: Lightning decides
        return
    max_steps = -1 if max_steps is None else max_steps
    if max_epochs is None:
        max_epochs = 1000 if max_steps == -1 else -1
    done = f"{path} has trained {epochs} epoch{'s' * (epochs != 1)} (step {step})"
    if max_steps != -1 and step >= max_steps:
        raise ConfigError(
            f"{done} and trainer.max_steps is {max_steps}: a fit from it would train nothing; "
            f"to continue it, give a larger --trainer.max_steps (e.g. {step + max(step // 2, 100)})"
        )
    if max_epochs != -1 and epochs >= max_epochs:
        raise ConfigError(
            f"{done} and trainer.max_epochs is {max_epochs}: a fit from it would train nothing; "
            f"to continue it, give a larger --trainer.max_epochs (e.g. {epochs + max(epochs // 2, 1)})"
        )
    trained = _training_seconds(checkpoint)
    if max_time is not None and trained is not None:
        try:
            limit = Timer(duration=max_time).time_remaining(RunningStage.TRAINING)  # nothing elapsed yet
        except (MisconfigurationException, TypeError, ValueError):  # a bad max_time: Lightning says so
            return
        if limit is not None and trained >= limit:
            raise ConfigError(
                f"{path} has trained for {_duration(trained)} (step {step}) and trainer.max_time is "
                f"{_duration(limit)}: a fit from it would train nothing; to continue it, give a "
                f"larger --trainer.max_time (e.g. {_duration(trained * 1.5 + 60)})"
            )


def _training_seconds(checkpoint: Mapping[str, Any]) -> float | None:
    """The training seconds that Lightning's ``Timer`` saved in ``checkpoint`` (``None``: no timer)."""
    try:
        return float(checkpoint["callbacks"]["Timer"]["time_elapsed"][RunningStage.TRAINING.value])
    except (KeyError, TypeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    """``seconds`` as ``DD:HH:MM:SS`` (``Trainer(max_time=...)``'s format), to the nearest second.

    Example:
        >>> _duration(90061.2)
        '01:01:01:01'
    """
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"
