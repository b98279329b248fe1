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

__all__ = ["TeacherStudent", "linear_teacher", "teacher_network", "whiten"]

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


def linear_teacher(
    singular_values: list[float], output_dim: int, input_dim: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """A teacher matrix ``W = U diag(s) V^T`` with random orthonormal ``U`` (``K x r``) and ``V`` (``d x r``).

    Returns ``(W, U, V)``; the singular values are used in the order given.

    Example:
        >>> w, u, v = linear_teacher([3.0, 1.0], 2, 4, torch.Generator().manual_seed(0))
        >>> torch.linalg.svdvals(w).round(decimals=4).tolist()
        [3.0, 1.0]
    """
    r = len(singular_values)
    u = torch.linalg.qr(torch.randn(output_dim, r, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(input_dim, r, generator=generator)).Q
    return u @ torch.diag(torch.tensor(singular_values, dtype=u.dtype)) @ v.T, u, v


def whiten(x: Tensor) -> Tensor:
    """``x (x^T x / n)^{-1/2}``: inputs whose second-moment matrix is exactly the identity.

    Example:
        >>> x = whiten(torch.randn(50, 3, dtype=torch.float64))
        >>> torch.allclose(x.T @ x / 50, torch.eye(3, dtype=torch.float64))
        True
    """
    eigenvalues, vectors = torch.linalg.eigh(x.T @ x / len(x))
    return x @ (vectors * eigenvalues.rsqrt()) @ vectors.T


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
        teacher_singular_values: a *linear* teacher ``y = W x`` with ``W = U diag(s) V^T`` of these
            singular values (random orthonormal ``U``, ``V``; ``teacher_width``, ``teacher_depth`` and
            ``activation`` are then unused), the setting of Saxe et al. (2014). ``teacher_u``,
            ``teacher_v`` and ``teacher_weight`` hold it after ``setup``.
        whiten: make each split's inputs exactly white (``x^T x / n = I``, see :func:`whiten`), so
            that the input-output correlation ``Y^T X / n`` of every split is the teacher's ``W``.

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
        teacher_singular_values: list[float] | None = None,
        whiten: bool = False,
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
        self.teacher_singular_values = (
            None if teacher_singular_values is None else list(teacher_singular_values)
        )
        if self.teacher_singular_values is not None:
            rank = len(self.teacher_singular_values)
            if task != "regression" or not 1 <= rank <= min(input_dim, output_dim):
                raise ConfigError(
                    f"a linear teacher with {rank} singular values needs task: regression and "
                    f"1 <= {rank} <= min(input_dim, output_dim) = {min(input_dim, output_dim)}"
                )
            if any(not float(v) > 0 for v in self.teacher_singular_values):
                raise ConfigError(
                    f"teacher_singular_values must all be > 0, got {self.teacher_singular_values}"
                )
        self.whiten = whiten
        self.teacher_weight: Tensor | None = None
        self.teacher_u: Tensor | None = None
        self.teacher_v: Tensor | None = None

    def load_splits(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.num_samples, self.input_dim, generator=g)
        if self.teacher_singular_values is not None:
            return self._linear_splits(x, g)
        out = teacher_network(x, self.teacher_width, self.teacher_depth, self.output_dim, self.activation, g)
        if self.task == "classification":
            y = out.argmax(dim=1)
        else:
            y = out + self.noise * torch.randn(out.shape, generator=g)
        return split_train_val_test(x, y, [0.8, 0.1, 0.1], self.seed)

    def _linear_splits(self, x: Tensor, g: torch.Generator) -> dict[str, Split]:
        w, self.teacher_u, self.teacher_v = linear_teacher(
            self.teacher_singular_values or [], self.output_dim, self.input_dim, g
        )
        self.teacher_weight = w
        splits = split_train_val_test(x, x, [0.8, 0.1, 0.1], self.seed)
        out = {}
        for name, (xs, _) in splits.items():
            if self.whiten:
                if len(xs) < self.input_dim:
                    raise ConfigError(
                        f"whiten: the {name} split has {len(xs)} samples, fewer than input_dim = "
                        f"{self.input_dim}: raise num_samples to at least {10 * self.input_dim}"
                    )
                xs = whiten(xs)
            out[name] = (xs, xs @ w.T + self.noise * torch.randn(len(xs), self.output_dim, generator=g))
        return out
