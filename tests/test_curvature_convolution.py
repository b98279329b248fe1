"""The weight-only convolutions of the curvature graphs against plain autograd.

Inside :func:`weight_only_convolutions` a convolution of data that needs no gradient gives the
same output and the same first derivatives bit for bit (float32), the Hessian and GGN of small CNNs
(1-D, 2-D, 3-D; stride, padding, dilation, groups, with and without bias) equal the dense
``torch.func.hessian`` to 1e-10 (float64), and a product no longer runs the transposed convolution
that makes the data's gradient (logged by a dispatch mode: plain autograd does run it). With the
unfolded data (``columns=True``, the operators' setting on a CPU) products equal those by
convolution to float rounding (1e-5 float32, 1e-12 float64), and so do the eigenvalues and the
density that HessianEigenvalues reports.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from plugins.curvature import GGNOperator, HessianOperator, convolution
from plugins.curvature import model as model_module
from plugins.curvature.convolution import weight_only_convolutions

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "conv1d": (nn.Conv1d(2, 4, 3, stride=2, padding=1), (6, 2, 9)),
    "conv2d": (nn.Conv2d(1, 3, 3, padding=2, dilation=2), (5, 1, 7, 7)),
    "conv2d-groups-nobias": (nn.Conv2d(2, 4, (3, 2), stride=(1, 2), groups=2, bias=False), (4, 2, 6, 6)),
    "conv3d": (nn.Conv3d(1, 2, 2), (3, 1, 4, 4, 4)),
}


def cnn(case: str, cases=CASES, dtype=D, seed=3) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    conv, shape = cases[case]
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        width = conv.to(dtype)(x)[0].numel()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(width, 3)).to(dtype)
    return model, (x, torch.randint(0, 3, (shape[0],)))


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def dense_hessian(model, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])

    return torch.func.hessian(loss)(theta)


@pytest.mark.parametrize("case", list(CASES))
def test_the_hessian_through_a_data_convolution_is_the_dense_hessian(case):
    model, batch = cnn(case)
    op = HessianOperator(model, cross_entropy, batch)
    assert type(model[0](batch[0]).grad_fn).__name__ == "ConvolutionBackward0"  # outside: PyTorch's own
    assert torch.allclose(
        op.matmat(torch.eye(op.size, dtype=D)), dense_hessian(model, batch), atol=1e-10, rtol=0
    )


def test_the_ggn_through_a_data_convolution_is_jt_hz_j():
    model, batch = cnn("conv2d")
    fast = GGNOperator(model, cross_entropy, batch).matmat(
        torch.eye(sum(p.numel() for p in model.parameters()), dtype=D)
    )
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach() for n, p in model.named_parameters()}
    jac = torch.func.jacrev(lambda t: functional_call(model, t, (batch[0],)))(theta)
    j = torch.cat([jac[n].reshape(*jac[n].shape[:2], -1) for n in names], dim=2).reshape(-1, fast.shape[0])
    z = model(batch[0]).detach()
    hz = torch.func.hessian(lambda out: F.cross_entropy(out, batch[1]))(z).reshape(j.shape[0], j.shape[0])
    assert torch.allclose(fast, j.T @ hz @ j, atol=1e-10, rtol=0)


@pytest.mark.parametrize("columns", [False, True])
def test_the_output_and_gradient_are_those_of_plain_autograd_bit_for_bit(columns):
    """With or without the unfolded data (``columns``), the forward and first backward are plain
    autograd's to the bit."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 5, padding=2)
    x, v = torch.randn(16, 1, 28, 28), torch.randn(16, 6, 28, 28)
    plain_out = conv(x)
    plain = torch.autograd.grad((plain_out * v).sum(), list(conv.parameters()))
    with weight_only_convolutions(columns=columns):
        out = conv(x)
        fast = torch.autograd.grad((out * v).sum(), list(conv.parameters()), create_graph=True)
    assert type(out.grad_fn).__name__ == "_DataConvolutionBackward"
    assert torch.equal(out, plain_out)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


def test_other_convolutions_pass_through():
    conv = nn.Conv2d(2, 2, 3, padding="same")
    x = torch.randn(2, 2, 5, 5)
    with weight_only_convolutions():
        needs_grad = conv(x.clone().requires_grad_())  # an inner layer: its input's gradient is needed
        by_name = conv(x)  # padding="same": PyTorch's own path
        with torch.no_grad():
            untracked = conv(x)
        unbatched = conv(x[0])
    assert type(needs_grad.grad_fn).__name__ == "ConvolutionBackward0"
    assert type(by_name.grad_fn).__name__ == "ConvolutionBackward0"
    assert untracked.grad_fn is None
    assert unbatched.grad_fn is not None and type(unbatched.grad_fn).__name__ != "_DataConvolutionBackward"


