"""The common shape of the project's tasks: one objective, used by training and by plugins.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from tdl_lightning.tasks import Regressor
    >>> task = Regressor(nn.Linear(3, 1))
    >>> task.loss((torch.zeros(4, 3), torch.zeros(4, 1))).shape
    torch.Size([])
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import Tensor, nn
from torchmetrics import Metric
from typing_extensions import override

from tdl_lightning.errors import ConfigError

__all__ = ["StepLossMean", "Task", "restore_cuda_availability_check"]

Batch = tuple[Tensor, Tensor]


def restore_cuda_availability_check() -> bool:
    """On a machine without a GPU, give ``torch.cuda.is_available()`` back its default, cached check.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that looking for GPUs does not
    initialise CUDA before a fork. torch then asks NVML on every call, loading its library each time,
    and Adam and AdamW call it on every step: with a CUDA build of torch on a machine with no GPU
    that was 0.45 ms a step here, about 6% of a LeNet-5 epoch on MNIST5k. Where no GPU is visible
    there is no CUDA state for a fork to inherit, so the variable is removed and the answer is
    torch's own cached one. Returns whether it was removed; with a GPU nothing changes.

    Example:
        >>> import torch
        >>> removed = restore_cuda_availability_check()
        >>> removed is False or torch.cuda.device_count() == 0
        True
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or torch.cuda.device_count() > 0:
        return False
    del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
    return True


