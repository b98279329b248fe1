"""GD's convergence against the tangent kernel (experiments/gd_convergence.py).

A linear model is its own linearisation, so full-batch GD's loss must follow the kernel prediction
``L_t = |(I - eta K)^t r_0|^2 / n`` to rounding: a test of the kernel's ``2 / n`` normalisation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tdl_lightning.tasks import Regressor

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gd_convergence.py"


@pytest.fixture(scope="module")
def gd() -> object:
    spec = importlib.util.spec_from_file_location("gd_convergence", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(n: int = 12, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return x, torch.randn(n, 1, generator=generator, dtype=torch.float64)


def test_linear_model_follows_the_kernel_prediction_exactly(gd: object) -> None:
    torch.manual_seed(0)
    x, y = _data()
    run = gd.gradient_descent(torch.nn.Linear(3, 1), x, y, steps=60)  # type: ignore[attr-defined]
    assert run["linearised_losses"] == pytest.approx(run["losses"], rel=1e-9, abs=1e-14)
    # the kernel of a linear model does not move, and the loss stays above its floor
    assert run["kernel_init"] == pytest.approx(run["kernel_end"], rel=1e-12)
    assert run["kernel_init"]["rank"] == 4  # rank d + 1 on 12 examples


def test_kernel_is_the_gauss_newton_matrix_of_the_mse(gd: object) -> None:
    """``K = (2 / n) J J^T`` has the non-zero eigenvalues of the MSE's Hessian ``(2 / n) J^T J``."""
    x, y = _data()
    net = torch.nn.Linear(3, 1).double()
    spectrum = gd.nonzero_spectrum(gd.loss_kernel(net, x))  # type: ignore[attr-defined]
    task = Regressor(net)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    hessian = torch.func.hessian(lambda p: torch.nn.functional.mse_loss(design @ p, y[:, 0]))(
        torch.zeros(4, dtype=x.dtype)
    )
    assert torch.allclose(spectrum, torch.linalg.eigvalsh(hessian), rtol=1e-10)
    assert task.loss((x, y)) > 0


def test_measured_rate_respects_the_bound_on_a_deep_linear_net(gd: object) -> None:
    torch.manual_seed(0)
    x, y = _data(n=40)
    from tdl_lightning.models import DeepMLP

    run = gd.gradient_descent(DeepMLP(3, 16, 2, 1, "linear", sigma_w=1.0), x, y, steps=150)  # type: ignore[attr-defined]
    design = torch.cat([x, torch.ones(40, 1, dtype=x.dtype)], 1)
    least_squares = float((design @ torch.linalg.lstsq(design, y).solution - y).pow(2).mean())
    q = gd.per_step_factor([max(v - least_squares, 1e-30) for v in run["losses"]])  # type: ignore[attr-defined]
    assert q is not None
    end = run["kernel_end"]
    assert run["eta"] * end["lambda_max"] <= 1.0  # where the bound applies
    assert q <= end["bound_q"] + 1e-6  # the theorem's bound 1 - eta lambda_min
    assert q == pytest.approx(end["linearised_q"], abs=0.02)  # and the kernel's slowest mode
