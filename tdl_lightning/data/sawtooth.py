"""Regression on Telgarsky's sawtooth: ``y = t^k(x)`` for ``x`` uniform on ``[0, 1]``.

The target has ``2**k`` linear pieces, so a deep narrow ReLU net can represent it with ``6k + 1``
parameters while a one-hidden-layer net needs ``2**k - 1`` units: the course's "deep narrow vs
shallow wide" comparison trains on this data.

Example:
    >>> dm = SawtoothData(num_samples=100, k=3)
    >>> dm.setup()
    >>> x, y = dm.splits["train"]
    >>> x.shape, y.shape, float(y.min()) >= 0.0
    (torch.Size([80, 1]), torch.Size([80, 1]), True)
"""

from __future__ import annotations

import torch

from tdl_lightning.data.base import Split, TensorDataModule, split_train_val_test
from tdl_lightning.errors import ConfigError
from tdl_lightning.models.sawtooth import Sawtooth

__all__ = ["SawtoothData"]


class SawtoothData(TensorDataModule):
    """Inputs ``x ~ U[0, 1]`` of shape ``(n, 1)``, targets the sawtooth ``t^k(x) (+ noise)``, ``(n, 1)``.

    The targets come from the network :class:`~tdl_lightning.models.Sawtooth` itself (the
    teacher), which equals the closed-form tent map exactly.

    Args:
        num_samples: points drawn in all (split 80/10/10 into train/val/test).
        k: compositions of the tent map (the target has ``2**k`` pieces).
        noise: standard deviation of Gaussian noise added to the targets.
        **kwargs: ``batch_size``, ``seed``, ``on_device``, ... of :class:`TensorDataModule`.

    Example:
        >>> dm = SawtoothData(num_samples=40, k=2, batch_size=8)
        >>> dm.setup()
        >>> len(dm.train_dataloader())
        4
    """

    output_dim = 1
    sample_shape = (1,)

    def __init__(
        self,
        num_samples: int = 4096,
        k: int = 4,
        noise: float = 0.0,
        batch_size: int = 128,
        seed: int = 0,
        on_device: bool = False,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, seed, on_device, num_workers, eval_batch_size)
        if not isinstance(num_samples, int) or num_samples < 10:
            raise ConfigError(f"SawtoothData needs num_samples >= 10 (80/10/10 split), got {num_samples!r}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"SawtoothData needs k >= 1 compositions of the tent map, got k={k!r}")
        if noise < 0:
            raise ConfigError(f"noise is a standard deviation and must be >= 0, got {noise}")
        self.num_samples, self.k, self.noise = num_samples, k, noise

    def load_splits(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.rand(self.num_samples, 1, generator=g)
        with torch.no_grad():
            y = Sawtooth(self.k)(x)
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=g)
        return split_train_val_test(x, y, [0.8, 0.1, 0.1], self.seed)
