"""Autoencoder architectures: an encoder to a latent code and a decoder back to pixel logits.

Both architectures expose ``encoder`` (image -> code) and ``decoder`` (code -> logits shaped like
the image) as submodules, so a plugin can take the Jacobian of the decoder alone. With
``variational=True`` the encoder returns ``2 * latent_dim`` numbers per image: the mean and the
log-variance of a Gaussian posterior ``q(z|x)`` (what the VAE task needs). The decoder returns
logits; the task turns them into pixels (sigmoid) and into a likelihood.

The convolutional builders :func:`conv_encoder` and :func:`conv_decoder` are shared with the
DCGAN (:mod:`tdl_lightning.models.gan`).

Example:
    >>> import torch
    >>> net = MLPAutoencoder(hidden_dims=(64,), latent_dim=8)
    >>> net.encoder(torch.rand(2, 1, 28, 28)).shape, net(torch.rand(2, 1, 28, 28)).shape
    (torch.Size([2, 8]), torch.Size([2, 1, 28, 28]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.models.activations import ACTIVATIONS, activation_module

__all__ = [
    "AutoencoderNet",
    "ConvAutoencoder",
    "MLPAutoencoder",
    "conv_decoder",
    "conv_encoder",
    "layer_activation",
    "mlp_stack",
]

NORMS = ("none", "batch", "layer")


def layer_activation(name: str) -> nn.Module:
    """An activation layer by name: the course's :data:`ACTIVATIONS` plus ``leaky_relu`` (slope 0.2).

    Example:
        >>> layer_activation("leaky_relu")
        LeakyReLU(negative_slope=0.2)
    """
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS) + ['leaky_relu']}"
        )
    return activation_module(name)


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind not in NORMS:
        raise ConfigError(f"unknown norm {kind!r}: choose one of {list(NORMS)}")
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "layer":
        return [nn.GroupNorm(1, channels)]  # normalises over (C, H, W) of each sample
    return []


def _check_dims(owner: str, **dims: int | Sequence[int]) -> None:
    for name, value in dims.items():
        values = list(value) if isinstance(value, Sequence) else [value]
        if not values or any(not isinstance(v, int) or v < 1 for v in values):
            raise ConfigError(f"{owner} {name} must be whole numbers >= 1, got {value!r}")


def mlp_stack(dims: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ... -> dims[-1]``, the activation between them (not after).

    Example:
        >>> mlp_stack([4, 8, 2], "relu")
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=2, bias=True)
        )
    """
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i > 0:
            layers.append(layer_activation(activation))
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def _check_side(owner: str, input_size: int, channels: Sequence[int]) -> int:
    factor = 2 ** len(channels)
    if input_size % factor:
        raise ConfigError(
            f"{owner} halves the image {len(channels)} times, so input_size must be a multiple of "
            f"{factor}, got {input_size}: use fewer channels entries or resize the images"
        )
    return input_size // factor


def conv_encoder(
    in_channels: int,
    input_size: int,
    channels: Sequence[int],
    out_features: int,
    activation: str = "relu",
    norm: str = "none",
) -> nn.Sequential:
    """Strided 4x4 convolutions (each halves the side), then a linear map to ``out_features``.

    ``norm`` (``none``, ``batch`` or ``layer``) follows every convolution but the first, as in DCGAN.

    Example:
        >>> conv_encoder(1, 28, [8, 16], out_features=3)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 3])
    """
    _check_dims("conv_encoder", in_channels=in_channels, channels=channels, out_features=out_features)
    side = _check_side("conv_encoder", input_size, channels)
    layers: list[nn.Module] = []
    previous = in_channels
    for i, width in enumerate(channels):
        layers.append(nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1))
        layers += _norm(norm, width) if i > 0 else []
        layers.append(layer_activation(activation))
        previous = width
    layers += [nn.Flatten(), nn.Linear(previous * side * side, out_features)]
    return nn.Sequential(*layers)


