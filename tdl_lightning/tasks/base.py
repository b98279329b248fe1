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
from torch import Tensor, nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError

__all__ = ["Task", "restore_cuda_availability_check"]

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

    @override
    def on_train_start(self) -> None:
        restore_cuda_availability_check()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch[0])

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
