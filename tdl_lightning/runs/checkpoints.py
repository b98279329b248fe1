"""Checkpoints a run can trust: atomic writes, a ``last.ckpt`` kept fresh, a safe first load.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it into
  place, so a full disk or a kill never leaves a truncated file under a checkpoint's name.
- :func:`checkpoint_callbacks` keeps ``checkpoints/last.ckpt`` up to date at every epoch end (a link
  to the epoch's checkpoint) and every few minutes of training (Lightning's
  ``ModelCheckpoint(train_time_interval=...)``).
- :func:`check_checkpoint` loads a checkpoint with ``weights_only=True`` before Lightning does:
  a file that is not a checkpoint, or one that needs arbitrary code to unpickle, is refused
  with one line naming the file.

Example:
    >>> [type(c).__name__ for c in checkpoint_callbacks("runs/x/checkpoints", minutes=10)]
    ['RunCheckpoint', 'RunCheckpoint']
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from tdl_lightning.errors import ConfigError, TDLError

__all__ = ["AtomicCheckpointIO", "DiskFullError", "RunCheckpoint", "check_checkpoint", "checkpoint_callbacks"]


class DiskFullError(TDLError, OSError):
    """A checkpoint could not be written because the disk (or quota) is full.

    Example:
        >>> isinstance(DiskFullError("no space"), OSError)
        True
    """


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic writes: a temporary file in the same folder, then rename.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.ckpt"
        >>> AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
        >>> sorted(p.name for p in path.parent.iterdir())
        ['a.ckpt']
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            cause = err if isinstance(err, OSError) else err.__cause__ or err.__context__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"no space left to write the checkpoint {path}: free disk space (or raise the quota), "
                    f"then continue the run with `tdl fit --resume {path.parent.parent}`"
                ) from err
            raise


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with epoch-end checkpoints spaced in time, and its
    ``state_key`` built once.

    Args:
        min_seconds: an epoch-end checkpoint is skipped when the callback saved one less than this
            many seconds ago, except at the last epoch (and a training that stops between epochs
            is saved in ``on_train_end``), so a finished run's last checkpoint is its final state.
            With epochs of one step (full-batch gradient descent) Lightning would otherwise write a
            checkpoint, optimizer state and plugin histories included, after every step. The
            decision is rank zero's, broadcast.
        *args, **kwargs: ``ModelCheckpoint``'s.

    Lightning names every callback hook it calls after ``state_key`` (its profiler's action name),
    and ``ModelCheckpoint`` builds that key from its arguments each time: about ten times a
    training step per checkpoint callback. The arguments do not change after construction, so
    neither does the key. It is the key ``ModelCheckpoint`` gives (class name included), so runs
    checkpointed by either class resume with the other.

    Example:
        >>> RunCheckpoint(dirpath="ckpts").state_key == ModelCheckpoint(dirpath="ckpts").state_key
        True
    """

    def __init__(self, *args: Any, min_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_seconds = min_seconds
        self._saved_at: float | None = None  # time.monotonic() of the last save

    @property
    @override
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key")
        if key is None:
            own = ModelCheckpoint.state_key.fget(self)  # type: ignore[attr-defined]
            key = self.__dict__["_state_key"] = "ModelCheckpoint" + own.removeprefix(type(self).__qualname__)
        return key

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning's test of a save due at this batch, at every batch of both callbacks, reads the
        # trainer's state and step first (5.4 ms of a 1.6 s loaded LeNet-5 epoch; 1.3 ms now): skipped
        # where no save by steps is asked for and no time interval has passed on a single process (across
        # processes the time decision is rank zero's, broadcast at every batch, as in Lightning)
        if pl_module.automatic_optimization and self._every_n_train_steps < 1:
            interval = self._train_time_interval
            if interval is None:
                return
            checked = self._last_time_checked
            if (
                trainer.world_size == 1
                and checked is not None
                and time.monotonic() - checked < interval.total_seconds()
            ):
                return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._saved_recently(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # where validation is not at every epoch end, Lightning saves the epoch's checkpoint here
        if not self._saved_recently(trainer):
            super().on_validation_end(trainer, pl_module)

    def _saved_recently(self, trainer: L.Trainer) -> bool:
        """Whether to skip this epoch end's checkpoint: a save was recent, and training goes on."""
        recent = self._saved_at is not None and time.monotonic() - self._saved_at < self.min_seconds
        return bool(trainer.strategy.broadcast(recent and not _last_epoch(trainer)))

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's skip test includes "already saved at this step"
        if self.min_seconds > 0 and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)

    @override
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._saved_at = time.monotonic()


def _last_epoch(trainer: L.Trainer) -> bool:
    """Whether the epoch now ending is the fit's last (``max_epochs``, ``max_steps`` or a stop request)."""
    max_epochs, max_steps = trainer.max_epochs or -1, trainer.max_steps
    return (
        trainer.should_stop
        or (max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs)
        or (max_steps > 0 and trainer.global_step >= max_steps)
    )


def checkpoint_callbacks(dirpath: str | Path, minutes: float, seconds: float = 0.0) -> list[ModelCheckpoint]:
    """Lightning's default checkpointing plus ``last.ckpt``, also rewritten every ``minutes`` of training.

    At an epoch end (one at least ``seconds`` after the previous save, and the end of training) the
    epoch's checkpoint is written once and ``last.ckpt`` links to it (``save_last="link"``: a
    relative symbolic link, a copy where links are not allowed); between epochs, every
    ``minutes``, ``last.ckpt`` is written as a file of its own.

    Example:
        >>> checkpoint_callbacks("ckpts", minutes=0)[0].save_last
        'link'
    """
    callbacks: list[ModelCheckpoint] = [
        RunCheckpoint(
            dirpath=str(dirpath), save_last="link", enable_version_counter=False, min_seconds=seconds
        )
    ]
    if minutes > 0:
        callbacks.append(
            RunCheckpoint(
                dirpath=str(dirpath),
                save_top_k=0,
                save_last=True,
                enable_version_counter=False,
                train_time_interval=dt.timedelta(minutes=minutes),
            )
        )
    return callbacks


def check_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """Load ``path`` on the CPU, with ``weights_only=True`` unless ``trusted``; refuse what fails.

    Raises:
        ConfigError: the file does not load (empty, truncated, text, not a checkpoint, or it
            holds objects that only an unsafe load can build).

    Example:
        >>> import tempfile
        >>> text = Path(tempfile.mkdtemp()) / "notes.ckpt"
        >>> _ = text.write_text("hello")
        >>> check_checkpoint(text)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: .../notes.ckpt is not a tdl checkpoint ...
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in reason:
            reason = "it holds objects that only an unsafe load (arbitrary code) can build"
        raise ConfigError(
            f"{path} is not a tdl checkpoint (torch.load with weights_only=True fails: {reason[:160]}): "
            "give the .ckpt file of a run (runs/<experiment>/<run id>/checkpoints/), or, only for a "
            "file you trust, add --weights_only false"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a tdl checkpoint (it holds no state_dict): give a run's .ckpt file")
    return checkpoint
