"""Loss-landscape functions and the LossLandscape callback.

Tolerances: norms 1e-12 relative, closed forms 1e-12, second differences (step 1e-3, float64)
1e-5 relative to d^T H d (the O(t^2) truncation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins.hessian import hessian_eigenvalues, hessian_vector_product
from plugins.loss_landscape import LossLandscape, linear_interpolation, loss_surface, random_directions
from tdl_lightning.data import TeacherStudent
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights, fit_and_collect

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def mse(model, batch):
    return (model(batch[0]) - batch[1]).pow(2).mean()


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).to(D)


@pytest.fixture
def mlp_case():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D)
    return model, (torch.randn(40, 4, dtype=D), torch.randint(0, 3, (40,)))


def test_filter_normalised_directions(cnn):
    rng = torch.get_rng_state()
    d1, d2 = random_directions(cnn, 2, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    for d in (d1, d2):
        for p, dp in zip(cnn.parameters(), d, strict=True):
            if p.dim() == 1:  # biases and BatchNorm scale/shift: excluded
                assert float(dp.abs().sum()) == 0
            else:
                dims = tuple(range(1, p.dim()))
                norm = torch.linalg.vector_norm
                torch.testing.assert_close(norm(dp, dim=dims), norm(p, dim=dims), rtol=1e-12, atol=0)
    assert not torch.allclose(d1[0], d2[0])
    again = random_directions(cnn, 2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again[1], d2, strict=True))
    (layer,) = random_directions(cnn, 1, normalization="layer", ignore_bias_and_bn=False)
    for p, dp in zip(cnn.parameters(), layer, strict=True):
        assert abs(float(dp.norm()) - float(p.detach().norm())) <= 1e-12 * float(p.detach().norm())


def test_second_difference_matches_curvature(mlp_case):
    model, batch = mlp_case
    (d,) = random_directions(model, 1, normalization="layer", ignore_bias_and_bn=False)
    t = 1e-3
    line = loss_surface(model, cross_entropy, batch, [d], extent=t, steps=3)
    second = (line.losses[0] - 2 * line.losses[1] + line.losses[2]) / t**2
    hd = hessian_vector_product(model, cross_entropy, batch, d)
    dhd = float(sum((a * b).sum() for a, b in zip(d, hd, strict=True)))
    assert abs(line.losses[1] - line.center_loss) < 1e-15
    assert abs(second - dhd) < 1e-5 * abs(dhd)
    values, vectors = hessian_eigenvalues(model, cross_entropy, batch, k=1, return_eigenvectors=True)
    top = loss_surface(model, cross_entropy, batch, vectors, extent=t, steps=3)
    curvature = (top.losses[0] - 2 * top.losses[1] + top.losses[2]) / t**2
    assert abs(curvature - float(values[0])) < 1e-5 * float(values[0])  # along the top eigenvector


def test_plane_layout_and_interpolation_closed_form():
    torch.manual_seed(2)
    x, y = torch.randn(30, 3, dtype=D), torch.randn(30, 1, dtype=D)
    model = nn.Linear(3, 1, bias=False).to(D)
    w0 = model.weight.detach().clone()
    d1, d2 = [torch.randn(1, 3, dtype=D)], [torch.randn(1, 3, dtype=D)]
    plane = loss_surface(model, mse, (x, y), [d1, d2], extent=(-1.0, 2.0), steps=4)
    i, j = 3, 1
    w = w0 + plane.coords[0][i] * d1[0] + plane.coords[1][j] * d2[0]
    assert abs(plane.losses[i, j] - float((x @ w.T - y).pow(2).mean())) < 1e-12
    wa, wb = torch.zeros(1, 3, dtype=D), torch.ones(1, 3, dtype=D)
    alphas, losses = linear_interpolation(
        model, mse, (x, y), {"weight": wa}, [wb], steps=5, alpha_range=(-1, 1)
    )
    for alpha, loss in zip(alphas, losses, strict=True):
        w = (1 - alpha) * wa + alpha * wb
        assert abs(loss - float((x @ w.T - y).pow(2).mean())) < 1e-12
    assert torch.equal(model.weight, w0)


def test_functions_leave_the_model_untouched(cnn):
    batch = (torch.randn(8, 1, 6, 6, dtype=D), torch.randint(0, 3, (8,)))
    cnn.train()
    cross_entropy(cnn, batch).backward()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    grads = [p.grad.clone() for p in cnn.parameters()]
    rng = torch.get_rng_state()
    dirs = random_directions(cnn, 2)
    loss_surface(cnn, cross_entropy, batch, dirs, steps=3)
    linear_interpolation(cnn, cross_entropy, [batch, batch], dict(cnn.named_parameters()), dirs[0], steps=3)
    assert torch.equal(torch.get_rng_state(), rng) and all(m.training for m in cnn.modules())
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(torch.equal(p.grad, g) for p, g in zip(cnn.parameters(), grads, strict=True))


def test_misuse_is_a_clear_error(mlp_case):
    model, batch = mlp_case
    dirs = random_directions(model, 3)
    with pytest.raises(ValueError, match="one or two directions"):
        loss_surface(model, cross_entropy, batch, dirs)
    with pytest.raises(ValueError, match="one tensor per trainable parameter"):
        loss_surface(model, cross_entropy, batch, [dirs[0][:1]])
    with pytest.raises(ValueError, match="normalization"):
        random_directions(model, normalization="per-neuron")
    with pytest.raises(MisconfigurationException, match="extent"):
        LossLandscape(extent=0)


def _task():
    return Regressor(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1)))


def _data():
    return TeacherStudent(num_samples=256, input_dim=8, batch_size=32)


def test_callback_leaves_training_untouched_and_writes_files(tmp_path):
    cb = LossLandscape(steps=5, interpolation_steps=7, probe_size=64)
    with_plugin = fit_and_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [(h["when"], h["step"]) for h in cb.history] == [("end", 4)]
    out = tmp_path / "plugins" / "loss_landscape"
    assert json.loads((out / "history.json").read_text()) == cb.history
    for figure in ("contour", "interpolation"):
        assert (out / f"{figure}_step0000004.png").stat().st_size > 1000
    saved = np.load(out / "step0000004.npz")
    assert saved["plane_loss"].shape == (5, 5) and saved["interpolation_loss"].shape == (7,)
    assert abs(saved["plane_loss"][2, 2] - cb.history[0]["loss_landscape/center_loss"]) < 1e-6
    alphas = saved["interpolation_alpha"]
    assert abs(saved["interpolation_loss"][np.argmin(abs(alphas - 1))] - saved["plane_loss"][2, 2]) < 1e-6
    state = cb.state_dict()
    assert len(state["theta_init"]) == len(with_plugin) - 3  # parameters, not BN buffers
    fresh = LossLandscape()
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.theta_init, cb.theta_init, strict=True))
