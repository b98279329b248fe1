"""Teacher-student data: Gaussian inputs labelled by a random "teacher" network.

The classic setting for studying what a student MLP can learn: the target function is known,
realisable by a network of the teacher's size, and the input distribution is isotropic.

Example:
    >>> dm = TeacherStudent(num_samples=100, input_dim=5, task="classification", num_classes=3)
    >>> dm.setup()
    >>> x, y = dm.splits["train"]
    >>> x.shape, int(y.max()) <= 2
    (torch.Size([80, 5]), True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tdl_lightning.data.base import Split, TensorDataModule, split_train_val_test
from tdl_lightning.errors import ConfigError

__all__ = ["TeacherStudent", "teacher_network"]

_TEACHER_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "linear": lambda h: h}


def teacher_network(
    x: Tensor, width: int, depth: int, output_dim: int, activation: str, generator: torch.Generator
) -> Tensor:
    """Outputs of a random MLP with ``N(0, 1/fan_in)`` weights on inputs ``x`` (no biases).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> teacher_network(torch.randn(4, 3), 8, 2, 1, "tanh", g).shape
        torch.Size([4, 1])
    """
    phi = _TEACHER_ACTIVATIONS[activation]
    h = x
    dims = [x.shape[1]] + [width] * depth + [output_dim]
    for l, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = torch.randn(fan_in, fan_out, generator=generator) / math.sqrt(fan_in)
        h = h @ w
        if l < len(dims) - 2:
            h = phi(h)
    return h


class TeacherStudent(TensorDataModule):
    """Gaussian inputs ``x ~ N(0, I)`` with targets from a random teacher MLP.

    Args:
        num_samples: inputs drawn in all (split 80/10/10 into train/val/test).
        input_dim: dimension of each input.
        teacher_width: hidden units per teacher layer.
        teacher_depth: hidden layers of the teacher (0 gives a linear teacher).
        activation: teacher nonlinearity, ``tanh``, ``relu`` or ``linear``.
        task: ``regression`` (targets = teacher outputs + noise) or ``classification``
            (label = argmax of the teacher's ``num_classes`` outputs).
        output_dim: teacher outputs for regression.
        num_classes: classes for classification.
        noise: standard deviation of Gaussian label noise (regression).

    Example:
        >>> dm = TeacherStudent(num_samples=50, input_dim=4, output_dim=2)
        >>> dm.setup()
        >>> dm.splits["val"][1].shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        num_samples: int = 4096,
        input_dim: int = 100,
        teacher_width: int = 100,
        teacher_depth: int = 1,
        activation: str = "tanh",
        task: str = "regression",
        output_dim: int = 1,
        num_classes: int = 2,
        noise: float = 0.0,
        batch_size: int = 128,
        seed: int = 0,
        on_device: bool = False,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        full_batch: bool = False,
    ) -> None:
        super().__init__(batch_size, seed, on_device, num_workers, eval_batch_size, full_batch)
        if task not in ("regression", "classification"):
            raise ConfigError(f"task must be 'regression' or 'classification', got {task!r}")
        if activation not in _TEACHER_ACTIVATIONS:
            raise ConfigError(
                f"teacher activation must be one of {sorted(_TEACHER_ACTIVATIONS)}, got {activation!r}"
            )
        if min(num_samples, input_dim, teacher_width, output_dim) < 1 or teacher_depth < 0:
            raise ConfigError("num_samples, input_dim, teacher_width, output_dim must be >= 1")
        if task == "classification" and num_classes < 2:
            raise ConfigError(f"classification needs num_classes >= 2, got {num_classes}")
        self.num_samples, self.input_dim, self.task, self.noise = num_samples, input_dim, task, noise
        self.teacher_width, self.teacher_depth, self.activation = teacher_width, teacher_depth, activation
        self.output_dim = num_classes if task == "classification" else output_dim
        self.num_classes = num_classes

    def load_splits(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.num_samples, self.input_dim, generator=g)
        out = teacher_network(x, self.teacher_width, self.teacher_depth, self.output_dim, self.activation, g)
        if self.task == "classification":
            y = out.argmax(dim=1)
        else:
            y = out + self.noise * torch.randn(out.shape, generator=g)
        return split_train_val_test(x, y, [0.8, 0.1, 0.1], self.seed)