class StepLossMean(Metric):
    """The epoch's batch-size-weighted mean loss, accumulated as Lightning's own ``self.log`` does,
    with the step's loss as the value read at a step (``_forward_cache``).

    :class:`Task` updates it at every training step (two tensor additions) and hands it to
    ``self.log`` only at the steps where something reads the step value, so the numbers are
    those of logging the loss tensor at every step, at a fraction of the cost.

    Example:
        >>> mean = StepLossMean()
        >>> mean.update(torch.tensor(1.0), 2)
        >>> mean.update(torch.tensor(4.0), 1)
        >>> float(mean.compute())
        2.0
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.total: Tensor
        self.count: Tensor
        self.add_state("total", torch.tensor(0.0, dtype=torch.get_default_dtype()), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, loss: Tensor, batch_size: int) -> None:
        """Add one step's mean ``loss`` over ``batch_size`` examples (as Lightning's epoch mean does)."""
        # in place: a state assigned anew would pass through ``nn.Module.__setattr__`` at every step;
        # ``reset`` gives each state a fresh copy of its default, so the default is never written
        self.total.add_(loss.to(self.total.dtype), alpha=batch_size)
        self.count.add_(batch_size)

    def compute(self) -> Tensor:
        """The weighted mean since the last reset (synced across processes by torchmetrics)."""
        return self.total / self.count


class Task(L.LightningModule):
    """A LightningModule around an architecture with a single objective, :meth:`loss`.

    Subclasses define :meth:`criterion` (outputs, targets -> scalar) and may add metrics in
    :meth:`update_metrics`. ``training_step``, ``validation_step`` and ``test_step`` all compute
    the same objective and log it as ``<stage>/loss``.

    Without an optimizer from the config (``tdl`` sets one), training uses Adam with lr 1e-3.

    Example:
        >>> from tdl_lightning.tasks import Classifier
        >>> from tdl_lightning.models import LeNet5
        >>> task = Classifier(LeNet5())
        >>> task(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model

    @override
    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` before and after each of the ~25 hooks of a training
        # step; through ``nn.Module.__setattr__`` (which checks for parameters, buffers and modules)
        # that was about 2% of a LeNet-5 epoch on MNIST5k on the CPU. A string is none of those.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The objective on one batch of model outputs and targets. Subclasses implement this."""
        raise NotImplementedError

    def loss(self, batch: Any) -> Tensor:
        """The training objective on ``batch = (inputs, targets)``: what plugins probe.

        A subclass may take batches of another shape (PINN: a dict of collocation points).

        Example:
            >>> from tdl_lightning.tasks import Classifier
            >>> task = Classifier(nn.Linear(4, 3), num_classes=3)
            >>> float(task.loss((torch.zeros(2, 4), torch.tensor([0, 1]))).detach()) > 0
            True
        """
        x, y = batch
        return self.criterion(self(x), y)

    def update_metrics(self, stage: str, outputs: Tensor, targets: Tensor) -> None:
        """Update the stage's metrics beyond the loss with one batch (none by default).

        Log a ``torchmetrics`` Metric once per epoch (:class:`~tdl_lightning.tasks.Classifier`
        does it at its first update after a reset), not on every step: each ``self.log`` call
        costs Lightning about a millisecond.
        """

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        x, y = batch
        outputs = self(x)
        loss = self.criterion(outputs, y)
        if stage == "train" and self._trainer is not None and self._trainer.world_size == 1:
            self._log_train_loss(loss, len(x))
        else:
            self.log(
                f"{stage}/loss",
                loss,
                on_step=stage == "train",
                on_epoch=True,
                prog_bar=True,
                sync_dist=True,
                batch_size=len(x),
            )
        self.update_metrics(stage, outputs, y)
        return loss

    def _log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        """Log ``train/loss`` on step and epoch as ``self.log(loss, on_step=True, on_epoch=True,
        prog_bar=True, sync_dist=True)`` does, with ``self.log`` called only where the step value is read.

        Each ``self.log`` call costs Lightning about a millisecond (about 10% of a LeNet-5 step on
        the CPU). The epoch mean is accumulated at every step in a :class:`StepLossMean`; the step
        value is handed over at the first step of
        an epoch, where the loggers write (``log_every_n_steps``), where the progress bar redraws,
        at the epoch's last batch and when the trainer is stopping: the metrics.csv and W&B rows,
        the bar and the ``callback_metrics`` at those steps and at the epoch's end are unchanged.
        A callback that reads ``callback_metrics["train/loss_step"]`` at other steps sees the last
        value handed over. Under DDP the loss is logged at every step as before: its step value is
        averaged over the processes, a collective that every rank must reach at the same steps,
        while the progress bar (and a stop request) can live on one rank only.
        """
        mean = self.__dict__.get("_train_loss_mean")
        if mean is None:  # not a submodule: no row in the model summary, nothing in the checkpoint
            mean = self.__dict__["_train_loss_mean"] = StepLossMean()
        if mean.device != loss.device:
            mean.to(loss.device)
        loss = loss.detach()
        mean.update(loss, batch_size)
        if mean.update_count == 1 or self._train_step_value_read():
            mean._forward_cache = loss.clone()
            self.log(
                "train/loss",
                mean,
                on_step=True,
                on_epoch=True,
                prog_bar=True,
                metric_attribute="_train_loss_mean",
            )

    def _train_step_value_read(self) -> bool:
        """Whether this training step's logged values reach a logger, the progress bar or the end of
        the epoch (Lightning's own tests: ``should_update_logs``, the bar's ``refresh_rate``)."""
        trainer = self.trainer
        if trainer.should_stop or trainer.is_last_batch:
            return True
        if getattr(trainer._logger_connector, "should_update_logs", True):
            return True
        bar = trainer.progress_bar_callback
        if bar is None:
            return False
        if not isinstance(bar, TQDMProgressBar):  # another bar (Rich redraws by time): every step
            return True
        if not bar.is_enabled:
            return False
        # the bar redraws after batch ``n`` when ``n % refresh_rate == 0`` (and at the last batch)
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready % max(bar.refresh_rate, 1) == 0

    @override
    def on_train_start(self) -> None:
        restore_cuda_availability_check()

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "test")

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch[0])

    @override
    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def optimizer_pair(self, why_two: str) -> tuple[Any, Any]:
        """The two optimizers of a task that steps them itself (manual optimisation).

        The config's single ``optimizer:`` section replaces ``configure_optimizers``; a task that
        needs two then gets one, and this says so with ``why_two`` and what to do.

        Example:
            >>> class TwoPlayers(Task):
            ...     def training_step(self, batch, batch_idx):
            ...         opt_a, opt_b = self.optimizer_pair("TwoPlayers steps two optimizers")
        """
        optimizers = self.optimizers()
        if not isinstance(optimizers, list) or len(optimizers) != 2:
            raise ConfigError(
                f"{why_two}: remove `optimizer:` and `lr_scheduler:` from the config (or the "
                "--optimizer flags), which replace them with one, and set the task's own "
                "learning-rate arguments instead"
            )
        return optimizers[0], optimizers[1]
