"""The grid's forwards (:class:`plugins.grid_forward.GridForward`) against the model evaluated directly.

A layer that reads the data, combined from its outputs at the basis weights, gives the loss of the
weights set directly to 1e-6 relative in float32 and 1e-12 in float64 (the centre bit for bit) and
runs once per basis element, not once per point; layers it cannot combine run directly; an in-place
activation after it does not corrupt the cached outputs. Strided average pools equal
``avg_pool2d`` bit for bit where they apply and leave every other pooling call to PyTorch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from plugins.grid_forward import GridForward, strided_average_pool
from plugins.loss_landscape import _losses_at, _plane_points, random_directions

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn(dtype: torch.dtype, inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True) if inplace else nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 3, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 3),
    ).to(dtype)


def mlp(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(10, 1, 8, 8, dtype=dtype), torch.randint(0, 3, (10,))


def cross_entropy(model, b):
    return F.cross_entropy(model(b[0]), b[1])


def direct(model, data, basis, points):
    """The loss with the weights set to each point, no grid forward: the definition."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    losses = []
    with torch.no_grad():
        for point in points:
            for j, p in enumerate(params):
                p.copy_(sum(c * w[j] for c, w in zip(point, basis, strict=True)))
            losses.append(float(cross_entropy(model, data)))
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize(
    "make", [cnn, mlp, lambda dtype: cnn(dtype, inplace=True)], ids=["cnn", "mlp", "inplace"]
)
def test_the_grid_is_the_loss_of_the_weights_set_directly(make, dtype, tol):
    model, data = make(dtype), batch(dtype)
    centre = [p.detach().clone() for p in model.parameters()]
    basis = [centre, *random_directions(model, 2, seed=3)]
    points = _plane_points([torch.linspace(-1, 1, 5).tolist()] * 2)
    fast = torch.tensor(_losses_at(model, cross_entropy, data, basis, points), dtype=torch.float64)
    exact = direct(model, data, basis, points)
    assert float(((fast - exact).abs() / exact.abs()).max()) <= tol
    assert fast[0] == exact[0]  # the centre: the layer's own output
    assert all(torch.equal(p, c) for p, c in zip(model.parameters(), centre, strict=True))


class _Convolutions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution:
            self.inputs.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sliced", [False, True], ids=["batch", "slice-of-a-data-set"])
def test_the_data_layer_runs_once_per_basis_element_not_once_per_point(sliced):
    model, data = cnn(torch.float32), batch(torch.float32)
    if sliced:  # a probe batch cut from a larger tensor is a view of it
        whole = torch.cat([data[0], torch.randn(5, 1, 8, 8)])
        data = (whole[:10], data[1])
    basis = [[p.detach().clone() for p in model.parameters()], *random_directions(model, 2)]
    points = _plane_points([[-1.0, 0.0, 1.0]] * 2)  # 10 points
    with _Convolutions() as seen:
        _losses_at(model, cross_entropy, data, basis, points)
    first = [shape for shape in seen.inputs if shape == tuple(data[0].shape)]
    if sliced:
        assert data[0]._base is not None
    assert len(first) == len(basis)  # 3, not 10
    assert len(seen.inputs) - len(first) == len(points)  # the second convolution: once per point


def test_layers_it_cannot_combine_run_directly():
    layer = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    basis = [[p.detach().clone() for p in layer.parameters()], [torch.ones(2, 4), torch.ones(2)]]
    frozen_bias = torch.zeros(2)  # not among the parameters
    with GridForward(list(layer.parameters()), basis, x) as grid:
        grid.point = (1.0, 1.0)
        with torch.no_grad():
            other_input = layer(x.clone())  # not the data
            frozen = F.linear(x, layer.weight, frozen_bias)
        tracked = layer(x)  # grad enabled: the layer itself
    assert torch.equal(other_input, layer(x.clone()))
    assert torch.equal(frozen, F.linear(x, layer.weight, frozen_bias))
    assert tracked.grad_fn is not None and torch.equal(tracked, layer(x))


@pytest.mark.parametrize(
    ("shape", "kernel", "dtype"),
    [
        ((8, 6, 28, 28), (2, 2), torch.float32),
        ((4, 3, 27, 27), (3, 3), torch.float64),
        ((4, 3, 12, 12), (2, 3), torch.float32),
        ((4, 3, 13, 11), (2, 2), torch.float32),  # windows that do not fit are dropped, as PyTorch does
        ((3, 12, 12), (2, 2), torch.float64),  # unbatched
    ],
)
def test_the_strided_pool_is_avg_pool2d_bit_for_bit(shape, kernel, dtype):
    x = torch.randn(shape, dtype=dtype)
    assert torch.equal(strided_average_pool(x, kernel), F.avg_pool2d(x, kernel))
    assert torch.equal(strided_average_pool(x.contiguous(), kernel), F.avg_pool2d(x, kernel))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2},  # overlapping windows
        {"kernel_size": 2, "padding": 1},
        {"kernel_size": 2, "ceil_mode": True},  # 7 x 7: a partial last window
        {"kernel_size": 2, "divisor_override": 3},
    ],
)
def test_every_average_pool_in_the_grid_is_avg_pool2d(kwargs):
    x = torch.randn(2, 3, 7, 7)
    with GridForward([], [], x), torch.no_grad():
        pooled = F.avg_pool2d(x, **kwargs)
    assert torch.equal(pooled, F.avg_pool2d(x, **kwargs))


def test_a_layer_too_large_for_the_cache_runs_directly(monkeypatch):
    monkeypatch.setattr("plugins.grid_forward.CACHE_BYTES", 100)
    model, data = cnn(torch.float32), batch(torch.float32)
    basis = [[p.detach().clone() for p in model.parameters()], *random_directions(model, 2)]
    points = _plane_points([[-1.0, 0.0, 1.0]] * 2)
    with _Convolutions() as seen:
        losses = _losses_at(model, cross_entropy, data, basis, points)
    first = [shape for shape in seen.inputs if shape == tuple(data[0].shape)]
    assert len(first) == len(points) + 1  # one try, then directly at every point
    exact = direct(model, data, basis, points)
    assert torch.allclose(torch.tensor(losses, dtype=torch.float64), exact, rtol=1e-6, atol=0)
