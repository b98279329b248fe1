"""Regression with the mean squared error.

Example:
    >>> import torch
    >>> from torch import nn
    >>> task = Regressor(nn.Linear(2, 1))
    >>> float(task.loss((torch.zeros(3, 2), task(torch.zeros(3, 2)).detach())).detach())
    0.0
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks.base import Task

__all__ = ["Regressor"]


class Regressor(Task):
    """Mean-squared-error regression; logs ``<stage>/loss`` (the MSE).

    Targets of shape ``(batch,)`` are compared with outputs of shape ``(batch, 1)``.

    Example:
        >>> import torch
        >>> task = Regressor(nn.Linear(2, 1))
        >>> task.criterion(torch.ones(4, 1), torch.zeros(4))
        tensor(1.)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.save_hyperparameters(ignore=["model"])

    def criterion(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if targets.dim() == 1 and outputs.dim() == 2 and outputs.shape[1] == 1:
            targets = targets.unsqueeze(1)
        if outputs.shape != targets.shape:
            raise ConfigError(
                f"Regressor outputs of shape {tuple(outputs.shape)} do not match targets of shape "
                f"{tuple(targets.shape)}: set the model's output size to the target dimension"
            )
        return F.mse_loss(outputs, targets.to(outputs.dtype))
