"""Average pools as strided sums in the curvature graphs (:func:`strided_pools`) against PyTorch's.

The pool, its backward and a Hessian-vector product through them equal PyTorch's bit for bit
(float32, LeNet-like, and with a partial last window); the Hessian of a small CNN equals
``torch.func.hessian`` to 1e-10 (float64); pools it does not cover keep PyTorch's own backward.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import plugins.curvature.model as model_module
from plugins.curvature import HessianOperator
from plugins.curvature.pooling import strided_pools

pytestmark = pytest.mark.usefixtures("one_thread")


def pooled_cnn(side: int, dtype: torch.dtype) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    width = 3 * ((side - 2) // 2) ** 2
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(width, 3)
    ).to(dtype)
    return model, (torch.randn(6, 1, side, side, dtype=dtype), torch.randint(0, 3, (6,)))


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


@pytest.mark.parametrize("side", [10, 11])  # 11: the pool drops a row and a column, as PyTorch's does
def test_a_product_through_strided_pools_is_pytorchs_bit_for_bit(side, monkeypatch):
    model, batch = pooled_cnn(side, torch.float32)
    op = HessianOperator(model, cross_entropy, batch)
    v = torch.randn(op.size)
    fast = op.matvec(v)
    monkeypatch.setattr(model_module, "strided_pools", contextlib.nullcontext)
    assert torch.equal(fast, HessianOperator(model, cross_entropy, batch).matvec(v))


def test_the_hessian_through_strided_pools_is_the_dense_hessian():
    model, batch = pooled_cnn(11, torch.float64)
    op = HessianOperator(model, cross_entropy, batch)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dense = op.matmat(torch.eye(op.size, dtype=torch.float64))
    assert torch.allclose(dense, torch.func.hessian(loss)(theta), atol=1e-10, rtol=0)


def test_the_pool_and_its_backward_are_pytorchs_bit_for_bit():
    x = torch.randn(4, 6, 28, 28, requires_grad=True)
    g = torch.randn(4, 6, 14, 14)
    with strided_pools():
        y = F.avg_pool2d(x, 2)
        (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (plain,) = torch.autograd.grad(F.avg_pool2d(x, 2), x, g)
    assert type(y.grad_fn).__name__ == "_AveragePoolBackward"
    assert torch.equal(y, F.avg_pool2d(x, 2)) and torch.equal(gx, plain)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "stride": 1},
        {"kernel_size": 2, "padding": 1},
        {"kernel_size": 2, "ceil_mode": True},
    ],
)
def test_other_pools_keep_pytorchs_backward(kwargs):
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    with strided_pools():
        y = F.avg_pool2d(x, **kwargs)
    assert type(y.grad_fn).__name__ == "AvgPool2DBackward0"
