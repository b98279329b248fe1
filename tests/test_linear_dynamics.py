"""Deep linear networks: Saxe et al.'s exact mode solution against integration, wide nets and the callback."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from scipy.integrate import solve_ivp
from torch import nn

from plugins.linear_dynamics import (
    LinearDynamics,
    deep_mode_strength,
    end_to_end_map,
    input_output_correlation,
    mode_strengths,
    saxe_mode_strength,
    time_to_learn,
)
from tdl_lightning.data import TeacherStudent
from tdl_lightning.errors import ConfigError
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("s", "u0", "tau"), [(3.0, 1e-3, 10.0), (0.5, 0.2, 1.0), (2.0, 5.0, 3.0)])
def test_saxe_solution_solves_its_ode(s, u0, tau):
    t = torch.linspace(0, 20 * tau / s, 50, dtype=torch.float64)
    sol = solve_ivp(
        lambda _t, u: 2 * u * (s - u) / tau, (0, float(t[-1])), [u0], t_eval=t.numpy(), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        saxe_mode_strength(t, s, u0, tau), torch.from_numpy(sol.y[0]), atol=1e-6, rtol=0
    )
    half = time_to_learn(s, u0, tau) if u0 < s / 2 else None
    if half is not None:
        assert float(saxe_mode_strength(half, s, u0, tau)) == pytest.approx(s / 2, rel=1e-12)


def test_deep_mode_strength():
    t = torch.linspace(0, 10, 30, dtype=torch.float64)
    torch.testing.assert_close(
        deep_mode_strength(t, 2.0, 0.01, 1.0, 2), saxe_mode_strength(t, 2.0, 0.01, 1.0), atol=1e-7, rtol=0
    )
    one = deep_mode_strength(t, 2.0, 0.5, 3.0, 1)  # tau du/dt = s - u: exponential approach
    torch.testing.assert_close(one, 2.0 - 1.5 * torch.exp(-t / 3.0), atol=1e-7, rtol=0)
    deep = deep_mode_strength(t, 2.0, 0.01, 1.0, 6)
    assert deep[0] == pytest.approx(0.01) and deep[-1] == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError):
        saxe_mode_strength(1.0, s=1.0, u0=0.0, tau=1.0)


def test_mode_strengths_of_a_deep_linear_net():
    net = DeepMLP(5, 7, 3, 4, "linear", sigma_b=0.5)  # biases drop out of the end-to-end map
    w = net.readout.weight @ net.fc3.weight @ net.fc2.weight @ net.fc1.weight
    torch.testing.assert_close(end_to_end_map(net, 5), w, atol=1e-5, rtol=1e-5)
    u, v = torch.linalg.qr(torch.randn(4, 3)).Q, torch.linalg.qr(torch.randn(5, 3)).Q
    torch.testing.assert_close(
        mode_strengths(net, u, v), torch.diag(u.T @ w @ v).double(), atol=1e-5, rtol=1e-5
    )


def test_linear_teacher_has_the_chosen_singular_values_and_white_inputs():
    dm = TeacherStudent(
        num_samples=300, input_dim=6, output_dim=5, teacher_singular_values=[3.0, 1.0, 0.2], whiten=True
    )
    dm.setup()
    x, y = dm.splits["train"]
    u, s, v, whiteness = input_output_correlation(x, y)
    torch.testing.assert_close(s[:3], torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64), atol=1e-5, rtol=0)
    assert whiteness < 1e-5 and s[3] < 1e-5
    assert torch.allclose(
        dm.teacher_weight, dm.teacher_u @ torch.diag(torch.tensor([3.0, 1.0, 0.2])) @ dm.teacher_v.T
    )
    with pytest.raises(ConfigError, match="regression"):
        TeacherStudent(input_dim=3, output_dim=2, teacher_singular_values=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="num_samples"):
        TeacherStudent(
            num_samples=20, input_dim=6, output_dim=5, teacher_singular_values=[1.0], whiten=True
        ).setup()


def test_wide_small_init_two_layer_net_follows_the_solution():
    """Width 512, weights N(0, 1e-6), full-batch GD with lr 0.01 on mse_loss (tau = K / (2 lr) = 300
    steps): every mode within 2% of the largest singular value of Saxe's curve at every probe."""
    torch.manual_seed(0)
    dm = TeacherStudent(
        num_samples=400, input_dim=8, output_dim=6, teacher_singular_values=[3, 2, 1, 0.5], whiten=True
    )
    dm.setup()
    x, y = (t.double() for t in dm.splits["train"])
    net = nn.Sequential(nn.Linear(8, 512, bias=False), nn.Linear(512, 6, bias=False)).double()
    for layer in net:
        nn.init.normal_(layer.weight, std=1e-3)
    lr = 0.01
    cb = LinearDynamics(tau=6 / (2 * lr))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    worst = 0.0
    for step in range(4001):
        if step % 100 == 0:
            cb.last_probe_step = step
            worst = max(worst, cb.probe(net, (x, y)).scalars["max_abs_error"])
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    assert cb.probe(net, (x, y)).scalars["mode_3"] == pytest.approx(0.5, abs=0.01)  # all learnt
    assert worst < 0.02 * 3


def _task() -> Regressor:
    return Regressor(DeepMLP(6, 32, 1, 4, "linear", sigma_w=0.05, bias=False))


def _data() -> TeacherStudent:
    return TeacherStudent(
        num_samples=200,
        input_dim=6,
        output_dim=4,
        teacher_singular_values=[2.0, 1.0],
        whiten=True,
        batch_size=160,
    )


def test_callback_keeps_training_as_it_was(fit_collect, tmp_path):
    plain = fit_collect(_task, _data, [], default_root_dir=str(tmp_path))
    cb = LinearDynamics(every_n_steps=1)
    probed = fit_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    assert_same_weights(plain, probed)
    assert [h["step"] for h in cb.history] == [0, 1, 2, 3, 4]
    assert cb.history[-1]["linear_dynamics/tau"] == pytest.approx(4 / (2 * 1e-3))  # Adam's default lr
    assert set(cb.history[0]) >= {"linear_dynamics/mode_0", "linear_dynamics/mode_1_theory"}
    assert "linear_dynamics/mode_2" not in cb.history[0]  # rank 2
    restored = LinearDynamics()
    restored.load_state_dict(cb.state_dict())
    assert torch.equal(restored.u0, cb.u0) and restored.depth == 2


def test_callback_refuses_bad_arguments():
    with pytest.raises(MisconfigurationException, match="tau"):
        LinearDynamics(tau=0.0)
    with pytest.raises(MisconfigurationException, match="nn.Linear"):
        LinearDynamics().check_module(nn.Sequential(nn.Tanh()))
    with pytest.raises(MisconfigurationException, match="targets"):
        LinearDynamics(tau=1.0).probe(nn.Linear(2, 2), torch.randn(4, 2))
    # a net with a nonlinearity or a layer other than nn.Linear: refused at setup, the layer named
    for net, what in (
        (nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)), "ReLU at '1'"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), "Conv2d at '0'"),
        (nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "BatchNorm1d at '1'"),
    ):
        with pytest.raises(MisconfigurationException, match=f"has a {what}: the exact solutions"):
            LinearDynamics().check_module(net)
    LinearDynamics().check_module(Regressor(DeepMLP(2, 4, 3, 2, "linear")))  # a deep linear net passes
    assert math.isfinite(time_to_learn(1.0, 0.01, 1.0))
