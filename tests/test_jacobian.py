"""Jacobian spectra: exactness, orthogonal deep linear nets, free-probability moments, the callback.

Tolerances (stated per test): torch.func Jacobians equal the one-row-per-backward reference to 1e-10
in float64; orthogonal deep linear nets have every singular value sigma_w^L to 1e-4 relative in
float32 (the issue's bar); measured mean squared singular values of width-200 random nets lie within
3 standard errors (over 6 independent nets) of chi^L, their variances within 10% (finite-width bias
is O(L/N)); closed-form moments to 1e-12.
"""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from plugins.base import preserved_training_state
from plugins.jacobian import (
    JacobianSpectrum,
    input_output_jacobians,
    jacobian_singular_values,
    jacobian_spectrum_moments,
    spectrum_statistics,
)
from plugins.signal_propagation import InitStatistics, chi_1
from tdl_lightning.data import TeacherStudent
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights, fit_and_collect, quiet_trainer_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_torch_func_jacobian_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid()).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    fast = jacobian_singular_values(net, x, chunk_size=3)
    exact = torch.stack(
        [torch.linalg.svdvals(torch.autograd.functional.jacobian(lambda v: net(v[None])[0], xi)) for xi in x]
    )
    assert fast.shape == (7, 4)
    assert torch.allclose(fast, exact, atol=1e-10)
    assert torch.allclose(jacobian_singular_values(net, x, method="loop"), exact, atol=1e-10)
    assert torch.allclose(jacobian_singular_values(net, x, chunk_size=None), fast, atol=1e-12)
    assert torch.allclose(jacobian_singular_values(net, x), fast, atol=1e-12)  # chunk_size="auto"
    assert bool((fast[:, :-1] >= fast[:, 1:]).all())  # sorted descending
    assert all(p.grad is None for p in net.parameters())  # nothing written into .grad


@pytest.mark.parametrize("shape", [(6, 10, 300), (6, 40, 40), (6, 300, 12)])
def test_single_precision_singular_values_come_from_double_gram_matrices(shape):
    # float32 Jacobians: sqrt(eigvalsh(J J^T)) in float64, within 1e-7 of the largest singular value
    # of the float64 SVD of the same matrices, rounding to float32 included (float32's QR + SVD, the
    # path before: within 1e-6)
    from plugins.jacobian_spectra import _svdvals

    torch.manual_seed(0)
    a, _, b = torch.linalg.svd(torch.randn(*shape, dtype=torch.float64), full_matrices=False)
    k = min(shape[1:])
    spread = torch.logspace(0, -7, k, dtype=torch.float64)  # condition number 1e7
    jacobians = (a * spread * 3.0) @ b
    single = jacobians.float()
    exact = torch.linalg.svdvals(single.double())
    fast = _svdvals(single)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert bool((fast[:, :-1] >= fast[:, 1:]).all())
    assert float((fast.double() - exact).abs().max() / exact.max()) < 1e-7
    before = torch.linalg.svdvals(single)
    assert float((before.double() - exact).abs().max() / exact.max()) < 1e-6
    exact64 = torch.linalg.svdvals(jacobians)
    assert torch.allclose(_svdvals(jacobians), exact64, rtol=0, atol=1e-12)  # float64: QR + SVD, as before


def test_wide_output_uses_forward_mode_and_output_layer_cuts_the_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    hidden = jacobian_singular_values(net, x, output_layer="1")  # 9 outputs > 3 inputs: jacfwd
    assert torch.allclose(hidden, jacobian_singular_values(net[:2], x), atol=1e-12)
    assert torch.allclose(
        hidden, jacobian_singular_values(net, x, output_layer="1", method="loop"), atol=1e-10
    )
    with pytest.raises(ValueError, match="no submodule 'act9'"):
        jacobian_singular_values(net, x, output_layer="act9")


@pytest.mark.parametrize("sigma_w", [1.0, 1.05])
def test_orthogonal_deep_linear_net_is_an_exact_isometry(sigma_w):
    torch.manual_seed(0)
    depth = 10
    net = DeepMLP(64, 64, depth, None, activation="linear", init="orthogonal", sigma_w=sigma_w)
    s = jacobian_singular_values(net, torch.randn(8, 64))
    assert torch.allclose(s, torch.full_like(s, sigma_w**depth), rtol=1e-4, atol=0)
    theory = jacobian_spectrum_moments("linear", sigma_w, 0.0, depth, "orthogonal")
    assert theory.mean_squared_singular_value == pytest.approx(sigma_w ** (2 * depth), rel=1e-12)
    assert theory.variance == 0.0


