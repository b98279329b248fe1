"""Pictures of the generative tasks, as callbacks: reconstructions, latent scatter, interpolations, samples.

Each callback draws at the end of every ``every_n_epochs``-th training epoch (and at the end of
training), writes a PNG into ``<run dir>/pictures/<name>/`` and sends it to W&B as a
``wandb.Image`` under ``pictures/<name>``. Inputs come from the first images of the validation
split (the same images every time); noise comes from a fixed seed, so a sequence of pictures
shows training progress. ``SampleGrid`` also keeps a *strip*: one row of fixed-noise samples per
epoch stacked downwards (``strip.png``).

What the module must offer (checked at setup): ``reconstruct(x)`` for :class:`ReconstructionGrid`,
``encode(x)`` for :class:`LatentScatter`, ``encode``/``decode`` for :class:`LatentInterpolation`,
``sample(n, seed)`` for :class:`SampleGrid`.

Example:
    >>> import torch
    >>> image_grid(torch.rand(6, 1, 28, 28), columns=3).shape
    (59, 88)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import find_wandb_logger

__all__ = [
    "LatentInterpolation",
    "LatentScatter",
    "PictureCallback",
    "ReconstructionGrid",
    "SampleGrid",
    "image_grid",
]


def image_grid(images: Tensor, columns: int, pad: int = 1) -> np.ndarray:
    """Tile ``(n, c, h, w)`` images in ``[0, 1]`` into one array, ``columns`` per row, 1-pixel gaps.

    Returns ``(H, W)`` for one channel and ``(H, W, 3)`` for three.

    Example:
        >>> image_grid(torch.ones(2, 3, 4, 4), columns=2).shape
        (6, 11, 3)
    """
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(c, rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    array = grid.numpy()
    return array[0] if c == 1 else array.transpose(1, 2, 0)


class PictureCallback(L.Callback):
    """Base of the picture callbacks: when to draw, which images, where the PNGs go.

    Subclasses set ``name`` and ``needs`` (the methods the module must have) and implement
    :meth:`draw`, returning an image array (or a matplotlib ``Figure``).

    Args:
        every_n_epochs: draw at the end of every n-th training epoch (``None``: only at the end).
        num_images: how many validation images the picture uses.

    Example:
        >>> ReconstructionGrid(every_n_epochs=2).every_n_epochs
        2
    """

    name = "picture"
    needs: tuple[str, ...] = ()

    def __init__(self, every_n_epochs: int | None = 1, num_images: int = 16) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ConfigError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        if num_images < 1:
            raise ConfigError(f"num_images must be >= 1, got {num_images}")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.batch: tuple[Tensor, Tensor] | None = None
        self.out_dir: Path | None = None
        self._last_epoch = -1

    def draw(self, pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> np.ndarray | Figure:
        """The picture for the current state of ``pl_module``. Subclasses implement this."""
        raise NotImplementedError

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        missing = [m for m in self.needs if not callable(getattr(pl_module, m, None))]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs {type(pl_module).__name__} to have {missing}: attach it to "
                "an Autoencoder/VAE (reconstructions, latents) or a VAE/GAN (samples)"
            )
        root = trainer.log_dir or trainer.default_root_dir  # a collective: every rank calls it
        self.out_dir = Path(root) / "pictures" / self.name

    def _images(self, trainer: L.Trainer, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.batch is None:
            datamodule = trainer.datamodule
            loader = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
            xs, ys, count = [], [], 0
            with torch.random.fork_rng(devices=[]):
                for x, y, *_ in loader:
                    xs.append(x)
                    ys.append(y)
                    count += len(x)
                    if count >= self.num_images:
                        break
            if not xs:
                raise ConfigError(
                    f"{type(self).__name__} takes its images from the validation split, which is empty"
                )
            self.batch = (torch.cat(xs)[: self.num_images].clone(), torch.cat(ys)[: self.num_images].clone())
        return self.batch[0].to(device), self.batch[1]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._render(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._render(trainer, pl_module)

    def _render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.current_epoch == self._last_epoch or self.out_dir is None:
            return
        self._last_epoch = trainer.current_epoch
        images, labels = self._images(trainer, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                picture = self.draw(pl_module, images, labels)
        finally:
            pl_module.train(was_training)
        self.save(trainer, picture, f"epoch_{trainer.current_epoch:03d}.png")

    def save(
        self, trainer: L.Trainer, picture: np.ndarray | Figure, filename: str, key: str | None = None
    ) -> Path:
        """Write ``picture`` as ``<out_dir>/<filename>`` and send it to W&B (``pictures/<name>``)."""
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / filename
        if isinstance(picture, Figure):
            picture.savefig(path, dpi=100, bbox_inches="tight")
        else:
            import matplotlib.image

            matplotlib.image.imsave(path, picture, cmap="gray", vmin=0.0, vmax=1.0)
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is not None:
            caption = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
            wandb_logger.log_image(key=key or f"pictures/{self.name}", images=[str(path)], caption=[caption])
        return path


class ReconstructionGrid(PictureCallback):
    """Validation images (top row), their corrupted version for a denoising autoencoder, and the
    reconstructions (bottom row).

    Example:
        >>> ReconstructionGrid(num_images=8).needs
        ('reconstruct',)
    """

    name, needs = "reconstructions", ("reconstruct",)

    def draw(self, pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> np.ndarray:
        rows = [images]
        corrupt = getattr(pl_module, "corrupt", None)
        if callable(corrupt) and getattr(pl_module, "noise_level", 0):
            images = corrupt(images)
            rows.append(images)
        rows.append(pl_module.reconstruct(images))
        return image_grid(torch.cat(rows), columns=len(rows[0]))


class LatentScatter(PictureCallback):
    """The codes of validation images coloured by class: the latent plane itself for ``latent_dim``
    2, else its first two principal components (said in the title).

    Example:
        >>> LatentScatter(num_images=500).num_images
        500
    """

    name, needs = "latent_scatter", ("encode",)

    def __init__(self, every_n_epochs: int | None = None, num_images: int = 500) -> None:
        super().__init__(every_n_epochs, num_images)

    def draw(self, pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> Figure:
        codes = pl_module.encode(images).float().cpu()
        title = "latent codes"
        if codes.shape[1] > 2:
            centred = codes - codes.mean(0)
            codes = centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T
            title = (
                f"latent codes ({pl_module.encode(images[:1]).shape[1]}-d), first two principal components"
            )
        figure = Figure(figsize=(5, 4.5))
        axes = figure.subplots()
        points = axes.scatter(
            codes[:, 0], codes[:, 1], c=labels.cpu(), cmap="tab10", s=6, vmin=-0.5, vmax=9.5
        )
        figure.colorbar(points, ax=axes, ticks=range(10), label="class")
        axes.set(title=title, xlabel="z1", ylabel="z2")
        return figure


class LatentInterpolation(PictureCallback):
    """Decoded straight lines in latent space between the codes of pairs of validation images,
    one row per pair, ``steps`` images per row (the ends are the reconstructions).

    Example:
        >>> LatentInterpolation(num_pairs=3, steps=8).num_images
        6
    """

    name, needs = "interpolations", ("encode", "decode")

    def __init__(self, every_n_epochs: int | None = None, num_pairs: int = 6, steps: int = 10) -> None:
        super().__init__(every_n_epochs, 2 * num_pairs)
        if steps < 2:
            raise ConfigError(f"steps must be >= 2 (the two ends), got {steps}")
        self.steps = steps

    def draw(self, pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> np.ndarray:
        codes = pl_module.encode(images)
        start, end = codes[0::2], codes[1::2]
        t = torch.linspace(0, 1, self.steps, device=codes.device).view(1, -1, 1)
        path = (1 - t) * start.unsqueeze(1) + t * end.unsqueeze(1)  # (pairs, steps, latent)
        decoded = pl_module.decode(path.reshape(-1, codes.shape[1]))
        return image_grid(decoded, columns=self.steps)


class SampleGrid(PictureCallback):
    """Samples from fixed noise (``sample(n, seed)``): a grid per epoch, and a strip of one row per epoch.

    Example:
        >>> SampleGrid(num_images=64, strip_width=8).state_dict()
        {'strip': []}
    """

    name, needs = "samples", ("sample",)

    def __init__(
        self, every_n_epochs: int | None = 1, num_images: int = 64, seed: int = 1234, strip_width: int = 10
    ) -> None:
        super().__init__(every_n_epochs, num_images)
        self.seed, self.strip_width = seed, strip_width
        self.strip: list[np.ndarray] = []

    def _images(self, trainer: L.Trainer, device: torch.device) -> tuple[Tensor, Tensor]:
        return torch.empty(0, device=device), torch.empty(0)  # samples need no data

    def draw(self, pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> np.ndarray:
        samples = pl_module.sample(self.num_images, seed=self.seed)
        self.strip.append(image_grid(samples[: self.strip_width], columns=self.strip_width))
        return image_grid(samples, columns=int(np.ceil(np.sqrt(self.num_images))))

    def _render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch_before = self._last_epoch
        super()._render(trainer, pl_module)
        if self._last_epoch != epoch_before and trainer.is_global_zero and self.strip:
            self.save(trainer, np.concatenate(self.strip, axis=0), "strip.png", key="pictures/sample_strip")

    def state_dict(self) -> dict[str, Any]:
        return {"strip": [row.tolist() for row in self.strip]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.strip = [np.asarray(row, dtype=np.float32) for row in state_dict.get("strip", [])]
