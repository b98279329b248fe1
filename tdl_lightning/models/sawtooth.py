"""Telgarsky's sawtooth: a width-2 ReLU network of depth ``k`` with ``2**k`` linear pieces on ``[0, 1]``.

The tent map ``t(x) = 2 relu(x) - 4 relu(x - 1/2)`` folds ``[0, 1]`` onto itself; composed ``k``
times it has ``2**k`` pieces (Telgarsky 2015/2016). Each composition is one hidden layer of two
ReLU units, so depth buys pieces exponentially: a one-hidden-layer ReLU net with ``N`` units has
at most ``N + 1`` pieces on a line, and needs ``2**k - 1`` units to do the same.

Example:
    >>> import torch
    >>> net = Sawtooth(3)
    >>> net(torch.tensor([[0.0], [0.0625], [0.125], [0.5]])).flatten().tolist()
    [0.0, 0.5, 1.0, 0.0]
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from tdl_lightning.errors import ConfigError

__all__ = ["Sawtooth", "tent_map"]


def tent_map(x: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The tent map ``t(x) = 1 - |2x - 1|`` composed ``k`` times (the sawtooth in closed form).

    Example:
        >>> tent_map(torch.tensor([0.25, 0.5]), k=2).tolist()
        [1.0, 0.0]
    """
    for _ in range(k):
        x = 1 - (2 * x - 1).abs()
    return x


class Sawtooth(nn.Sequential):
    """The ``k``-fold tent map as a ReLU network: ``k`` hidden layers of width 2 and a linear read-out.

    Layer 1 computes ``(relu(x), relu(x - 1/2))``; every later layer forms ``t = 2 a - 4 b`` from
    the previous pair and computes ``(relu(t), relu(t - 1/2))``; the read-out gives ``2 a - 4 b``.
    The weights are exact binary fractions, so in floating point the network equals
    :func:`tent_map` exactly on ``[0, 1]``. It has ``6 k + 1`` parameters.

    Args:
        k: number of compositions (hidden layers), at least 1.
        trainable: whether the weights take part in training (``False``: a fixed teacher).

    Example:
        >>> net = Sawtooth(4)
        >>> x = torch.rand(100, 1)
        >>> torch.equal(net(x), tent_map(x, 4)), sum(p.numel() for p in net.parameters())
        (True, 25)
    """

    def __init__(self, k: int = 4, trainable: bool = True) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"Sawtooth needs k >= 1 compositions of the tent map, got k={k!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for l in range(1, k + 1):
            layer = nn.Linear(1 if l == 1 else 2, 2)
            with torch.no_grad():
                weight = [[1.0], [1.0]] if l == 1 else [[2.0, -4.0], [2.0, -4.0]]
                layer.weight.copy_(torch.tensor(weight))
                layer.bias.copy_(torch.tensor([0.0, -0.5]))
            layers[f"fc{l}"] = layer
            layers[f"act{l}"] = nn.ReLU()
        readout = nn.Linear(2, 1)
        with torch.no_grad():
            readout.weight.copy_(torch.tensor([[2.0, -4.0]]))
            readout.bias.zero_()
        layers["readout"] = readout
        super().__init__(layers)
        self.k = k
        self.requires_grad_(trainable)