def test_moments_closed_forms():
    # products of L square Wisharts (Fuss-Catalan): mean 1, variance L
    m = jacobian_spectrum_moments("linear", 1.0, 0.0, 7, "gaussian", q0=1.0)
    assert (m.mean_squared_singular_value, m.variance) == pytest.approx((1.0, 7.0), abs=1e-12)
    # at the fixed point the mean is chi_1^L
    m = jacobian_spectrum_moments("tanh", 1.3, 0.2, 5)
    assert m.mean_squared_singular_value == pytest.approx(chi_1("tanh", 1.3, 0.2) ** 5, rel=1e-12)
    # ReLU (He): D^2 is Bernoulli(1/2), mu_2 / mu_1^2 - 1 = 1, plus the Wishart's 1, per layer
    m = jacobian_spectrum_moments("relu", math.sqrt(2), 0.0, 3, "gaussian")
    assert (m.mean_squared_singular_value, m.variance) == pytest.approx((1.0, 6.0), abs=1e-12)
    with pytest.raises(ValueError, match="weights"):
        jacobian_spectrum_moments("tanh", 1.0, 0.0, 3, "uniform")


@pytest.mark.parametrize(
    "activation, init, sigma_w, sigma_b",
    [
        ("tanh", "gaussian", 1.2, 0.1),
        ("tanh", "orthogonal", 1.05, 0.05),
        ("relu", "gaussian", math.sqrt(2), 0.0),
    ],
)
def test_wide_random_nets_match_free_probability(activation, init, sigma_w, sigma_b):
    width, depth, seeds = 200, 4, 6
    means, variances = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = DeepMLP(
            width, width, depth, None, activation=activation, init=init, sigma_w=sigma_w, sigma_b=sigma_b
        )
        stats = spectrum_statistics(jacobian_singular_values(net, torch.randn(4, width)))
        means.append(stats["mean_squared_singular_value"])
        variances.append(stats["variance_squared_singular_value"])
    theory = jacobian_spectrum_moments(activation, sigma_w, sigma_b, depth, init, q0=1.0)
    standard_error = np.std(means, ddof=1) / math.sqrt(seeds)
    assert abs(np.mean(means) - theory.mean_squared_singular_value) < 3 * standard_error
    assert np.mean(variances) == pytest.approx(theory.variance, rel=0.10)


# --------------------------------------------------------------------------- callback
def _task():
    return Regressor(DeepMLP(input_dim=8, width=16, depth=3, output_dim=1, init="orthogonal", sigma_w=1.1))


def _data():
    return TeacherStudent(num_samples=256, input_dim=8, batch_size=32)


def test_jacobian_spectrum_leaves_training_untouched(tmp_path):
    cb = JacobianSpectrum(every_n_steps=2, probe_size=8)
    with_plugin = fit_and_collect(_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [h["step"] for h in cb.history] == [0, 2, 4]


def test_jacobian_spectrum_files_and_theory(tmp_path):
    cb = JacobianSpectrum(output_layer="model.act3", probe_size=16)
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
    )
    task = Regressor(
        DeepMLP(input_dim=16, width=16, depth=3, output_dim=1, activation="linear", init="orthogonal")
    )
    trainer.fit(task, TeacherStudent(num_samples=64, input_dim=16, batch_size=16))
    init = cb.history[0]
    # hidden stack of an orthogonal linear net: an exact isometry, and the theory says so
    assert init["jacobian_spectrum/max_singular_value"] == pytest.approx(1.0, rel=1e-4)
    assert init["jacobian_spectrum/min_singular_value"] == pytest.approx(1.0, rel=1e-4)
    assert init["jacobian_spectrum/mean_squared_singular_value_theory"] == pytest.approx(1.0, abs=1e-12)
    assert init["jacobian_spectrum/variance_squared_singular_value_theory"] == 0.0
    out = tmp_path / "plugins" / "jacobian_spectrum"
    assert np.load(out / "step0000000.npz")["singular_values"].shape == (16, 16)
    assert (out / "spectrum_step0000000.png").stat().st_size > 1000


