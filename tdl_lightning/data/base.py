"""Data modules for data sets small enough to live in memory as tensors.

Such a data set can be served two ways, with the same batches for the same seed:
through a ``DataLoader`` (the default), or straight from tensors held on the accelerator
(``on_device=True``), so that a GPU is not starved by a loader for MNIST-sized data.

Example:
    >>> import torch
    >>> order = SeededPermutation(5, seed=0)
    >>> sorted(order) == list(range(5))
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset, default_collate
from typing_extensions import override

from tdl_lightning.errors import ConfigError

__all__ = [
    "OnDeviceLoader",
    "SeededPermutation",
    "TensorBatches",
    "TensorDataModule",
    "collate_batches",
    "split_indices",
    "split_train_val_test",
]

Split = tuple[Tensor, Tensor]


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into parts of the given fractions.

    The first part takes whatever the others leave, so every index is used once.

    Example:
        >>> [len(part) for part in split_indices(100, [0.8, 0.1, 0.1], seed=0)]
        [80, 10, 10]
    """
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ConfigError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(f * n) for f in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    return list(torch.split(order, sizes))


def split_train_val_test(x: Tensor, y: Tensor, fractions: Sequence[float], seed: int) -> dict[str, Split]:
    """``{"train", "val", "test"}`` splits of ``(x, y)`` in the given fractions (see :func:`split_indices`).

    Example:
        >>> x = torch.arange(10.0)
        >>> {k: len(v[0]) for k, v in split_train_val_test(x, x, [0.8, 0.1, 0.1], seed=0).items()}
        {'train': 8, 'val': 1, 'test': 1}
    """
    parts = split_indices(len(x), fractions, seed)
    return {name: (x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), parts, strict=True)}


class SeededPermutation(Sampler[int]):
    """A sampler that draws a fresh permutation each epoch from its own seeded generator.

    The DataLoader path and the on-device path both take their order from this class, so both
    see the same batches for the same seed.

    Example:
        >>> a, b = SeededPermutation(6, seed=1), SeededPermutation(6, seed=1)
        >>> list(a) == list(b) and list(a) == list(b)
        True
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)

    def permutation(self) -> Tensor:
        """The next epoch's order as a tensor of indices.

        Example:
            >>> SeededPermutation(3, seed=0).permutation().shape
            torch.Size([3])
        """
        return torch.randperm(self.n, generator=self.generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


class _GatheredBatch(list):
    """One batch that :class:`TensorBatches` gathered whole: already collated."""


class TensorBatches(TensorDataset):
    """A ``TensorDataset`` that a ``DataLoader`` reads one batch at a time.

    A plain ``TensorDataset`` is read sample by sample, and the samples are then stacked:
    ``batch_size`` indexings and a copy per tensor. Here the loader hands the batch's indices to
    ``__getitems__``, which gathers them with one indexing per tensor: the same batches, in the same
    order, at about a quarter of the loader's time on MNIST5k (4,000 images, batch 64: 41 -> 11 ms
    an epoch on one CPU thread). Give the loader :func:`collate_batches` as its ``collate_fn``.

    Example:
        >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
        >>> loader = DataLoader(TensorBatches(x, y), batch_size=4, collate_fn=collate_batches)
        >>> [b[1].tolist() for b in loader]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __getitems__(self, indices: list[int]) -> _GatheredBatch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return _GatheredBatch(t[index] for t in self.tensors)


def collate_batches(batch: Any) -> Any:
    """``default_collate``, except for a batch that :class:`TensorBatches` gathered, which already is one.

    Whoever collates samples of the data set by hand (a plugin drawing a probe batch) gets what
    ``default_collate`` gives.

    Example:
        >>> data = TensorBatches(torch.arange(6.0))
        >>> gathered, sampled = data.__getitems__([0, 5]), [data[1], data[2]]
        >>> collate_batches(gathered)[0].tolist(), collate_batches(sampled)[0].tolist()
        ([0.0, 5.0], [1.0, 2.0])
    """
    if isinstance(batch, _GatheredBatch):
        return list(batch)
    return default_collate(batch)


