"""On a GPU: the same numbers as on the CPU, mixed precision with every plugin, the real CLI.

Marked ``gpu`` and skipped where CUDA is absent (the CI machine has none): run them with
``pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugins.hessian import HessianEigenvalues, hessian_eigenvalues
from plugins.jacobian import JacobianSpectrum, jacobian_singular_values
from plugins.signal_propagation import InitStatistics, preactivation_variances
from tdl_lightning.cli import main
from tdl_lightning.data import TeacherStudent
from tdl_lightning.data.base import OnDeviceLoader
from tdl_lightning.models import DeepMLP, LeNet5
from tests.harness import assert_same_weights, fit_and_collect
from tests.test_hessian import SGDRegressor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def test_hessian_eigenvalues_agree_with_the_cpu():
    """float64 LeNet-5 top-3 on a GPU equals the CPU result to 1e-8 relative (same Lanczos)."""
    torch.manual_seed(0)
    model = LeNet5().double()
    x, y = torch.randn(32, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (32,))
    ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    on_cpu = hessian_eigenvalues(model, ce, (x, y), k=3, tol=1e-10, max_iter=200)
    on_gpu = hessian_eigenvalues(model.to(CUDA), ce, (x.to(CUDA), y.to(CUDA)), k=3, tol=1e-10, max_iter=200)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-8, atol=0)


def test_jacobian_and_variances_agree_with_the_cpu():
    """Singular values (float32, 1e-4 relative) and per-layer q^l (1e-5) are the same on a GPU."""
    torch.manual_seed(0)
    net = DeepMLP(64, 64, 8, output_dim=None, activation="tanh", sigma_w=1.0, sigma_b=0.05)
    x = torch.randn(16, 64)
    s_cpu = jacobian_singular_values(net, x)
    q_cpu = preactivation_variances(net, x)
    net.to(CUDA)
    torch.testing.assert_close(jacobian_singular_values(net, x.to(CUDA)).cpu(), s_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        torch.as_tensor(preactivation_variances(net, x.to(CUDA))).cpu(),
        torch.as_tensor(q_cpu),
        rtol=1e-5,
        atol=0,
    )


def test_on_device_loader_serves_cuda_batches():
    loader = OnDeviceLoader((torch.arange(10.0, device=CUDA), torch.arange(10, device=CUDA)), batch_size=4)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert all(t.is_cuda for b in batches for t in b)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_lenet_fit_with_every_plugin_under_mixed_precision(precision, tmp_path, monkeypatch):
    """``tdl fit`` on the GPU in mixed precision with all diagnostics attached: finite numbers, run files."""
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(REPO / "experiments" / "lenet_mnist.yaml"),
            "--trainer.accelerator=gpu",
            f"--trainer.precision={precision}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=20",
            "--trainer.limit_val_batches=4",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=HessianEigenvalues",
            "--trainer.callbacks.k=2",
            "--trainer.callbacks.every_n_steps=10",
            "--trainer.callbacks+=JacobianSpectrum",
            "--trainer.callbacks+=FilterVisualisation",
        ]
    )
    (run_dir,) = Path("runs").glob("*/*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.5 < summary["metrics"]["val/acc"] <= 1.0, summary
    hessian = json.loads((run_dir / "plugins" / "hessian" / "history.json").read_text())
    assert hessian and all(torch.isfinite(torch.tensor(h["hessian/lambda_max"])) for h in hessian)
    assert list((run_dir / "plugins" / "filters").glob("*.png"))
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_probes_leave_gpu_training_unchanged(tmp_path):
    """Deterministic GPU fit: weights with the plugins attached equal those without (bitwise)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:

        def make_task():
            return SGDRegressor(DeepMLP(8, 32, 3, output_dim=1, activation="tanh"))

        def make_data():
            return TeacherStudent(num_samples=256, input_dim=8, batch_size=32)

        plugins = [
            InitStatistics(every_n_steps=2),
            JacobianSpectrum(every_n_steps=2),
            HessianEigenvalues(every_n_steps=2, k=2),
        ]
        kwargs = dict(accelerator="gpu", max_steps=6, default_root_dir=str(tmp_path))
        assert_same_weights(
            fit_and_collect(make_task, make_data, [], **kwargs),
            fit_and_collect(make_task, make_data, plugins, **kwargs),
        )
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_cuda_graph_replay_gives_the_same_curvature(curvature):
    """Replaying the captured product equals plain autograd (float64, 1e-10 relative), with no fallback."""
    torch.manual_seed(0)
    model = LeNet5().double().to(CUDA)
    batch = (
        torch.randn(64, 1, 28, 28, dtype=torch.float64, device=CUDA),
        torch.randint(0, 10, (64,), device=CUDA),
    )
    ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: it must not happen here
        replayed = hessian_eigenvalues(
            model, ce, batch, k=3, tol=1e-10, max_iter=200, curvature=curvature, cuda_graph=True
        )
    plain = hessian_eigenvalues(model, ce, batch, k=3, tol=1e-10, max_iter=200, curvature=curvature)
    torch.testing.assert_close(replayed, plain, rtol=1e-10, atol=0)
    assert torch.backends.cudnn.allow_tf32  # ieee_float32 restored PyTorch's default


def test_float32_curvature_is_not_tf32():
    """On a GPU the float32 eigenvalues of a CNN match float64 to 2e-5 (TF32 convolutions gave ~2e-4)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10)
    ).to(CUDA)
    x, y = torch.randn(128, 3, 16, 16, device=CUDA), torch.randint(0, 10, (128,), device=CUDA)
    ce = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    single = hessian_eigenvalues(model, ce, (x, y), k=3, tol=1e-7, max_iter=200)
    double = hessian_eigenvalues(model.double(), ce, (x.double(), y), k=3, tol=1e-10, max_iter=200)
    torch.testing.assert_close(single, double, rtol=2e-5, atol=0)
