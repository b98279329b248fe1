"""Metrics of the generative tasks: the PCA baseline, the Frechet and kernel distances, the classifier score.

- :class:`PCABaseline`: the best linear autoencoder at a given latent size (principal components of
  the training split), whose per-pixel reconstruction MSE an autoencoder must beat.
- :func:`frechet_distance`: the Frechet (2-Wasserstein) distance between Gaussians fitted to two
  feature sets, ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``: FID's formula.
- :func:`kernel_distance`: the unbiased squared MMD of the two sets under KID's cubic kernel.
- :func:`classifier_score`: ``exp E_x KL(p(y|x) || p(y))``, the Inception Score's formula, between
  1 (one class, or no confidence) and the number of classes.

All three are torchmetrics' metrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``) given the features through :class:`GivenFeatures` as their feature module.

- :func:`lenet_feature_extractor`: the network they are computed with, a LeNet-5 trained on the
  data's training split through the project's :class:`~tdl_lightning.tasks.Classifier` and cached
  on disk. Its features are not Inception's: the numbers are not comparable to published FIDs,
  only to each other and to the real-vs-real floor.

Example:
    >>> import torch
    >>> a = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    >>> abs(frechet_distance(a, a)) < 1e-6
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.models.lenet import LeNet5
from tdl_lightning.tasks.classifier import Classifier

__all__ = [
    "PCABaseline",
    "check_unit_interval",
    "classifier_score",
    "GivenFeatures",
    "frechet_distance",
    "kernel_distance",
    "lenet_feature_extractor",
    "lenet_features",
    "training_split",
]


def check_unit_interval(x: Tensor, task: str) -> None:
    """Refuse images outside ``[0, 1]``: the generative tasks model pixels as probabilities.

    Example:
        >>> check_unit_interval(torch.rand(2, 1, 4, 4), "VAE")
        >>> check_unit_interval(torch.randn(2, 1, 4, 4) * 3, "VAE")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.errors.ConfigError: VAE models pixels in [0, 1], got values in [...]: ...
    """
    low, high = float(x.min()), float(x.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise ConfigError(
            f"{task} models pixels in [0, 1], got values in [{low:.3g}, {high:.3g}]: "
            "turn the data's normalisation off (data.init_args.normalize: false for MNIST5k)"
        )


class PCABaseline(nn.Module):
    """Principal components of the training images: the best linear autoencoder of rank ``k``.

    ``reconstruct(x)`` projects onto the top ``k`` components around the training mean. The
    components are non-persistent buffers: they follow the module's device and stay out of checkpoints.

    Args:
        k: number of components (the autoencoder's latent size).

    Example:
        >>> x = torch.rand(200, 1, 4, 4)
        >>> pca = PCABaseline(k=16).fit(x)
        >>> float(pca.mse(x)) < 1e-10  # 16 components span 16 pixels exactly
        True
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ConfigError(f"PCABaseline needs k >= 1 components, got {k}")
        self.k = k
        self.register_buffer("mean", torch.zeros(0), persistent=False)
        self.register_buffer("components", torch.zeros(0), persistent=False)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.components.numel() > 0

    def fit(self, x: Tensor) -> PCABaseline:
        """Fit on images ``x`` (any shape ``(n, ...)``); returns ``self``.

        Example:
            >>> PCABaseline(k=2).fit(torch.rand(10, 5)).components.shape
            torch.Size([2, 5])
        """
        flat = x.reshape(len(x), -1).double()
        if self.k > min(flat.shape):
            raise ConfigError(
                f"PCABaseline with k={self.k} needs at least {self.k} samples and features, got "
                f"{tuple(flat.shape)}: lower the latent size or give more training data"
            )
        mean = flat.mean(0)
        centred = flat - mean
        _, eigvecs = torch.linalg.eigh(centred.T @ centred)  # ascending: the last k are the top k
        self.mean = mean.float().to(x.device)
        self.components = eigvecs[:, -self.k :].flip(1).T.float().to(x.device)
        return self

    def reconstruct(self, x: Tensor) -> Tensor:
        """The projection of ``x`` onto the principal subspace, in ``x``'s shape.

        Example:
            >>> pca = PCABaseline(k=1).fit(torch.rand(10, 3))
            >>> pca.reconstruct(torch.rand(4, 3)).shape
            torch.Size([4, 3])
        """
        if not self.fitted:
            raise RuntimeError("PCABaseline.reconstruct before fit: call fit(train_images) first")
        flat = x.reshape(len(x), -1) - self.mean
        return (flat @ self.components.T @ self.components + self.mean).reshape(x.shape)

    def mse(self, x: Tensor) -> Tensor:
        """Per-pixel mean squared reconstruction error on ``x``.

        Example:
            >>> PCABaseline(k=1).fit(torch.ones(5, 3)).mse(torch.ones(2, 3)).item()
            0.0
        """
        return (self.reconstruct(x) - x).pow(2).mean()


class GivenFeatures(nn.Module):
    """The feature module of torchmetrics' image metrics for features computed beforehand: the identity.

    torchmetrics' ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and ``InceptionScore``
    take any ``feature=`` module (no torch-fidelity needed for one); the GAN task computes the
    LeNet-5 features (:func:`lenet_features`) once per validation and gathers them over ranks, so
    the module it hands them is this one. Inputs are cast to float64.

    Example:
        >>> GivenFeatures(84)(torch.ones(2, 84, dtype=torch.float32)).dtype
        torch.float64
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    @override
    def forward(self, features: Tensor) -> Tensor:
        return features.double()


@contextmanager
def _features_given() -> Iterator[None]:
    """Silence torchmetrics' note that the metric keeps every feature: here they are given already."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*will save all extracted features in buffer")
        yield


def _check_feature_sets(what: str, features_a: Tensor, features_b: Tensor) -> None:
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ConfigError(
            f"{what} needs two (n, d) feature sets with the same d, got "
            f"{tuple(features_a.shape)} and {tuple(features_b.shape)}"
        )
    if min(len(features_a), len(features_b)) < 2:
        raise ConfigError(f"{what} needs at least 2 samples per set")


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(n, d)``, in float64:
    torchmetrics' ``FrechetInceptionDistance`` with the features as given (:class:`GivenFeatures`).

    Biased at small ``n`` (it is a distance between estimated covariances): compare runs at the
    same sample size, or use :func:`kernel_distance`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(4000, 2, generator=g), torch.randn(4000, 2, generator=g) + 1
        >>> round(frechet_distance(a, b), 1)  # |mu_a - mu_b|^2 = 2, equal covariances
        2.0
    """
    _check_feature_sets("frechet_distance", features_a, features_b)
    with _features_given():
        fid = FrechetInceptionDistance(feature=GivenFeatures(features_a.shape[1]))
    fid.update(features_a.detach().cpu(), real=True)
    fid.update(features_b.detach().cpu(), real=False)
    return float(fid.compute())


def kernel_distance(features_a: Tensor, features_b: Tensor, subsets: int = 10, seed: int = 0) -> float:
    """The kernel (KID) distance between two feature sets ``(n, d)``: the unbiased estimate of the
    squared MMD with the kernel ``(x.y / d + 1)^3``, averaged over ``subsets`` random subsets of the
    smaller set's size (torchmetrics' ``KernelInceptionDistance``, its own seed: the global RNG is
    untouched). Unbiased at any ``n``, so its real-vs-real floor is about zero.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> a, b = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g)
        >>> abs(kernel_distance(a, b)) < 0.09 < 5 < kernel_distance(a, b + 1)  # 3 standard errors: 0.09
        True
    """
    _check_feature_sets("kernel_distance", features_a, features_b)
    size = min(len(features_a), len(features_b))
    with _features_given():
        features = GivenFeatures(features_a.shape[1])
        kid = KernelInceptionDistance(feature=features, subsets=subsets, subset_size=size)
    kid.update(features_a.detach().cpu(), real=True)
    kid.update(features_b.detach().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = kid.compute()
    return float(mean)


def classifier_score(logits: Tensor) -> float:
    """``exp E_x KL(p(y|x) || p(y))`` from class logits ``(n, classes)``; 1 is worst, ``classes`` best:
    torchmetrics' ``InceptionScore`` over one split, on the given logits.

    Example:
        >>> round(classifier_score(torch.eye(10) * 100), 3)  # confident and diverse
        10.0
        >>> round(classifier_score(torch.zeros(5, 10)), 3)
        1.0
    """
    with _features_given():
        score = InceptionScore(feature=GivenFeatures(logits.shape[1]), splits=1)
    score.update(logits.detach().cpu())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "std\\(\\): degrees of freedom")  # one split: no spread
        mean, _ = score.compute()
    return float(mean)


def lenet_features(extractor: nn.Module, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """``(features, logits)`` of ``images`` under a LeNet-5: its 84 penultimate units and its logits.

    Example:
        >>> feats, logits = lenet_features(LeNet5(), torch.rand(3, 1, 28, 28))
        >>> feats.shape, logits.shape
        (torch.Size([3, 84]), torch.Size([3, 10]))
    """
    *body, head = list(extractor.children())
    feats, logits = [], []
    with torch.no_grad():
        for chunk in torch.split(images, batch_size):
            for layer in body:
                chunk = layer(chunk)
            feats.append(chunk)
            logits.append(head(chunk))
    return torch.cat(feats), torch.cat(logits)


def _fingerprint(images: Tensor, labels: Tensor, epochs: int, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(images.detach().cpu().float().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().long().contiguous().numpy().tobytes())
    digest.update(f"{epochs}-{seed}".encode())
    return digest.hexdigest()[:16]


def _reset_parameters(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()


def lenet_feature_extractor(
    images: Tensor,
    labels: Tensor,
    cache_dir: str | Path | None = None,
    epochs: int = 4,
    seed: int = 0,
    batch_size: int = 64,
) -> nn.Sequential:
    """A LeNet-5 (ReLU, max pooling) trained on ``(images, labels)``, loaded from the cache if there.

    Training goes through the project's :class:`~tdl_lightning.tasks.Classifier` objective
    (``task.loss(batch)``, Adam, lr 2e-3) with its own seeded generator, so the global RNG is
    untouched. The weights are cached as ``lenet_features_<fingerprint>.pt`` in ``cache_dir``
    (the fingerprint covers the data, ``epochs`` and ``seed``), with a JSON note of its training accuracy.

    Example:
        >>> x, y = torch.rand(64, 1, 28, 28), torch.arange(64) % 10
        >>> net = lenet_feature_extractor(x, y, epochs=1)
        >>> net.training, net(x[:2]).shape
        (False, torch.Size([2, 10]))
    """
    if images.dim() != 4 or len(images) != len(labels):
        raise ConfigError(
            f"lenet_feature_extractor needs images (n, c, h, w) and n labels, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}"
        )
    network = LeNet5(
        num_classes=int(labels.max()) + 1,
        in_channels=images.shape[1],
        input_size=images.shape[-1],
        activation="relu",
        pooling="max",
    )
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"lenet_features_{_fingerprint(images, labels, epochs, seed)}.pt"
        if path.is_file():
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return network.eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network.apply(_reset_parameters)
        task = Classifier(network, num_classes=network.num_classes)
        optimizer = torch.optim.Adam(task.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(seed)
        task.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(images), generator=generator).split(batch_size):
                optimizer.zero_grad()
                task.loss((images[idx], labels[idx])).backward()
                optimizer.step()
    network.eval().requires_grad_(False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(network.state_dict(), partial)
        os.replace(partial, path)  # atomic: concurrent runs never read half a file
        _, logits = lenet_features(network, images)
        accuracy = float((logits.argmax(1) == labels).float().mean())
        path.with_suffix(".json").write_text(
            json.dumps({"train_acc": accuracy, "epochs": epochs, "seed": seed})
        )
    return network


def training_split(trainer: object, max_samples: int | None = None) -> tuple[Tensor, Tensor] | None:
    """Up to ``max_samples`` ``(images, labels)`` of a trainer's training data, or ``None`` if unreachable.

    A :class:`~tdl_lightning.data.TensorDataModule`'s tensors are taken directly; any other data
    module's training loader is iterated from the start, with the global RNG state restored after.

    Example:
        >>> from tdl_lightning.data import MNIST5k
        >>> class FakeTrainer:
        ...     datamodule = MNIST5k(normalize=False)
        >>> FakeTrainer.datamodule.setup("fit")
        >>> training_split(FakeTrainer(), max_samples=10)[0].shape
        torch.Size([10, 1, 28, 28])
    """
    datamodule = getattr(trainer, "datamodule", None)
    splits = getattr(datamodule, "splits", None)
    if isinstance(splits, dict) and "train" in splits:
        x, y = splits["train"]
        return x[:max_samples], y[:max_samples]
    try:
        if datamodule is not None:
            loader = datamodule.train_dataloader()
        else:
            loader = getattr(trainer, "train_dataloader", None)
    except Exception:  # a data module that cannot serve training data in this stage
        return None
    if loader is None:
        return None
    xs, ys, count = [], [], 0
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            xs.append(batch[0])
            ys.append(batch[1])
            count += len(batch[0])
            if max_samples is not None and count >= max_samples:
                break
    if not xs:
        return None
    return torch.cat(xs)[:max_samples], torch.cat(ys)[:max_samples]