def conv_decoder(
    latent_dim: int,
    channels: Sequence[int],
    out_channels: int,
    output_size: int,
    activation: str = "relu",
    norm: str = "none",
) -> nn.Sequential:
    """A linear map to ``channels[0]`` feature maps, then transposed 4x4 convolutions (each doubles
    the side) through ``channels[1:]`` to ``out_channels`` logits of side ``output_size``.

    Example:
        >>> conv_decoder(3, [16, 8], out_channels=1, output_size=28)(torch.zeros(2, 3)).shape
        torch.Size([2, 1, 28, 28])
    """
    _check_dims("conv_decoder", latent_dim=latent_dim, channels=channels, out_channels=out_channels)
    side = _check_side("conv_decoder", output_size, channels)
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, channels[0] * side * side),
        nn.Unflatten(1, (channels[0], side, side)),
        *_norm(norm, channels[0]),
        layer_activation(activation),
    ]
    widths = [*channels, out_channels]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.ConvTranspose2d(fan_in, fan_out, kernel_size=4, stride=2, padding=1))
        if i < len(channels) - 1:
            layers += [*_norm(norm, fan_out), layer_activation(activation)]
    return nn.Sequential(*layers)


class AutoencoderNet(nn.Module):
    """An ``encoder`` and a ``decoder``; ``forward(x)`` returns the decoder's logits for ``x``'s code.

    Attributes:
        latent_dim: size of the code ``z``.
        input_shape: shape of one image, e.g. ``(1, 28, 28)``.
        variational: the encoder returns ``(mean, log-variance)`` stacked, ``2 * latent_dim`` numbers.

    Example:
        >>> unflatten = nn.Unflatten(1, (1, 2, 2))
        >>> net = AutoencoderNet(nn.Flatten(), unflatten, latent_dim=4, input_shape=(1, 2, 2))
        >>> net(torch.ones(1, 1, 2, 2)).shape
        torch.Size([1, 1, 2, 2])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        input_shape: Sequence[int],
        variational: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.input_shape, self.variational = latent_dim, tuple(input_shape), variational

    @override
    def forward(self, x: Tensor) -> Tensor:
        code = self.encoder(x)
        return self.decoder(code[:, : self.latent_dim])  # the posterior mean when variational


class MLPAutoencoder(AutoencoderNet):
    """A fully connected autoencoder ``784 - hidden_dims - latent_dim - reversed(hidden_dims) - 784``.

    Args:
        input_shape: shape of one image.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        latent_dim: size of the code.
        activation: hidden activation (``relu``, ``tanh``, ``leaky_relu``, ...).
        variational: Gaussian encoder (mean and log-variance) for the VAE task.

    Example:
        >>> MLPAutoencoder(hidden_dims=(400,), latent_dim=20, variational=True).encoder[-1].out_features
        40
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (256,),
        latent_dim: int = 32,
        activation: str = "relu",
        variational: bool = False,
    ) -> None:
        _check_dims("MLPAutoencoder", input_shape=input_shape, latent_dim=latent_dim)
        if hidden_dims:
            _check_dims("MLPAutoencoder", hidden_dims=hidden_dims)
        pixels = int(torch.tensor(list(input_shape)).prod())
        code = latent_dim * (2 if variational else 1)
        encoder = nn.Sequential(nn.Flatten(), *mlp_stack([pixels, *hidden_dims, code], activation))
        decoder = nn.Sequential(
            *mlp_stack([latent_dim, *reversed(list(hidden_dims)), pixels], activation),
            nn.Unflatten(1, tuple(input_shape)),
        )
        super().__init__(encoder, decoder, latent_dim, input_shape, variational)
        self.hidden_dims, self.activation = tuple(hidden_dims), activation


class ConvAutoencoder(AutoencoderNet):
    """A convolutional autoencoder: strided convolutions down to a linear code, transposed ones back up.

    Args:
        in_channels: image channels.
        input_size: side of the square images (a multiple of ``2 ** len(channels)``).
        channels: feature maps after each strided convolution (the decoder mirrors them).
        latent_dim: size of the code.
        activation: hidden activation.
        variational: Gaussian encoder (mean and log-variance) for the VAE task.

    Example:
        >>> net = ConvAutoencoder(channels=(8, 16), latent_dim=4)
        >>> net(torch.rand(3, 1, 28, 28)).shape
        torch.Size([3, 1, 28, 28])
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: int = 28,
        channels: Sequence[int] = (32, 64),
        latent_dim: int = 32,
        activation: str = "relu",
        variational: bool = False,
    ) -> None:
        _check_dims("ConvAutoencoder", latent_dim=latent_dim, channels=channels)
        code = latent_dim * (2 if variational else 1)
        encoder = conv_encoder(in_channels, input_size, channels, code, activation)
        decoder = conv_decoder(
            latent_dim, list(reversed(list(channels))), in_channels, input_size, activation
        )
        super().__init__(encoder, decoder, latent_dim, (in_channels, input_size, input_size), variational)
        self.channels, self.activation = tuple(channels), activation
