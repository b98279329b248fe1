"""The data and model of the filter-picture tests: MNIST5k's training split and a LeNet-5 trained on it.

Both are built once per test session, however many test modules use them; each call of
:func:`trained_lenet_copy` gives a module its own copy of the trained network.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from tdl_lightning.data import MNIST5k
from tdl_lightning.models import LeNet5


@functools.cache
def mnist_train_split() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST5k's training images and labels."""
    dm = MNIST5k()
    dm.setup()
    return dm.splits["train"]


@functools.cache
def _trained_lenet() -> LeNet5:
    x, y = mnist_train_split()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = LeNet5()
        optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(150):
            idx = torch.randint(0, len(x), (64,), generator=order)
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.zero_grad(set_to_none=True)
    return net


def trained_lenet_copy() -> LeNet5:
    """Classic LeNet-5 (tanh, average pooling), 150 Adam steps on MNIST5k: about 92% val accuracy."""
    x, y = mnist_train_split()
    net = copy.deepcopy(_trained_lenet())
    with torch.no_grad():
        assert (net(x[:500]).argmax(1) == y[:500]).float().mean() > 0.85, "the LeNet fixture did not train"
    return net