class OnDeviceLoader:
    """Batches sliced from tensors already on the accelerator; no worker processes, no copies.

    Under DDP each rank takes every ``world_size``-th index of the epoch's order, trimmed so that
    all ranks run the same number of batches.

    Example:
        >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
        >>> loader = OnDeviceLoader((x, y), batch_size=4)
        >>> [len(b[0]) for b in loader]
        [4, 4, 2]
    """

    batch_sampler = None  # Lightning reads it beside ``sampler`` to tell whether a loader shuffles

    def __init__(
        self,
        tensors: tuple[Tensor, ...],
        batch_size: int,
        sampler: SeededPermutation | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tensors, self.batch_size, self.sampler = tensors, batch_size, sampler
        self.rank, self.world_size = rank, world_size

    def _indices(self) -> Tensor:
        n = len(self.tensors[0])
        order = self.sampler.permutation() if self.sampler is not None else torch.arange(n)
        if self.world_size > 1:
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
        return order.to(self.tensors[0].device)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for chunk in torch.split(self._indices(), self.batch_size):
            yield tuple(t[chunk] for t in self.tensors)

    def __len__(self) -> int:
        return math.ceil(len(self.tensors[0]) // self.world_size / self.batch_size)


class TensorDataModule(L.LightningDataModule):
    """Base of the project's data modules: splits held as ``(inputs, targets)`` tensors.

    Subclasses implement :meth:`load_splits`, returning ``{"train": (x, y), "val": ..., "test": ...}``.

    Args:
        batch_size: training batch size (evaluation uses ``eval_batch_size``, default 4x).
        seed: seed of the split and of the shuffling order.
        on_device: serve batches from tensors held on the accelerator instead of a DataLoader.
        num_workers: DataLoader worker processes (ignored when ``on_device``).
        eval_batch_size: validation and test batch size (default ``4 * batch_size``).
        full_batch: full-batch training (gradient descent): every training epoch is one batch of the
            whole training split, held on the accelerator (under DDP each rank's shard); ``batch_size``
            is then ignored for training. Validation and test are unchanged.
        shared_filesystem: the data files live on a file system every node sees (a cluster's shared
            ``data_dir``): ``prepare_data`` (the download) then runs on global rank zero alone
            instead of once per node (Lightning's ``prepare_data_per_node``), so nodes do not
            download into the same folder at once. ``None``: the environment variable
            ``TDL_SHARED_FILESYSTEM`` (``1``/``true``, as ``experiments/slurm/*.sbatch`` set it), else off.

    Example:
        >>> class Ramp(TensorDataModule):
        ...     def load_splits(self):
        ...         x = torch.arange(8.0).unsqueeze(1)
        ...         return {"train": (x, x), "val": (x, x), "test": (x, x)}
        >>> dm = Ramp(batch_size=4)
        >>> dm.setup("fit")
        >>> len(dm.train_dataloader())
        2
    """

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        on_device: bool = False,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        full_batch: bool = False,
        shared_filesystem: bool | None = None,
    ) -> None:
        super().__init__()
        if shared_filesystem is None:
            shared_filesystem = os.environ.get("TDL_SHARED_FILESYSTEM", "").lower() in ("1", "true", "yes")
        self.shared_filesystem = shared_filesystem
        self.prepare_data_per_node = not shared_filesystem
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed, self.on_device = batch_size, seed, on_device
        self.num_workers, self.full_batch = num_workers, full_batch
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.splits: dict[str, Split] = {}
        self._device_splits: dict[str, Split] = {}

    def load_splits(self) -> dict[str, Split]:
        """Return the ``train``/``val``/``test`` tensors. Subclasses implement this."""
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()

    sample_shape: tuple[int, ...] | None = None  # the shape of one input, where known before setup

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)`` for MNIST (``sample_shape``, or the data after setup).

        ``tdl`` links it into the model's input size; before ``setup`` a module that does not
        declare ``sample_shape`` raises ``AttributeError`` (the link is then left out).
        """
        if "train" in self.splits:
            return tuple(self.splits["train"][0].shape[1:])
        if self.sample_shape is None:
            raise AttributeError(f"{type(self).__name__}.input_shape is known after setup()")
        return tuple(self.sample_shape)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader | OnDeviceLoader:
        if split not in self.splits:
            self.setup()
        x, y = self.splits[split]
        sampler = SeededPermutation(len(x), self.seed) if shuffle else None
        if self.on_device:
            return self._device_loader(split, batch_size, sampler)
        return DataLoader(
            TensorBatches(x, y),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_batches,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _device_loader(
        self, split: str, batch_size: int, sampler: SeededPermutation | None
    ) -> OnDeviceLoader:
        rank, world = 0, 1
        device = torch.device("cpu")
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            rank, world = self.trainer.global_rank, self.trainer.world_size
        if split not in self._device_splits:
            x, y = self.splits[split]
            self._device_splits[split] = (x.to(device), y.to(device))
        return OnDeviceLoader(self._device_splits[split], batch_size, sampler, rank, world)

    @override
    def train_dataloader(self) -> DataLoader | OnDeviceLoader:
        if self.full_batch:  # one batch, in a fixed order: the full gradient does not depend on it
            if "train" not in self.splits:
                self.setup()
            return self._device_loader("train", len(self.splits["train"][0]), sampler=None)
        return self._loader("train", self.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | OnDeviceLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader | OnDeviceLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader | OnDeviceLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
