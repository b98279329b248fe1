"""``tdl fit --resume runs/<experiment>/<run id>``: continue a run in its own directory.

The run's saved ``config.yaml`` is the base, any other options go on top, and the run keeps its
id, directory, W&B run and last checkpoint (``checkpoints/last.ckpt``, or the newest ``.ckpt``).

Example:
    >>> resume_arguments(["fit", "--trainer.max_epochs", "3"])
    (['fit', '--trainer.max_epochs', '3'], None)
"""

from __future__ import annotations

from pathlib import Path

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.directory import CHECKPOINTS, CONFIG, unfinished_runs

__all__ = ["latest_checkpoint", "resume_arguments", "resolve_last"]


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
