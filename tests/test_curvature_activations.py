"""tanh's kept double-backward factor (:func:`tanh_factors`): Hessian products equal PyTorch's bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugins.curvature import HessianOperator
from plugins.curvature.activations import tanh_factors

pytestmark = pytest.mark.usefixtures("one_thread")


def tanh_net() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, (torch.randn(32, 5), torch.randint(0, 3, (32,)))


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_a_hessian_product_with_kept_factors_is_pytorchs_bit_for_bit():
    model, batch = tanh_net()
    op = HessianOperator(model, cross_entropy, batch)
    params = list(model.parameters())
    grads = torch.autograd.grad(cross_entropy(model, batch), params, create_graph=True)
    for _ in range(2):  # the second product reads the kept factor
        v = torch.randn(op.size)
        plain = torch.autograd.grad(grads, params, list(op.split(v)), retain_graph=True)
        assert torch.equal(op.matvec(v), torch.cat([g.reshape(-1) for g in plain]))


def test_values_first_and_third_derivatives_are_pytorchs():
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 3, dtype=torch.float64)

    def third(mode):
        with mode:
            y = torch.tanh(z)
            (g,) = torch.autograd.grad(y.pow(3).sum(), z, create_graph=True)
            (h,) = torch.autograd.grad((g * v).sum(), z, create_graph=True)  # a graph of the product
            (t,) = torch.autograd.grad((h * v).sum(), z)
        return y, g, h, t

    import contextlib

    fast, plain = third(tanh_factors()), third(contextlib.nullcontext())
    assert type(fast[0].grad_fn).__name__ == "_TanhBackward"
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))