class _ConvolutionShapes(TorchDispatchMode):
    """The output shapes of every convolution run inside."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            first = out[0] if isinstance(out, tuple) else out
            if first is not None:
                self.shapes.append(tuple(first.shape))
        return out


@pytest.mark.parametrize("columns", [False, True])
def test_a_product_no_longer_makes_the_data_gradient(columns):
    model, batch = cnn("conv2d")
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    grads = torch.autograd.grad(cross_entropy(model, batch), params, create_graph=True)
    with _ConvolutionShapes() as plain:
        exact = torch.autograd.grad(grads, params, v)
    with weight_only_convolutions(columns=columns):
        fast_grads = torch.autograd.grad(cross_entropy(model, batch), params, create_graph=True)
    with _ConvolutionShapes() as fast:
        product = torch.autograd.grad(fast_grads, params, v)
    data = tuple(batch[0].shape)
    assert data in plain.shapes  # plain autograd computes the gradient of the data and drops it
    assert data not in fast.shapes
    # without columns the product still convolves (conv(x, v_W)); with them it multiplies the unfolded data
    assert bool(fast.shapes) != columns
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(product, exact, strict=True))


COLUMN_CASES = {
    "lenet-first-layer": (nn.Conv2d(1, 6, 5, padding=2), (8, 1, 16, 16)),
    "stride-dilation-no-bias": (
        nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, bias=False),
        (5, 3, 11, 11),
    ),
    "rectangular": (nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(2, 0)), (4, 2, 9, 8)),
}


def column_operators(case, dtype, monkeypatch):
    """The Hessian of a CNN whose first layer is ``case`` with and without the unfolded data."""
    model, batch = cnn(case, COLUMN_CASES, dtype, seed=5)
    fast = HessianOperator(model, cross_entropy, batch)
    monkeypatch.setattr(model_module, "weight_only_convolutions", lambda columns: weight_only_convolutions())
    plain = HessianOperator(model, cross_entropy, batch)
    return fast, plain


@pytest.mark.parametrize("case", list(COLUMN_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_by_unfolded_data_equal_those_by_convolution(case, dtype, monkeypatch):
    fast, plain = column_operators(case, dtype, monkeypatch)
    m = torch.randn(fast.size, 3, dtype=dtype)
    a, b = fast.matmat(m), plain.matmat(m)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert float((a - b).norm() / b.norm()) < tolerance


def test_without_room_or_with_groups_products_convolve_as_before(monkeypatch):
    monkeypatch.setattr(convolution, "COLUMNS_BYTES", 1024)  # the data unfolded would not fit
    fast, plain = column_operators("lenet-first-layer", torch.float32, monkeypatch)
    v = torch.randn(fast.size)
    assert torch.equal(fast.matvec(v), plain.matvec(v))
    model, batch = cnn("conv2d-groups-nobias")
    x, w = batch[0].float(), torch.randn(4, 1, 3, 2, requires_grad=True)
    with weight_only_convolutions(columns=True):
        y = F.conv2d(x, w, stride=(1, 2), groups=2)
    assert y.grad_fn is not None and y.grad_fn.columns is None  # the node is its ctx


def test_hessian_eigenvalues_and_density_by_unfolded_data_equal_the_convolutions(monkeypatch):
    """LeNet-5's first layer on 64 digits-sized inputs: the numbers HessianEigenvalues reports."""
    from plugins.curvature.lanczos import lanczos_eigenvalues
    from plugins.curvature.slq import spectral_density

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 4, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(100, 10),
    )
    batch = (torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    fast = HessianOperator(model, cross_entropy, batch)
    monkeypatch.setattr(model_module, "weight_only_convolutions", lambda columns: weight_only_convolutions())
    plain = HessianOperator(model, cross_entropy, batch)
    top = [lanczos_eigenvalues(op, 2, tol=1e-3) for op in (fast, plain)]
    assert torch.allclose(top[0], top[1], rtol=1e-5, atol=0)  # far inside tol
    density = [spectral_density(op, steps=20) for op in (fast, plain)]
    scale = float(abs(density[1].nodes).max())
    assert abs(density[0].nodes - density[1].nodes).max() < 1e-4 * scale
    assert abs(density[0].weights - density[1].weights).max() < 1e-4
    for j in range(1, 6):  # the quadrature's moments
        moments = [float((d.weights * d.nodes**j).sum()) for d in density]
        assert abs(moments[0] - moments[1]) <= 1e-4 * scale**j


def test_under_autocast_pytorch_keeps_its_own_path():
    conv = nn.Conv2d(1, 2, 3)
    with weight_only_convolutions(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.randn(2, 1, 5, 5))
    assert y.dtype == torch.bfloat16 and type(y.grad_fn).__name__ == "ConvolutionBackward0"
