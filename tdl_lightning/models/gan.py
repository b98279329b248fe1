"""GAN architectures: a ``generator`` (noise ``z`` -> image in ``[0, 1]``) and a ``discriminator``
(image -> one logit, or a critic's score for WGAN-GP).

``MLPGAN`` is the fully connected GAN of Goodfellow et al. (2014); ``DCGAN`` follows Radford et al.
(2016): transposed convolutions with BatchNorm and ReLU in the generator, strided convolutions with
LeakyReLU (0.2) in the discriminator. For WGAN-GP the critic must not use BatchNorm (the gradient
penalty is per sample): choose ``discriminator_norm="layer"`` or ``"none"``.

Example:
    >>> import torch
    >>> gan = DCGAN(latent_dim=16, channels=(16, 8))
    >>> images = gan.generator(torch.randn(2, 16))
    >>> images.shape, bool(images.min() >= 0), gan.discriminator(images).shape
    (torch.Size([2, 1, 28, 28]), True, torch.Size([2, 1]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from typing_extensions import override

from tdl_lightning.models.autoencoder import _check_dims, conv_decoder, conv_encoder, mlp_stack

__all__ = ["DCGAN", "GANNet", "MLPGAN"]


class GANNet(nn.Module):
    """A ``generator`` and a ``discriminator``; ``forward(z)`` is the generator.

    Attributes:
        latent_dim: size of the noise ``z ~ N(0, I)``.
        output_shape: shape of one generated image.

    Example:
        >>> net = GANNet(nn.Linear(2, 4), nn.Linear(4, 1), latent_dim=2, output_shape=(4,))
        >>> net(torch.zeros(3, 2)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, generator: nn.Module, discriminator: nn.Module, latent_dim: int, output_shape: Sequence[int]
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.output_shape = latent_dim, tuple(output_shape)

    @override
    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)


class MLPGAN(GANNet):
    """Fully connected generator ``latent - hidden_dims - pixels`` and discriminator ``pixels -
    reversed(hidden_dims) - 1``, LeakyReLU (0.2) throughout.

    Args:
        latent_dim: size of the noise.
        hidden_dims: the generator's hidden widths (the discriminator mirrors them).
        output_shape: shape of one image.

    Example:
        >>> MLPGAN(latent_dim=8, hidden_dims=(32,)).generator(torch.zeros(1, 8)).shape
        torch.Size([1, 1, 28, 28])
    """

    def __init__(
        self,
        latent_dim: int = 64,
        hidden_dims: Sequence[int] = (256, 512),
        output_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        _check_dims("MLPGAN", latent_dim=latent_dim, hidden_dims=hidden_dims, output_shape=output_shape)
        pixels = int(torch.tensor(list(output_shape)).prod())
        generator = nn.Sequential(
            *mlp_stack([latent_dim, *hidden_dims, pixels], "leaky_relu"),
            nn.Sigmoid(),
            nn.Unflatten(1, tuple(output_shape)),
        )
        discriminator = nn.Sequential(
            nn.Flatten(), *mlp_stack([pixels, *reversed(list(hidden_dims)), 1], "leaky_relu")
        )
        super().__init__(generator, discriminator, latent_dim, output_shape)
        self.hidden_dims = tuple(hidden_dims)


class DCGAN(GANNet):
    """Deep convolutional GAN for small square images (28x28 MNIST by default).

    Args:
        latent_dim: size of the noise.
        channels: the discriminator's feature maps after each strided convolution; the generator
            mirrors them (``(64, 128)`` gives a 128x7x7 -> 64x14x14 -> 1x28x28 generator).
        in_channels: image channels.
        image_size: side of the images (a multiple of ``2 ** len(channels)``).
        generator_norm: ``batch`` (DCGAN), ``layer`` or ``none``.
        discriminator_norm: ``batch`` (DCGAN), ``layer`` or ``none`` (``batch`` is refused by WGAN-GP).

    Example:
        >>> type(DCGAN(channels=(8, 16), discriminator_norm="layer").discriminator[3]).__name__
        'GroupNorm'
    """

    def __init__(
        self,
        latent_dim: int = 64,
        channels: Sequence[int] = (64, 128),
        in_channels: int = 1,
        image_size: int = 28,
        generator_norm: str = "batch",
        discriminator_norm: str = "batch",
    ) -> None:
        _check_dims("DCGAN", latent_dim=latent_dim, channels=channels, in_channels=in_channels)
        generator = nn.Sequential(
            *conv_decoder(
                latent_dim, list(reversed(list(channels))), in_channels, image_size, "relu", generator_norm
            ),
            nn.Sigmoid(),
        )
        discriminator = conv_encoder(in_channels, image_size, channels, 1, "leaky_relu", discriminator_norm)
        super().__init__(generator, discriminator, latent_dim, (in_channels, image_size, image_size))
        self.channels = tuple(channels)
        self.generator_norm, self.discriminator_norm = generator_norm, discriminator_norm
