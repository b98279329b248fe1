"""The NTK plugin: empirical kernel vs J J^T, analytic kernel vs closed forms and wide nets,
the linearised model vs gradient descent, and the callback's rules."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins.ntk import (
    NeuralTangentKernel,
    analytic_ntk,
    empirical_ntk,
    kernel_distance,
    kernel_target_alignment,
    linearised_predictions,
)
from tdl_lightning.data import TeacherStudent
from tdl_lightning.errors import ConfigError
from tdl_lightning.models import DeepMLP, ScaledLinear
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _jacobian_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J of all outputs w.r.t. all parameters, from one jacrev over the whole batch: (n K, P)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,), strict=False))(params)
    n, k = model(x).shape
    return torch.cat([jac[name].reshape(n * k, -1) for name in params], dim=1)


@pytest.mark.parametrize("parameterisation", ["standard", "ntk"])
def test_empirical_ntk_is_j_jt(parameterisation):
    model = DeepMLP(5, 12, 2, 3, "tanh", sigma_b=0.3, parameterisation=parameterisation).double()
    x, x2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    j = _jacobian_reference(model, x)
    full = empirical_ntk(model, x, outputs="full", chunk_size=4)
    torch.testing.assert_close(full, j @ j.T, atol=1e-6, rtol=0)
    trace = empirical_ntk(model, x)
    torch.testing.assert_close(
        trace, (j @ j.T).reshape(6, 3, 6, 3).diagonal(dim1=1, dim2=3).sum(-1), atol=1e-6, rtol=0
    )
    assert torch.equal(trace, trace.T)
    assert torch.linalg.eigvalsh(full).min() > -1e-10  # PSD
    cross = empirical_ntk(model, x, x2, outputs="full")
    torch.testing.assert_close(cross, j @ _jacobian_reference(model, x2).T, atol=1e-6, rtol=0)


def test_empirical_ntk_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Linear(8, 1)).train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3)
    kernel = empirical_ntk(model, x)
    assert model.training and not model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    j = _jacobian_reference(model.eval(), x)  # in eval mode, the frozen weight left out
    assert j.shape[1] == 8 + 8 + 8 + 8 + 1
    torch.testing.assert_close(kernel, j @ j.T)


def test_empirical_ntk_refuses_bad_input():
    with pytest.raises(ValueError, match="'trace'"):
        empirical_ntk(nn.Linear(2, 1), torch.randn(3, 2), outputs="diag")
    with pytest.raises(ValueError, match="batch"):
        empirical_ntk(nn.Linear(2, 1), torch.randn(2))


def test_kernel_distance_and_alignment():
    a = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    assert kernel_distance(a, 5 * a) == pytest.approx(0.0, abs=1e-12)
    assert kernel_distance(a, torch.eye(2)) == pytest.approx(
        1 - 4 / (math.sqrt(10) * math.sqrt(2)), abs=1e-12
    )
    labels = torch.tensor([0, 1, 0])
    assert kernel_target_alignment(
        torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]), labels
    ) == pytest.approx(1.0)
    assert kernel_target_alignment(torch.eye(3), labels) == pytest.approx(3 / (math.sqrt(3) * math.sqrt(5)))


def _relu_ntk_closed_form(x: torch.Tensor, sw: float, sb: float) -> torch.Tensor:
    """1 hidden layer: Theta = sw^2 k1(Sigma) + sb^2 + sw^2 k0(Sigma) Sigma (arc-cosine kernels)."""
    x = x.double()
    sigma = sw**2 * x @ x.T / x.shape[1] + sb**2
    norms = sigma.diagonal().sqrt()
    cos = (sigma / torch.outer(norms, norms)).clamp(-1, 1)
    angle = torch.arccos(cos)
    k1 = torch.outer(norms, norms) / (2 * math.pi) * (torch.sin(angle) + (math.pi - angle) * cos)
    k0 = (math.pi - angle) / (2 * math.pi)
    return sw**2 * k1 + sb**2 + sw**2 * k0 * sigma


def test_analytic_ntk_relu_closed_form_and_linear():
    x = torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(
        analytic_ntk("relu", 1, x, sigma_w=1.3, sigma_b=0.2),
        _relu_ntk_closed_form(x, 1.3, 0.2),
        atol=0,
        rtol=1e-7,  # arccos near c = 1 amplifies rounding
    )
    # deep linear: Sigma^l = sw^(2l) x.x'/d, and Theta^{L+1} = (L + 1) sw^(2(L+1)) x.x'/d
    torch.testing.assert_close(
        analytic_ntk("linear", 3, x, sigma_w=1.1, sigma_b=0.0), 4 * 1.1**8 * x @ x.T / 4, atol=1e-12, rtol=0
    )


def test_analytic_ntk_erf_closed_form_equals_quadrature():
    x, x2 = torch.randn(4, 3), torch.randn(3, 3)
    closed = analytic_ntk("erf", 2, x, x2, sigma_w=1.5, sigma_b=0.1)
    quadrature = analytic_ntk(torch.erf, 2, x, x2, sigma_w=1.5, sigma_b=0.1)
    torch.testing.assert_close(closed, quadrature, atol=1e-8, rtol=1e-8)


def test_wide_relu_net_has_the_analytic_ntk():
    torch.manual_seed(1)
    x = torch.randn(8, 4)
    model = DeepMLP(4, 8192, 1, 1, "relu", sigma_w=math.sqrt(2), sigma_b=0.2, parameterisation="ntk")
    empirical = empirical_ntk(model, x).double()
    analytic = analytic_ntk("relu", 1, x, sigma_w=math.sqrt(2), sigma_b=0.2)
    assert float((empirical - analytic).norm() / analytic.norm()) < 0.05


def test_wide_tanh_net_has_the_analytic_ntk():
    torch.manual_seed(2)
    x = torch.randn(6, 4)
    model = DeepMLP(4, 2048, 2, 1, "tanh", sigma_w=1.5, sigma_b=0.1, parameterisation="ntk")
    empirical = empirical_ntk(model, x).double()
    analytic = analytic_ntk("tanh", 2, x, sigma_w=1.5, sigma_b=0.1)
    assert float((empirical - analytic).norm() / analytic.norm()) < 0.1


@pytest.mark.parametrize("outputs", [1, 2])
def test_linearised_predictions_equal_gradient_descent_on_a_linear_model(outputs):
    torch.manual_seed(0)
    n, m, p, lr, steps = 6, 4, 10, 0.02, 37
    phi, phi_test = torch.randn(n, p, dtype=torch.float64), torch.randn(m, p, dtype=torch.float64)
    w0 = torch.randn(p, outputs, dtype=torch.float64)
    y = torch.randn(n, outputs, dtype=torch.float64)
    w = w0.clone()
    for _ in range(steps):  # GD on 1/2 sum |phi w - y|^2
        w -= lr * phi.T @ (phi @ w - y)
    kernel, kernel_test = phi @ phi.T, phi_test @ phi.T
    f0, f0_test = phi @ w0, phi_test @ w0
    test = linearised_predictions(kernel, kernel_test, f0, f0_test, y, lr, steps)
    train = linearised_predictions(kernel, kernel, f0, f0, y, lr, steps)
    torch.testing.assert_close(test, phi_test @ w, atol=1e-10, rtol=0)
    torch.testing.assert_close(train, phi @ w, atol=1e-10, rtol=0)
    eye = torch.eye(outputs, dtype=torch.float64)  # the "full" kernel of a K-output linear model
    full = linearised_predictions(
        torch.kron(kernel, eye), torch.kron(kernel_test, eye), f0, f0_test, y, lr, steps
    )
    torch.testing.assert_close(full, phi_test @ w, atol=1e-10, rtol=0)
    flow = linearised_predictions(kernel, kernel_test, f0, f0_test, y, lr / 100, steps * 100, continuous=True)
    torch.testing.assert_close(flow, phi_test @ w, atol=0.05, rtol=0.05)


def test_linearised_predictions_with_a_singular_kernel_and_bad_shapes():
    phi = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # rank 2 of 3
    y = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    out = linearised_predictions(
        phi @ phi.T, phi @ phi.T, torch.zeros(3), torch.zeros(3), y, lr=0.1, steps=10_000
    )
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64))  # least squares
    with pytest.raises(ValueError, match="pairs neither"):
        linearised_predictions(
            torch.eye(2), torch.eye(2), torch.zeros(3), torch.zeros(2), torch.zeros(3), 0.1, 1
        )


def test_deep_mlp_parameterisations():
    torch.manual_seed(0)
    standard = DeepMLP(6, 32, 2, 2, "tanh", sigma_w=1.2, sigma_b=0.1)
    assert not any(isinstance(m, ScaledLinear) for m in standard.modules())
    torch.manual_seed(0)
    ntk = DeepMLP(6, 32, 2, 2, "tanh", sigma_w=1.2, sigma_b=0.1, parameterisation="ntk")
    x = torch.randn(5, 6)
    torch.testing.assert_close(ntk(x), standard(x), atol=1e-6, rtol=0)  # same function at init
    assert isinstance(ntk.fc1, nn.Linear)
    assert float(ntk.fc2.weight.detach().std()) == pytest.approx(1.0, abs=0.1)
    torch.manual_seed(0)
    mean_field = DeepMLP(
        6, 32, 2, 2, "tanh", sigma_w=1.2, sigma_b=0.0, parameterisation="mean_field", alpha=3.0
    )
    assert mean_field.readout.weight_multiplier == pytest.approx(1.2 / 32)
    torch.manual_seed(0)
    plain = DeepMLP(6, 32, 2, 2, "tanh", sigma_w=1.2, sigma_b=0.0, parameterisation="mean_field")
    torch.testing.assert_close(mean_field(x), 3.0 * plain(x))
    for bad in (
        dict(parameterisation="muP"),
        dict(alpha=0.0),
        dict(parameterisation="mean_field", output_dim=None),
    ):
        with pytest.raises(ConfigError):
            DeepMLP(6, 8, 1, **{"output_dim": 1, **bad})


def _task() -> Regressor:
    return Regressor(DeepMLP(4, 64, 1, 1, "relu", sigma_w=math.sqrt(2), parameterisation="ntk"))


def _data() -> TeacherStudent:
    return TeacherStudent(num_samples=80, input_dim=4, teacher_width=8, batch_size=16)


def test_callback_keeps_training_as_it_was_and_measures_drift(fit_collect, tmp_path):
    plain = fit_collect(_task, _data, [], default_root_dir=str(tmp_path))
    cb = NeuralTangentKernel(every_n_steps=2, probe_size=16)
    probed = fit_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    assert_same_weights(plain, probed)
    first, last = cb.history[0], cb.history[-1]
    assert first["ntk/relative_kernel_change"] == 0.0 and first["ntk/relative_weight_change"] == 0.0
    assert 0 < last["ntk/relative_kernel_change"] < 1 and 0 < last["ntk/relative_weight_change"] < 1
    assert -1 <= last["ntk/label_alignment"] <= 1
    assert (tmp_path / "plugins" / "ntk" / "history.json").is_file()
    restored = NeuralTangentKernel(every_n_steps=2)
    restored.load_state_dict(cb.state_dict())
    assert torch.equal(restored.kernel0, cb.kernel0) and restored.history == cb.history


def test_callback_refuses_bad_arguments_and_modules():
    with pytest.raises(MisconfigurationException, match="chunk_size"):
        NeuralTangentKernel(chunk_size=0)
    frozen = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(MisconfigurationException, match="trainable"):
        NeuralTangentKernel().check_module(frozen)
