"""Classification with cross-entropy and accuracy on every stage.

Example:
    >>> from tdl_lightning.models import LeNet5
    >>> task = Classifier(LeNet5(), num_classes=10)
    >>> sorted(task.accuracy.keys())
    ['test_acc', 'train_acc', 'val_acc']
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks.base import Batch, Task

__all__ = ["Classifier"]


class Classifier(Task):
    """Cross-entropy classification; logs ``<stage>/loss`` and ``<stage>/acc``.

    Args:
        model: architecture mapping inputs to ``num_classes`` logits.
        num_classes: number of classes.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        objective: ``cross_entropy``, or ``mse``: the mean squared error between the outputs and the
            one-hot targets (``F.mse_loss``, averaged over examples and classes), the square loss of
            the edge-of-stability experiments (Cohen et al. 2021). Accuracy is the argmax's either way.

    Example:
        >>> import torch
        >>> task = Classifier(nn.Linear(4, 3), num_classes=3)
        >>> task.predict_step((torch.zeros(2, 4), torch.zeros(2)), 0).shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        objective: str = "cross_entropy",
    ) -> None:
        super().__init__(model)
        if objective not in ("cross_entropy", "mse"):
            raise ConfigError(f"Classifier objective={objective!r}: use 'cross_entropy' or 'mse'")
        if objective == "mse" and label_smoothing:
            raise ConfigError(
                "Classifier label_smoothing applies to objective='cross_entropy' only: set it to 0"
            )
        if num_classes < 2:
            raise ConfigError(f"Classifier needs num_classes >= 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["model"])
        self.num_classes, self.label_smoothing, self.objective = num_classes, label_smoothing, objective
        self.accuracy = nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("train", "val", "test")}
        )

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if outputs.dim() != 2 or outputs.shape[1] != self.num_classes:
            raise ConfigError(
                f"Classifier expects logits of shape (batch, {self.num_classes}), got "
                f"{tuple(outputs.shape)}: make the model's output size equal num_classes"
            )
        if self.objective == "mse":
            return F.mse_loss(outputs, F.one_hot(targets, self.num_classes).to(outputs.dtype))
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def update_metrics(self, stage: str, outputs: Tensor, targets: Tensor) -> None:
        metric = cast(Metric, self.accuracy[f"{stage}_acc"])  # a ModuleDict of torchmetrics Accuracy
        # update only (``metric(...)`` would also compute a per-batch accuracy nobody reads), and log
        # the Metric once, at its first update after a reset: Lightning then computes it over the
        # whole epoch (synced across ranks) and resets it, as when it was logged at every step,
        # which cost about a millisecond per step
        metric.update(outputs.detach(), targets)
        if metric.update_count == 1:
            self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train")

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=-1)
