"""Activation functions by the names the course uses.

Example:
    >>> import torch
    >>> act = activation_module("hard_tanh")
    >>> act(torch.tensor([-3.0, 0.5, 3.0]))
    tensor([-1.0000,  0.5000,  1.0000])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError

__all__ = ["ACTIVATIONS", "Erf", "activation_module"]


class Erf(nn.Module):
    """The error function as a layer (its mean-field integrals have closed forms).

    Example:
        >>> Erf()(torch.zeros(2))
        tensor([0., 0.])
    """

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "linear": nn.Identity,
    "hard_tanh": nn.Hardtanh,
    "sigmoid": nn.Sigmoid,
    "erf": Erf,
}


def activation_module(name: str) -> nn.Module:
    """Return a fresh activation layer for ``name`` (one of :data:`ACTIVATIONS`).

    Example:
        >>> activation_module("relu")
        ReLU()
    """
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)}") from None
