"""What a run does at a checkpoint and at an interrupt, as one Lightning callback.

- At every checkpoint it flushes ``metrics.csv``, so a kill -9 after a checkpoint loses no row
  that the checkpoint has seen (a resumed run cuts the rows after it: they are logged again).
- Ctrl-C (SIGINT), SIGTERM and SIGUSR1 (SLURM's pre-emption signals) stop training at the end
  of the current batch, through Lightning's own SIGTERM handling (its ``SignalConnector`` raises
  ``SIGTERMException`` there), and save ``checkpoints/last.ckpt``. A second Ctrl-C stops at once
  (Lightning's graceful shutdown of a ``KeyboardInterrupt``). SIGUSR1 is left to Lightning where
  SLURM's auto-requeue handles it.
- Under DDP no collective runs inside a signal handler (Lightning's handler broadcasts there, and
  a rank that gets the signal twice, or in the middle of another collective, then waits for ever):
  the handler only notes the signal, and at the end of every training batch the ranks agree (one
  all-reduce of the noted signal) and all stop at that batch together.

Example:
    >>> RunLifecycle().interrupted_by is None
    True
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from tdl_lightning.runs.loggers import find_wandb_logger

__all__ = ["RunLifecycle"]


class RunLifecycle(L.Callback):
    """Flushes the CSV at checkpoints and saves a checkpoint when the run is interrupted.

    Args:
        checkpoint_dir: where the interrupt checkpoint ``last.ckpt`` goes.

    Example:
        >>> RunLifecycle("runs/x/checkpoints").checkpoint_dir.name
        'checkpoints'
    """

    def __init__(self, checkpoint_dir: str | Path = "checkpoints") -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.replay: list[tuple[int, dict[str, float]]] = []  # metrics.csv rows a resumed W&B run logs again
        self.interrupted_by: int | None = None
        self.interrupt_checkpoint: Path | None = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replay_history(trainer)
        self._handle_signals(distributed=trainer.world_size > 1, announce=trainer.is_global_zero)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size == 1:
            return  # Lightning's handler has stopped the batch loop already
        noted = torch.tensor([self.interrupted_by or 0], dtype=torch.float32, device=pl_module.device)
        signum = int(trainer.strategy.reduce(noted, reduce_op="max"))  # every rank, every batch
        if signum:
            self.interrupted_by = self.interrupted_by or signum
            raise SIGTERMException  # on every rank at this batch: on_exception saves the checkpoint

    def _replay_history(self, trainer: L.Trainer) -> None:
        """Log the resumed run's history up to its checkpoint into its new W&B offline run."""
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is not None and trainer.is_global_zero:
            for step, metrics in self.replay:
                wandb_logger.log_metrics(metrics, step=step)
        self.replay = []

    def _handle_signals(self, distributed: bool = False, announce: bool = True) -> None:
        stop_at_next_batch = signal.getsignal(signal.SIGTERM)  # Lightning's SignalConnector handler
        if not callable(stop_at_next_batch):
            return
        signums = [signal.SIGINT, signal.SIGTERM]
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signums.append(signal.SIGUSR1)
        # under DDP the ranks agree at the batch's end (on_train_batch_end): nothing collective here
        handler = self._noting(None if distributed else stop_at_next_batch, announce)
        try:
            for signum in signums:
                signal.signal(signum, handler)
        except ValueError:  # not the main thread: Lightning handles what it can
            return

    def _noting(self, stop_at_next_batch: Any, announce: bool = True) -> Any:
        def handle(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self.interrupted_by is not None:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            if self.interrupted_by is None:
                self.interrupted_by = signum
                name = signal.Signals(signum).name
                if announce:
                    print(
                        f"tdl: {name}: stopping after this batch (saving a checkpoint)",
                        file=sys.stderr,
                        flush=True,
                    )
            if stop_at_next_batch is not None:
                stop_at_next_batch(signal.SIGTERM, frame)

        return handle

    @override
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # what the checkpoint has seen is on disk too, even if the process is killed next
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger) and trainer.is_global_zero:
                logger.save()

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted_by = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.interrupted_by = self.interrupted_by or signal.SIGTERM
        else:
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        self.interrupt_checkpoint = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(self.interrupt_checkpoint)
