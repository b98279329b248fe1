"""The dense self-scaled BFGS optimiser: convergence, line search, state, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tdl_lightning.optim import BFGS, MAX_BFGS_WEIGHTS, _cubic_minimum, _LineSearch


def _closure(optimizer, loss_of, w):
    def closure():
        optimizer.zero_grad()
        loss = loss_of(w)
        loss.backward()
        return loss

    return closure


def _minimise(loss_of, w, **kwargs):
    optimizer = BFGS([w], **kwargs)
    optimizer.step(_closure(optimizer, loss_of, w))
    return optimizer


def _rosenbrock(w):
    return (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2


@pytest.mark.parametrize("self_scaling", [True, False])
def test_rosenbrock_converges_in_textbook_iterations(self_scaling):
    """From (-1.2, 1), BFGS with a Wolfe line search needs some 30-40 iterations (Nocedal & Wright)."""
    w = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
    optimizer = _minimise(
        _rosenbrock, w, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14, self_scaling=self_scaling
    )
    assert torch.allclose(w.detach(), torch.ones(2, dtype=torch.float64), atol=1e-8)
    state = optimizer.state[w]
    assert 20 <= state["n_iter"] <= 60 and state["func_evals"] <= 1.5 * state["n_iter"] + 2


def test_ill_conditioned_quadratic_reaches_the_solution():
    """f = x'Ax/2 - b'x with condition number 1e4: the minimiser A^-1 b to 1e-6 relative.

    Near the minimum the loss resolves x only to about sqrt(eps * cond) = 1e-6 (eps = 1e-16 in float64),
    so that is the tolerance; the run gets about 2e-8."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 4, 20, dtype=torch.float64)) @ q.T
    b = torch.randn(20, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(20, dtype=torch.float64))
    optimizer = _minimise(
        lambda v: 0.5 * v @ a @ v - b @ v, w, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-16
    )
    exact = torch.linalg.solve(a, b)
    assert float(torch.linalg.vector_norm(w.detach() - exact) / torch.linalg.vector_norm(exact)) < 1e-6
    assert optimizer.state[w]["n_iter"] <= 120  # 84 here; gradient descent needs ~1e5 at cond 1e4


def test_line_search_meets_the_strong_wolfe_conditions():
    """Along d = +1 from t = 0 on phi(t) = (t - 3)^2 + sin(3t): the step accepted satisfies both."""
    c1, c2 = 1e-4, 0.9

    def phi(t):
        x = torch.tensor(t, dtype=torch.float64, requires_grad=True)
        value = (x - 3) ** 2 + torch.sin(3 * x)
        (grad,) = torch.autograd.grad(value, x)
        return float(value.detach()), grad.reshape(1)

    f0, g0 = phi(0.0)
    direction = torch.ones(1, dtype=torch.float64)
    slope0 = float(g0 @ direction)
    for t0 in (1e-3, 1.0, 50.0):  # too short, about right, far too long
        search = _LineSearch(phi, direction, f0, slope0, c1, c2, max_evals=25, tolerance_change=1e-12)
        t, f, g = search.search(t0, g0)
        assert f <= f0 + c1 * t * slope0
        assert abs(float(g @ direction)) <= -c2 * slope0
        f_again, g_again = phi(t)
        assert (f, float(g[0])) == pytest.approx((f_again, float(g_again[0])), rel=1e-12)


def test_cubic_minimum_is_exact_on_a_cubic():
    """Two points and slopes of p(t) = t^3 - 3t (minimum at t = 1) give back t = 1."""

    def p(t):
        return t**3 - 3 * t, 3 * t**2 - 3

    (f1, d1), (f2, d2) = p(0.0), p(2.0)
    assert _cubic_minimum(0.0, f1, d1, 2.0, f2, d2, 0.0, 2.0) == pytest.approx(1.0, abs=1e-12)
    assert _cubic_minimum(0.0, f1, d1, 2.0, f2, d2, 1.5, 2.0) == 1.5  # clamped to the bounds


def test_state_dict_resumes_the_same_path():
    """Two steps in a row equal one step, a save, a load into a fresh optimiser, and one more step."""

    def run(split):
        w = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
        optimizer = BFGS([w], max_iter=5)
        optimizer.step(_closure(optimizer, _rosenbrock, w))
        if split:
            saved = optimizer.state_dict()
            optimizer = BFGS([w], max_iter=5)
            optimizer.load_state_dict(saved)
        optimizer.step(_closure(optimizer, _rosenbrock, w))
        return w.detach().clone(), optimizer.state[w]["n_iter"]

    (w_straight, n_straight), (w_resumed, n_resumed) = run(False), run(True)
    assert n_straight == n_resumed == 10 and torch.equal(w_straight, w_resumed)


def test_stops_at_a_minimum_without_counting_empty_iterations():
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = _minimise(_rosenbrock, w, max_iter=10)
    assert optimizer.state[w]["n_iter"] == 0 and torch.equal(w.detach(), torch.ones(2, dtype=torch.float64))


def test_non_finite_loss_is_a_clear_error():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(FloatingPointError, match="nothing to optimise"):
        _minimise(lambda v: (v * math.inf).sum(), w)


def test_misuse_gets_clear_errors():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="positive first step"):
        BFGS([w], lr=0)
    with pytest.raises(ValueError, match="0 < c1 < c2 < 1"):
        BFGS([w], c1=0.9, c2=0.1)
    with pytest.raises(ValueError, match="one parameter group"):
        BFGS([{"params": [w]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}])
    big = torch.nn.Parameter(torch.zeros(MAX_BFGS_WEIGHTS + 1))
    with pytest.raises(ValueError, match="use torch.optim.LBFGS"):
        BFGS([big])


def test_trains_a_lightning_module_by_automatic_optimisation(tiny_trainer_kwargs):
    """Lightning hands its closure (training_step + backward) to BFGS.step, as it does for LBFGS: a
    linear least-squares regression reaches the normal-equations solution in one epoch."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from tdl_lightning.tasks import Regressor

    class BFGSRegressor(Regressor):
        def configure_optimizers(self):
            return BFGS(self.parameters(), max_iter=50, tolerance_grad=1e-12, tolerance_change=1e-15)

    torch.manual_seed(0)
    x = torch.randn(64, 3, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 + 0.01 * torch.randn(64).double()
    task = BFGSRegressor(torch.nn.Linear(3, 1).double())
    loader = DataLoader(TensorDataset(x, y.unsqueeze(1)), batch_size=64)
    L.Trainer(**dict(tiny_trainer_kwargs, max_epochs=1)).fit(task, loader, loader)
    design = torch.cat([x, torch.ones(64, 1, dtype=torch.float64)], dim=1)
    exact = torch.linalg.lstsq(design, y.unsqueeze(1)).solution[:, 0]
    fitted = torch.cat([task.model.weight.detach()[0], task.model.bias.detach()])
    assert torch.allclose(fitted, exact, atol=1e-8)
