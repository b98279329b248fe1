"""Hessian eigenvalues, trace and density against exact Hessians of small float64 models.

Tolerances: eigenvalues 1e-6 relative (the issue's bar), products 1e-10, closed forms 1e-10,
Hutch++ within 3 of its own standard errors, SLQ mass 1 to 1e-9.
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.func import functional_call

from plugins.hessian import (
    HessianEigenvalues,
    hessian_eigenvalues,
    hessian_spectral_density,
    hessian_trace,
    hessian_vector_product,
)
from tdl_lightning.data import TeacherStudent
from tdl_lightning.tasks import Regressor
from tests.harness import assert_same_weights, fit_and_collect, quiet_trainer_kwargs

D = torch.float64


def cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def flat_hessian(model, loss_fn, batch):
    """The exact Hessian of loss_fn over the flattened trainable parameters (torch.func)."""
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return loss_fn(lambda x: functional_call(model, params, (x,)), batch)

    return torch.func.hessian(f)(theta)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(D)
    batch = (torch.randn(64, 5, dtype=D), torch.randint(0, 3, (64,)))
    hessian = flat_hessian(model, cross_entropy, batch)
    return model, batch, hessian, torch.linalg.eigvalsh(hessian)


def test_top5_and_bottom5_match_exact_hessian(mlp_case):
    model, batch, _, exact = mlp_case
    top = hessian_eigenvalues(model, cross_entropy, batch, k=5, tol=1e-7)
    bottom = hessian_eigenvalues(model, cross_entropy, batch, k=5, which="smallest", tol=1e-7)
    assert top.shape == (5,) and bool((top[:-1] >= top[1:]).all())
    torch.testing.assert_close(top, exact.flip(0)[:5], rtol=1e-6, atol=0)
    assert exact[0] < 0  # a saddle-ish point: negative curvature exists
    torch.testing.assert_close(bottom, exact[:5], rtol=1e-6, atol=1e-9 * float(exact.abs().max()))


def test_eigenvectors_and_hvp_match_exact_hessian(mlp_case):
    model, batch, hessian, _ = mlp_case
    values, vectors = hessian_eigenvalues(
        model, cross_entropy, batch, k=2, tol=1e-14, return_eigenvectors=True
    )
    for value, vector in zip(values, vectors, strict=True):
        y = torch.cat([t.reshape(-1) for t in vector])
        assert abs(float(y.norm()) - 1) < 1e-12
        assert float((hessian @ y - value * y).norm()) < 1e-6 * float(value)
    v = torch.randn(hessian.shape[0], dtype=D)
    hv = torch.cat([h.reshape(-1) for h in hessian_vector_product(model, cross_entropy, batch, v)])
    torch.testing.assert_close(hv, hessian @ v, rtol=1e-10, atol=1e-12)


def test_batches_give_the_mean_over_their_union(mlp_case):
    model, (x, y), _, exact = mlp_case
    pieces = [(x[:10], y[:10]), (x[10:41], y[10:41]), (x[41:], y[41:])]  # unequal sizes
    top = hessian_eigenvalues(model, cross_entropy, pieces, k=3, tol=1e-7)
    torch.testing.assert_close(top, exact.flip(0)[:3], rtol=1e-6, atol=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20)
    torch.testing.assert_close(
        hessian_eigenvalues(model, cross_entropy, loader, k=1, tol=1e-7), top[:1], rtol=1e-6, atol=0
    )


def test_linear_least_squares_closed_form():
    torch.manual_seed(2)
    x, w = torch.randn(50, 6, dtype=D), torch.randn(6, 1, dtype=D)
    model = nn.Linear(6, 1, bias=False).to(D)
    batch = (x, x @ w + 0.1 * torch.randn(50, 1, dtype=D))
    exact = torch.linalg.eigvalsh(2 / 50 * x.T @ x).flip(0)  # mean MSE: H = (2/N) X^T X
    values = hessian_eigenvalues(model, mse, batch, k=6)
    torch.testing.assert_close(values, exact, rtol=1e-10, atol=0)
    trace = hessian_trace(model, mse, batch, num_matvecs=18)  # 3n products: exact
    assert abs(trace.estimate - float(2 / 50 * (x**2).sum())) < 1e-10 and trace.std_error == 0


def test_ggn_of_linear_model_is_its_hessian():
    torch.manual_seed(3)
    model = nn.Linear(4, 3).to(D)
    batch = (torch.randn(40, 4, dtype=D), torch.randint(0, 3, (40,)))
    hessian = flat_hessian(model, cross_entropy, batch)
    v = torch.randn(hessian.shape[0], dtype=D)
    gv = hessian_vector_product(model, cross_entropy, batch, v, curvature="ggn")
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in gv]), hessian @ v, rtol=1e-10, atol=1e-12)


def test_ggn_of_mlp_is_jt_hz_j_and_psd(mlp_case):
    model, (x, y), hessian, _ = mlp_case
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def outputs(flat):
        chunks = {n: c.view_as(p) for (n, p), c in zip(params.items(), flat.split(sizes), strict=True)}
        return functional_call(model, chunks, (x,))

    jac = torch.func.jacrev(outputs)(theta).reshape(-1, theta.numel())  # (N*C, P)
    z = outputs(theta).detach()
    hz = torch.func.hessian(lambda out: F.cross_entropy(out.view_as(z), y))(z.reshape(-1))
    ggn = jac.T @ hz @ jac
    top = hessian_eigenvalues(model, cross_entropy, (x, y), k=3, curvature="ggn", tol=1e-7)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(ggn).flip(0)[:3], rtol=1e-6, atol=0)
    smallest = hessian_eigenvalues(model, cross_entropy, (x, y), k=1, which="smallest", curvature="ggn")
    assert float(smallest[0]) > -1e-10 * float(top[0])  # PSD, unlike the Hessian
    assert not torch.allclose(ggn, hessian)  # a nonlinear net: GGN != Hessian


def test_hutchplusplus_trace_within_its_stated_error(mlp_case):
    model, batch, hessian, _ = mlp_case
    exact = float(torch.trace(hessian))
    for seed in range(3):
        tr = hessian_trace(model, cross_entropy, batch, num_matvecs=30, seed=seed)
        assert tr.num_matvecs == 30 and tr.std_error > 0
        assert abs(tr.estimate - exact) <= 3 * tr.std_error, (tr, exact)
    full = hessian_trace(model, cross_entropy, batch, num_matvecs=3 * hessian.shape[0])
    assert abs(full.estimate - exact) < 1e-9 * abs(exact) and full.std_error == 0


def test_density_has_mass_one_and_covers_the_spectrum(mlp_case):
    model, batch, hessian, exact = mlp_case
    assert hessian.shape[0] > 60  # fewer Lanczos steps than parameters: a real quadrature
    d = hessian_spectral_density(model, cross_entropy, batch, num_probes=3, num_steps=30)
    assert abs(np.trapezoid(d.density, d.grid) - 1) < 1e-9
    assert abs(d.weights.sum() - 1) < 1e-9 and np.all(d.density >= 0)
    assert d.grid[0] <= float(exact[0]) and d.grid[-1] >= float(exact[-1])
    assert abs(d.nodes.max() - float(exact[-1])) < 1e-6 * float(exact[-1])  # the top outlier is resolved


def test_functions_leave_the_model_untouched():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2), nn.Linear(6, 1)).to(
        D
    )
    model.train()
    model[0].eval()  # a mixed mode must survive too
    batch = (torch.randn(16, 3, dtype=D), torch.randn(16, 1, dtype=D))
    mse(model, batch).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    for curvature in ("hessian", "ggn"):
        hessian_eigenvalues(model, mse, batch, k=2, curvature=curvature, return_eigenvectors=True)
        hessian_trace(model, mse, batch, num_matvecs=6, curvature=curvature)
        hessian_spectral_density(model, mse, batch, num_steps=5, curvature=curvature)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == [True, False, True, True, True, True]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_dropout_hessian_is_symmetric_over_batches():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 1)).to(D).train()
    x, y = torch.randn(30, 3, dtype=D), torch.randn(30, 1, dtype=D)
    batches = [(x[:15], y[:15]), (x[15:], y[15:])]
    u, v = torch.randn(41, dtype=D), torch.randn(41, dtype=D)
    hu = torch.cat([t.reshape(-1) for t in hessian_vector_product(model, mse, batches, u)])
    hv = torch.cat([t.reshape(-1) for t in hessian_vector_product(model, mse, batches, v)])
    assert abs(float(v @ hu - u @ hv)) < 1e-10  # the same dropout masks in every product


def test_warm_start_gives_the_same_eigenvalues_in_fewer_products(mlp_case):
    """A start near the wanted eigenvectors: the same top 2 (1e-6), and fewer products, counted
    as loss evaluations over two batches (each product recomputes batch by batch)."""
    model, (x, y), _, exact = mlp_case
    pieces = [(x[:32], y[:32]), (x[32:], y[32:])]
    calls = []

    def counted(m, b):
        calls.append(1)
        return cross_entropy(m, b)

    cold, vectors = hessian_eigenvalues(model, counted, pieces, k=2, tol=1e-7, return_eigenvectors=True)
    cold_calls = len(calls)
    start = [a + b + 1e-3 * torch.randn_like(a) for a, b in zip(*vectors, strict=True)]
    calls.clear()
    warm = hessian_eigenvalues(model, counted, pieces, k=2, tol=1e-7, start=start)
    torch.testing.assert_close(warm, exact.flip(0)[:2], rtol=1e-6, atol=0)
    torch.testing.assert_close(cold, exact.flip(0)[:2], rtol=1e-6, atol=0)
    assert len(calls) < cold_calls / 2
    with pytest.raises(ValueError, match="one entry per trainable parameter"):
        hessian_eigenvalues(model, cross_entropy, pieces, start=torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="non-zero"):
        hessian_eigenvalues(
            model, cross_entropy, pieces, start=[torch.zeros_like(p) for p in model.parameters()]
        )


def test_misuse_is_a_clear_error(mlp_case):
    model, batch, _, _ = mlp_case
    with pytest.raises(ValueError, match="one-shot iterator"):
        hessian_eigenvalues(model, cross_entropy, (b for b in [batch]))
    with pytest.raises(ValueError, match="scalar"):
        hessian_eigenvalues(model, lambda m, b: m(b[0]), batch)
    with pytest.raises(ValueError, match="exceeds"):
        hessian_eigenvalues(model, cross_entropy, batch, k=10_000)
    with pytest.raises(ValueError, match="which"):
        hessian_eigenvalues(model, cross_entropy, batch, which="middle")
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        hessian_eigenvalues(model, cross_entropy, batch)
    with pytest.raises(ValueError, match="process group"):
        hessian_eigenvalues(model, cross_entropy, batch, distributed=True)
    with pytest.raises(MisconfigurationException, match="density_at"):
        HessianEigenvalues(density_at=["sometimes"])


# ----------------------------------------------------------------------------- the callback
class SGDRegressor(Regressor):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5)


def _bn_task():
    return SGDRegressor(nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1)))


def _data():
    return TeacherStudent(num_samples=256, input_dim=8, batch_size=32)


def test_callback_leaves_training_untouched_and_writes_files(tmp_path):
    cb = HessianEigenvalues(k=2, every_n_steps=2, trace=True, density_at=["init", "end"], probe_size=64)
    with_plugin = fit_and_collect(_bn_task, _data, [cb], default_root_dir=str(tmp_path))
    without = fit_and_collect(_bn_task, _data, [], default_root_dir=str(tmp_path))
    assert_same_weights(with_plugin, without)
    assert [(h["when"], h["step"]) for h in cb.history] == [("init", 0), ("step", 2), ("step", 4), ("end", 4)]
    last = cb.history[-1]
    assert last["hessian/lambda_max"] == last["hessian/lambda_1"] >= last["hessian/lambda_2"]
    assert last["hessian/two_over_lr"] == pytest.approx(40.0)
    assert last["hessian/stability_threshold"] == pytest.approx(60.0)
    assert last["hessian/trace_std_error"] >= 0
    out = tmp_path / "plugins" / "hessian"
    assert json.loads((out / "history.json").read_text()) == cb.history
    assert (out / "density_step0000000.png").is_file() and (out / "density_step0000004.png").is_file()
    assert not (out / "density_step0000002.png").exists()
    assert (out / "lambda_max_curve_step0000004.png").stat().st_size > 1000
    saved = np.load(out / "step0000004.npz")
    assert abs(np.trapezoid(saved["density"], saved["density_grid"]) - 1) < 1e-6


def test_callback_matches_the_pure_function(tiny_trainer_kwargs):
    L.seed_everything(0, verbose=False)
    task, dm = _bn_task(), _data()
    cb = HessianEigenvalues(k=1, at_init=True, at_end=False, probe_size=64, tol=1e-6)
    trainer = L.Trainer(callbacks=[cb], **{**tiny_trainer_kwargs, "max_steps": 1, "limit_val_batches": 0})
    init = {k: v.clone() for k, v in task.state_dict().items()}
    trainer.fit(task, dm)
    task.load_state_dict(init)
    task.train()
    expected = hessian_eigenvalues(task, lambda m, b: m.loss(b), cb.probe_batch, k=1, tol=1e-6)
    assert cb.history[0]["hessian/lambda_max"] == pytest.approx(float(expected[0]), rel=1e-5)


def test_callback_warm_starts_from_the_last_eigenvectors(tiny_trainer_kwargs):
    """Every probe after the first starts from the last one's eigenvectors and still agrees with a
    cold start on the same weights (tol 1e-6)."""
    L.seed_everything(0, verbose=False)
    task, dm = _bn_task(), _data()
    cb = HessianEigenvalues(k=2, every_n_steps=2, at_end=False, probe_size=64, tol=1e-6)
    seen = []
    probe = cb.probe

    def recording(pl_module, batch):
        start = None if cb._start is None else cb._start.clone()
        result = probe(pl_module, batch)
        cold = hessian_eigenvalues(pl_module, lambda m, b: m.loss(b), batch, k=2, tol=1e-6)
        seen.append((start, result.scalars["lambda_2"], float(cold[1])))
        return result

    cb.probe = recording
    trainer = L.Trainer(callbacks=[cb], **{**tiny_trainer_kwargs, "max_steps": 4, "limit_val_batches": 0})
    trainer.fit(task, dm)
    assert [start is None for start, _, _ in seen] == [True, False, False]
    assert all(value == pytest.approx(cold, rel=1e-5) for _, value, cold in seen)
    cold_cb = HessianEigenvalues(k=1, warm_start=False)
    cold_cb.probe(task, cb.probe_batch)
    assert cold_cb._start is None


def _mlp_task():
    return Regressor(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))  # no BN: shards = union


@pytest.mark.slow
@pytest.mark.ddp
def test_distributed_hessian_equals_one_process_on_the_union(tmp_path):
    """2 processes (gloo, ddp_spawn): each probes half the probe batch, products all-reduced; the
    second probe, warm-started from the first one's eigenvectors, runs in lockstep on both ranks."""
    from plugins.base import module_loss_fn, take_probe_batch

    L.seed_everything(0, verbose=False)
    task, dm = _mlp_task(), _data()
    init = {k: v.clone() for k, v in task.state_dict().items()}
    cb = HessianEigenvalues(
        k=3, distributed=True, tol=1e-6, trace=True, at_end=False, every_n_steps=2, probe_size=96
    )
    ddp = dict(devices=2, strategy="ddp_spawn", max_steps=2, limit_val_batches=0)
    trainer = L.Trainer(**quiet_trainer_kwargs(**ddp, default_root_dir=str(tmp_path), callbacks=[cb]))
    trainer.fit(task, dm)
    history = json.loads((tmp_path / "plugins" / "hessian" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 2]
    dm.setup("fit")
    batch = take_probe_batch(dm.train_dataloader(), 96, 0)
    final = hessian_eigenvalues(task, module_loss_fn, batch, k=3, tol=1e-6)  # ddp_spawn returns the weights
    np.testing.assert_allclose(
        [history[1][f"hessian/lambda_{i}"] for i in (1, 2, 3)], final.numpy(), rtol=1e-5
    )
    task.load_state_dict(init)
    expected = hessian_eigenvalues(task, module_loss_fn, batch, k=3, tol=1e-6)
    trace = hessian_trace(task, module_loss_fn, batch, num_matvecs=30)
    got = [history[0][f"hessian/lambda_{i}"] for i in (1, 2, 3)]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)
    assert history[0]["hessian/trace"] == pytest.approx(trace.estimate, rel=1e-4)
