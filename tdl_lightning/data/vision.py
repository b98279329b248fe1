"""Full MNIST, Fashion-MNIST and CIFAR-10 through torchvision, held in memory as tensors.

The files are read from ``data_dir`` (torchvision's layout) or downloaded there; where they are
neither present nor downloadable, the error says what to do.

Example:
    >>> dm = MNIST(data_dir="data", download=False)  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from typing_extensions import override

from tdl_lightning.data.base import Split, TensorDataModule, split_indices
from tdl_lightning.errors import ConfigError, DataNotFoundError

__all__ = ["CIFAR10", "MNIST", "FashionMNIST", "TorchvisionDataModule"]


class TorchvisionDataModule(TensorDataModule):
    """A torchvision image-classification set: official train/test, validation cut from train.

    Args:
        data_dir: folder holding (or to receive) torchvision's files.
        download: fetch the files when they are missing.
        val_size: images of the official training set held out for validation.
        normalize: standardise pixels with the set's channel means and standard deviations.
        shared_filesystem: ``data_dir`` is seen by every node: download on global rank zero only
            (see :class:`~tdl_lightning.data.base.TensorDataModule`).

    Example:
        >>> FashionMNIST.mean, FashionMNIST.std
        ((0.286,), (0.353,))
    """

    dataset_class: type = torchvision.datasets.MNIST
    mean: tuple[float, ...] = (0.1307,)
    std: tuple[float, ...] = (0.3081,)
    num_classes = 10
    sample_shape: tuple[int, ...] | None = (1, 28, 28)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        val_size: int = 5000,
        normalize: bool = True,
        batch_size: int = 128,
        seed: int = 0,
        on_device: bool = False,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        full_batch: bool = False,
        shared_filesystem: bool | None = None,
    ) -> None:
        super().__init__(
            batch_size, seed, on_device, num_workers, eval_batch_size, full_batch, shared_filesystem
        )
        self.data_dir, self.download = Path(data_dir), download
        self.val_size, self.normalize = val_size, normalize

    def _dataset(self, train: bool, download: bool):
        name = self.dataset_class.__name__
        try:
            return self.dataset_class(str(self.data_dir), train=train, download=download)
        except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found"; urllib: no network
            how = "the download failed" if download else "download is off"
            raise DataNotFoundError(
                f"{name} is not in {self.data_dir.resolve()} and {how} ({err}). Either put "
                f"torchvision's {name} files there and pass data_dir, allow download with network "
                "access, or use the bundled offline subset: --data MNIST5k"
            ) from None

    @override
    def prepare_data(self) -> None:
        for train in (True, False):
            self._dataset(train, self.download)

    def _tensors(self, train: bool) -> Split:
        ds = self._dataset(train, download=False)
        x = torch.as_tensor(ds.data)
        x = (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)).float() / 255.0
        if self.normalize:
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            x = (x - mean) / torch.tensor(self.std).view(1, -1, 1, 1)
        return x, torch.as_tensor(ds.targets).long()

    def load_splits(self) -> dict[str, Split]:
        x, y = self._tensors(train=True)
        n = len(x)
        if not 0 <= self.val_size < n:
            raise ConfigError(f"val_size must lie in [0, {n}), got {self.val_size}")
        train_idx, val_idx = split_indices(n, [1 - self.val_size / n, self.val_size / n], self.seed)
        return {
            "train": (x[train_idx], y[train_idx]),
            "val": (x[val_idx], y[val_idx]),
            "test": self._tensors(train=False),
        }


class MNIST(TorchvisionDataModule):
    """Full MNIST (60,000 + 10,000 digits) through torchvision.

    Example:
        >>> MNIST(download=False).val_size
        5000
    """


class FashionMNIST(TorchvisionDataModule):
    """Fashion-MNIST (60,000 + 10,000 clothing images) through torchvision.

    Example:
        >>> FashionMNIST.dataset_class.__name__
        'FashionMNIST'
    """

    dataset_class = torchvision.datasets.FashionMNIST
    mean, std = (0.286,), (0.353,)


class CIFAR10(TorchvisionDataModule):
    """CIFAR-10 (50,000 + 10,000 colour images, 32x32) through torchvision.

    Example:
        >>> len(CIFAR10.mean)
        3
    """

    dataset_class = torchvision.datasets.CIFAR10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    sample_shape = (3, 32, 32)
