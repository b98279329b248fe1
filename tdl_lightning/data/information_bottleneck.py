"""The 12-bit task of Shwartz-Ziv & Tishby (2017), generated from its description.

The inputs are the 4,096 binary patterns of 12 bits; bit ``i`` marks one of 12 points spread
uniformly over the sphere (the vertices of an icosahedron). The label is a threshold of a
function of the pattern that a rotation of the sphere does not change (a *spherically symmetric*
rule): here the squared length of the sum of the marked points, ``f(x) = |sum_i x_i v_i|^2``, cut
at the value that splits the patterns closest to half and half (2,036 of 4,096 are positive). It
follows the paper's description, not its data file, whose rule is not published.

Example:
    >>> dm = IBTask()
    >>> dm.setup()
    >>> x, y = dm.splits["train"]
    >>> x.shape, sorted(set(y.tolist()))
    (torch.Size([3482, 12]), [0, 1])
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from tdl_lightning.data.base import Split, TensorDataModule, split_train_val_test
from tdl_lightning.errors import ConfigError

__all__ = ["IBTask", "icosahedron_vertices", "twelve_bit_task"]


def icosahedron_vertices() -> Tensor:
    """The 12 vertices of a regular icosahedron on the unit sphere, ``(12, 3)`` float64.

    Example:
        >>> v = icosahedron_vertices()
        >>> sorted(set((v @ v.T).round(decimals=4).flatten().tolist()))  # 1/sqrt(5) apart
        [-1.0, -0.4472, 0.4472, 1.0]
    """
    phi = (1 + math.sqrt(5)) / 2
    points = []
    for s1, s2 in itertools.product((1, -1), repeat=2):
        points += [(0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1)]
    v = torch.tensor(points, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def twelve_bit_task() -> tuple[Tensor, Tensor]:
    """All 4,096 patterns ``x`` (float32 0/1) and their labels ``y`` (int64), in binary counting order.

    Example:
        >>> x, y = twelve_bit_task()
        >>> len(x), int(y.sum())
        (4096, 2036)
    """
    x = torch.tensor(list(itertools.product((0.0, 1.0), repeat=12)), dtype=torch.float64)
    f = ((x @ icosahedron_vertices()) ** 2).sum(1).round(decimals=9)
    values = f.unique()
    below = torch.stack([(f <= v).sum() for v in values])
    threshold = values[(below - len(x) / 2).abs().argmin()]
    return x.float(), (f > threshold).long()


class IBTask(TensorDataModule):
    """The 12-bit information-bottleneck task: 4,096 patterns, split 85/15 into train/test as in the paper.

    Args:
        train_fraction: the training share (the rest is split half/half into val and test).
        batch_size, seed, on_device, num_workers, eval_batch_size: see ``TensorDataModule``.

    Example:
        >>> dm = IBTask(train_fraction=0.5)
        >>> dm.setup()
        >>> len(dm.splits["train"][0]), len(dm.splits["val"][0])
        (2048, 1024)
    """

    num_classes = 2
    sample_shape = (12,)

    def __init__(
        self,
        train_fraction: float = 0.85,
        batch_size: int = 256,
        seed: int = 0,
        on_device: bool = False,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, seed, on_device, num_workers, eval_batch_size)
        if not 0 < train_fraction < 1:
            raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
        self.train_fraction = train_fraction

    def load_splits(self) -> dict[str, Split]:
        x, y = twelve_bit_task()
        rest = (1 - self.train_fraction) / 2
        return split_train_val_test(x, y, [self.train_fraction, rest, rest], self.seed)
