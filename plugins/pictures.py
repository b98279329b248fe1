"""Pictures of generative models as diagnostic callbacks: reconstructions, latents, interpolations, samples.

Each callback is a :class:`~plugins.base.DiagnosticCallback`: it draws at the end of every
``every_n_epochs``-th training epoch and when training ends, on a fixed batch of ``num_images``
validation images (drawn once with its own seed, so every picture of a run shows the same
images), with the training state preserved (:func:`~plugins.base.preserved_training_state`).
The base writes ``<image>_step<N>.png`` into ``<run dir>/plugins/<name>/`` and sends it to W&B
under ``<name>/<image>``. :class:`SampleGrid` draws from a fixed noise seed, so its pictures show
training progress, and keeps a *strip* (``strip``: one row of samples per probe, stacked
downwards) in the checkpoint.

The protocol (checked at setup): ``reconstruct(x)`` for :class:`ReconstructionGrid` (and
``corrupt(x)`` with a non-zero ``noise_level``, if the module is a denoising autoencoder),
``encode(x)`` for :class:`LatentScatter`, ``encode``/``decode`` for :class:`LatentInterpolation`,
``sample(n, seed)`` for :class:`SampleGrid`; images are ``(n, c, h, w)`` in ``[0, 1]``.

Example:
    >>> import torch
    >>> image_grid(torch.rand(6, 1, 28, 28), columns=3).shape
    torch.Size([1, 59, 88])
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torchvision.utils
from matplotlib.figure import Figure
from torch import Tensor
from typing_extensions import override

from plugins.base import DiagnosticCallback, ProbeResult, probe_inputs, take_probe_batch
from plugins.checks import PluginConfigError

__all__ = [
    "LatentInterpolation",
    "LatentScatter",
    "PictureCallback",
    "ReconstructionGrid",
    "SampleGrid",
    "image_grid",
    "validation_loader",
]


def image_grid(images: Tensor, columns: int, pad: int = 1, pad_value: float = 1.0) -> Tensor:
    """Tile ``(n, c, h, w)`` images in ``[0, 1]`` into one ``(c, H, W)`` image, ``columns`` per row,
    with ``pad``-pixel gaps and border of ``pad_value`` (white by default; ``torchvision.utils.make_grid``);
    ``c`` is 1 or 3. One image gets the same border as many (``make_grid`` alone would leave it bare).

    Example:
        >>> image_grid(torch.ones(2, 3, 4, 4), columns=2).shape
        torch.Size([3, 6, 11])
        >>> image_grid(torch.ones(1, 1, 4, 4), columns=2).shape
        torch.Size([1, 6, 6])
    """
    images = images.detach().float().cpu().clamp(0, 1)
    if len(images) == 1:
        return torch.nn.functional.pad(images[0], (pad, pad, pad, pad), value=pad_value)
    grid = torchvision.utils.make_grid(images, nrow=columns, padding=pad, pad_value=pad_value)
    return grid[: images.shape[1]]  # make_grid repeats one channel three times


def validation_loader(trainer: L.Trainer) -> Any:
    """The validation loader of a fit: the data module's (a fresh one), else the fit's own.

    Example:
        >>> trainer = L.Trainer(logger=False)
        >>> validation_loader(trainer)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        plugins.checks.PluginConfigError: ... and this fit has none: ...
    """
    datamodule = getattr(trainer, "datamodule", None)
    loader = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if loader is None:
        raise PluginConfigError(
            "the pictures are drawn from the validation split, and this fit has none: give the data "
            "module a val_dataloader (or pass val_dataloaders to fit)"
        )
    return loader


class PictureCallback(DiagnosticCallback):
    """Base of the picture callbacks: the module's protocol and the fixed validation images.

    Subclasses set ``name`` and ``needs`` (the methods the module must have) and implement
    :meth:`~plugins.base.DiagnosticCallback.probe`, returning the pictures as
    :class:`~plugins.base.ProbeResult` images or figures; the probe runs under ``torch.no_grad``.

    Args:
        every_n_epochs: draw at the end of every n-th training epoch (``None``: only at the end).
        num_images: how many validation images the picture uses.

    Example:
        >>> ReconstructionGrid(every_n_epochs=2).every_n_epochs, ReconstructionGrid().num_images
        (2, 16)
    """

    name = "picture"
    needs: tuple[str, ...] = ()
    runs_train_mode = False  # the pictures put the module in eval mode

    def __init__(self, every_n_epochs: int | None = 1, num_images: int = 16) -> None:
        if num_images < 1:
            raise PluginConfigError(
                f"{type(self).__name__}(num_images={num_images}): a picture needs >= 1 image"
            )
        super().__init__(at_init=False, every_n_epochs=every_n_epochs, at_end=True, probe_size=num_images)

    @property
    def num_images(self) -> int:
        """The number of images (or samples) a picture shows."""
        return self.probe_size

    @override
    def check_module(self, pl_module: L.LightningModule) -> None:
        missing = [m for m in self.needs if not callable(getattr(pl_module, m, None))]
        if missing:
            raise PluginConfigError(
                f"{type(self).__name__} needs {type(pl_module).__name__} to have {missing}: attach it to "
                "an Autoencoder/VAE (reconstructions, latents) or a VAE/GAN (samples)"
            )

    @override
    def take_batch(self, trainer: L.Trainer) -> Any:
        try:
            batch = take_probe_batch(validation_loader(trainer), self.probe_size, self.probe_seed)
            empty = len(probe_inputs(batch)) == 0
        except IndexError:  # an empty map-style data set collates nothing
            empty = True
        if empty:
            raise PluginConfigError(
                f"{type(self).__name__} takes its images from the validation split, which is empty"
            )
        return batch

    @override
    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        with torch.no_grad():
            return self.draw(pl_module, batch)

    def draw(self, pl_module: Any, batch: Any) -> ProbeResult:
        """The pictures of ``pl_module`` (in eval mode, with no gradients) on ``batch``."""
        raise NotImplementedError


class ReconstructionGrid(PictureCallback):
    """Validation images (top row), their corrupted version for a denoising autoencoder, and the
    reconstructions (bottom row): the image ``grid``.

    Example:
        >>> ReconstructionGrid(num_images=8).needs
        ('reconstruct',)
    """

    name, needs = "reconstructions", ("reconstruct",)

    @override
    def draw(self, pl_module: Any, batch: Any) -> ProbeResult:
        images = probe_inputs(batch)
        rows = [images]
        corrupt = getattr(pl_module, "corrupt", None)
        if callable(corrupt) and float(getattr(pl_module, "noise_level", 0.0)) > 0:
            images = corrupt(images)
            rows.append(images)
        rows.append(pl_module.reconstruct(images))
        return ProbeResult(images={"grid": image_grid(torch.cat(rows), columns=len(rows[0]))})


class LatentScatter(PictureCallback):
    """The codes of validation images coloured by class (the figure ``scatter``; codes and labels
    in the step's ``.npz``): the latent plane itself for ``latent_dim`` 2, else its first two
    principal components (said in the title).

    Example:
        >>> LatentScatter(num_images=500).num_images
        500
    """

    name, needs = "latent_scatter", ("encode",)

    def __init__(self, every_n_epochs: int | None = None, num_images: int = 500) -> None:
        super().__init__(every_n_epochs, num_images)

    @override
    def draw(self, pl_module: Any, batch: Any) -> ProbeResult:
        images = probe_inputs(batch)
        labels = batch[1].cpu() if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        codes = pl_module.encode(images).float().cpu()
        latent_dim, title = codes.shape[1], "latent codes"
        if latent_dim > 2:
            centred = codes - codes.mean(0)
            codes = centred @ torch.linalg.svd(centred, full_matrices=False)[2][:2].T
            title = f"latent codes ({latent_dim}-d), first two principal components"
        figure = Figure(figsize=(5, 4.5))
        axes = figure.subplots()
        if labels is None:
            axes.scatter(codes[:, 0], codes[:, 1], s=6)
        else:
            points = axes.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
            figure.colorbar(points, ax=axes, ticks=range(10), label="class")
        axes.set(title=title, xlabel="z1", ylabel="z2")
        arrays = {"codes": codes} if labels is None else {"codes": codes, "labels": labels}
        return ProbeResult(figures={"scatter": figure}, arrays=arrays)


class LatentInterpolation(PictureCallback):
    """Decoded straight lines in latent space between the codes of pairs of validation images,
    one row per pair, ``steps`` images per row (the ends are the reconstructions): the image ``grid``.

    Example:
        >>> LatentInterpolation(num_pairs=3, steps=8).num_images
        6
    """

    name, needs = "interpolations", ("encode", "decode")

    def __init__(self, every_n_epochs: int | None = None, num_pairs: int = 6, steps: int = 10) -> None:
        if steps < 2:
            raise PluginConfigError(f"steps must be >= 2 (the two ends), got {steps}")
        super().__init__(every_n_epochs, 2 * num_pairs)
        self.steps = steps

    @override
    def draw(self, pl_module: Any, batch: Any) -> ProbeResult:
        codes = pl_module.encode(probe_inputs(batch))
        start, end = codes[0::2], codes[1::2]
        if len(end) < len(start):  # a validation split of odd size below 2 * num_pairs
            start = start[: len(end)]
        t = torch.linspace(0, 1, self.steps, device=codes.device).view(1, -1, 1)
        path = (1 - t) * start.unsqueeze(1) + t * end.unsqueeze(1)  # (pairs, steps, latent)
        decoded = pl_module.decode(path.reshape(-1, codes.shape[1]))
        return ProbeResult(images={"grid": image_grid(decoded, columns=self.steps)})


class SampleGrid(PictureCallback):
    """Samples from fixed noise (``sample(n, seed)``): the image ``grid`` at each probe, and the
    ``strip`` of one row of ``strip_width`` samples per probe, kept in the checkpoint.

    Its probe batch is no data but ``(num_images, seed)``: what the sampler is asked for.

    Example:
        >>> SampleGrid(num_images=64, strip_width=8).state_dict()
        {'history': [], 'last_probe_step': -1, 'strip': []}
    """

    name, needs = "samples", ("sample",)

    def __init__(
        self, every_n_epochs: int | None = 1, num_images: int = 64, seed: int = 1234, strip_width: int = 10
    ) -> None:
        super().__init__(every_n_epochs, num_images)
        self.seed, self.strip_width = seed, strip_width
        self.strip: list[np.ndarray] = []  # rows (H, W) or (H, W, 3) in [0, 1]

    @override
    def take_batch(self, trainer: L.Trainer) -> tuple[int, int]:
        return self.num_images, self.seed

    @override
    def draw(self, pl_module: Any, batch: Any) -> ProbeResult:
        n, seed = batch
        samples = pl_module.sample(n, seed=seed)
        row = image_grid(samples[: self.strip_width], columns=self.strip_width)
        self.strip.append(row.permute(1, 2, 0).squeeze(2).numpy())
        strip = (np.concatenate(self.strip, axis=0) * 255).round().astype(np.uint8)
        grid = image_grid(samples, columns=math.ceil(math.sqrt(n)))
        return ProbeResult(images={"grid": grid, "strip": strip})

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "strip": [row.tolist() for row in self.strip]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.strip = [np.asarray(row, dtype=np.float32) for row in state_dict.get("strip", [])]