def test_spectrum_figure_shows_the_fraction_of_singular_values_per_bin():
    """Log-spaced bins: the bars are fractions (summing to 1), not a density per unit value, which
    made a few values near 1e-7 look like the bulk of a spectrum spread over seven decades."""
    from plugins.jacobian import _spectrum_figure

    s = torch.cat([torch.full((3,), 1e-7), torch.logspace(-1, 0.3, 97)])
    (ax,) = _spectrum_figure(s, theory_mean_sq=0.2).axes
    fractions, edges = ax.patches[0].get_data()[:2]
    assert fractions.sum() == pytest.approx(1.0, abs=1e-12)
    assert fractions[0] == pytest.approx(0.03) and edges[0] == pytest.approx(1e-7)
    assert ax.get_ylabel() == "fraction of singular values"


def test_readout_counts_in_the_theory_mean():
    torch.manual_seed(0)
    net = DeepMLP(
        input_dim=32, width=32, depth=2, output_dim=4, activation="linear", init="gaussian", sigma_w=0.9
    )
    with preserved_training_state(net):  # what the base class wraps every probe in
        result = JacobianSpectrum(probe_size=4).probe(net, torch.randn(4, 32))
    assert result.scalars["mean_squared_singular_value_theory"] == pytest.approx(0.9**6, rel=1e-12)
    assert math.isnan(result.scalars["variance_squared_singular_value_theory"])
    assert net.training  # probe() evaluates in eval mode; the mode comes back


def test_auto_chunks_follow_the_memory_estimate(monkeypatch):
    """'auto' plans chunks from the leaf modules' output sizes: a budget of 3 inputs' estimated work
    gives chunks of 3, with the same Jacobians as one chunk (float64, 1e-12)."""
    import plugins.jacobian_spectra as jacobian

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    n_in, n_out, intermediates = jacobian._sizes(net, jacobian._single_input_map(net, None), x, x)
    assert (n_in, n_out, intermediates) == (6, 4, 5 + 5 + 4)
    per_input = 8 * (4 * 6 + 4 * 14)
    assert jacobian.auto_chunk_size(7, 6, 4, 14, itemsize=8) == 7
    monkeypatch.setattr(jacobian, "AUTO_CHUNK_BYTES", 3 * per_input + 1)
    assert jacobian.auto_chunk_size(7, 6, 4, 14, itemsize=8) == 3
    chunks = []
    vmap = torch.func.vmap
    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: chunks.append(k["chunk_size"]) or vmap(*a, **k))
    auto = input_output_jacobians(net, x)
    assert chunks == [3]
    torch.testing.assert_close(auto, input_output_jacobians(net, x, chunk_size=None), rtol=0, atol=1e-12)


def test_bad_output_layer_is_refused_at_setup():
    with pytest.raises(MisconfigurationException, match="no such submodule"):
        JacobianSpectrum(output_layer="model.fc99").check_module(_task())
    with pytest.raises(MisconfigurationException, match=r"JacobianSpectrum\(chunk_size=0\): use .* 'auto'"):
        JacobianSpectrum(chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size='big'"):
        input_output_jacobians(nn.Linear(2, 2), torch.randn(3, 2), chunk_size="big")


@pytest.mark.slow
@pytest.mark.ddp
def test_both_plugins_under_two_process_ddp(tmp_path):
    """A 2-process CPU DDP fit (gloo, ddp_spawn) with both plugins: finishes, rank zero logs once."""
    trainer = L.Trainer(
        **quiet_trainer_kwargs(devices=2, strategy="ddp_spawn", max_steps=2, limit_val_batches=0),
        default_root_dir=str(tmp_path),
        callbacks=[
            InitStatistics(every_n_steps=1, probe_size=16),
            JacobianSpectrum(every_n_steps=1, probe_size=4),
        ],
    )
    trainer.fit(_task(), _data())
    for name in ("init_statistics", "jacobian_spectrum"):
        history = json.loads((tmp_path / "plugins" / name / "history.json").read_text())
        assert [h["step"] for h in history] == [0, 1, 2]  # once per probe, not once per rank
        assert len(list((tmp_path / "plugins" / name).glob("step*.npz"))) == 3
