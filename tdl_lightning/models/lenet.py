"""LeNet-5 (LeCun et al. 1998): two convolutions and three fully connected layers.

The classic network uses tanh and average pooling on 32x32 inputs; 28x28 MNIST digits are
zero-padded by two pixels in the first convolution, as in the original paper. ``activation="relu"``
with ``pooling="max"`` is the modern variant.

Example:
    >>> import torch
    >>> net = LeNet5()
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> LeNet5(in_channels=3, input_size=32, activation="relu", pooling="max").conv1
    Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1))
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.models.activations import activation_module

__all__ = ["LeNet5"]

_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(nn.Sequential):
    """LeNet-5: ``conv1 (6@5x5) - pool - conv2 (16@5x5) - pool - fc1 (120) - fc2 (84) - fc3``.

    Args:
        num_classes: outputs of the last layer.
        in_channels: 1 for MNIST-like data, 3 for CIFAR-10.
        input_size: side of the square input images (28 for MNIST, 32 for CIFAR-10).
        activation: ``tanh`` (classic) or ``relu`` (modern).
        pooling: ``avg`` (classic) or ``max`` (modern).

    Example:
        >>> [name for name, m in LeNet5().named_children() if isinstance(m, nn.Conv2d)]
        ['conv1', 'conv2']
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        activation: str = "tanh",
        pooling: str = "avg",
    ) -> None:
        if activation not in ("tanh", "relu"):
            raise ConfigError(f"LeNet5 activation must be 'tanh' or 'relu', got {activation!r}")
        if pooling not in _POOLS:
            raise ConfigError(f"LeNet5 pooling must be 'avg' or 'max', got {pooling!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"LeNet5 {name} must be a whole number >= 1, got {value!r}")
        if input_size < 28:
            raise ConfigError(
                f"LeNet5 needs inputs of at least 28x28 pixels, got input_size={input_size}: "
                "resize the images or use a DeepMLP"
            )
        padding = 2 if input_size < 32 else 0  # 28x28 digits padded to 32x32, as in the paper
        side = ((input_size + 2 * padding - 4) // 2 - 4) // 2
        pool = _POOLS[pooling]
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
                act1=activation_module(activation),
                pool1=pool(2),
                conv2=nn.Conv2d(6, 16, kernel_size=5),
                act2=activation_module(activation),
                pool2=pool(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * side * side, 120),
                act3=activation_module(activation),
                fc2=nn.Linear(120, 84),
                act4=activation_module(activation),
                fc3=nn.Linear(84, num_classes),
            )
        )
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.activation, self.pooling = activation, pooling

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if tuple(x.shape[1:]) != expected:
            raise ConfigError(
                f"LeNet5 expects images of shape {expected} (channels, height, width), got "
                f"{tuple(x.shape[1:])}: set the model's in_channels and input_size to match the data"
            )
        return super().forward(x)
