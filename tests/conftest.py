"""Shared fixtures: offline W&B, tiny trainers, and the plugin transparency check."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_CONSOLE", "off")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.harness import fit_and_collect, quiet_trainer_kwargs  # noqa: E402


@pytest.fixture(autouse=True)
def no_wandb_run_outlives_its_test():
    """A W&B run a test started (e.g. through a WandbLogger its Trainer made) ends with the test, so
    the next test's logger starts a run of its own instead of reusing it."""
    yield
    wandb = sys.modules.get("wandb")  # never imported here only to be checked
    if wandb is not None and wandb.run is not None:
        wandb.finish()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside a fresh temporary directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_trainer_kwargs(tmp_path):
    """Trainer arguments for fast CPU tests (:func:`tests.harness.quiet_trainer_kwargs`), writing
    under the test's ``tmp_path``: no logger, no checkpoints, no progress bar."""
    return quiet_trainer_kwargs(default_root_dir=str(tmp_path))


@pytest.fixture
def fit_collect():
    """``fit_collect(make_task, make_data, callbacks, **trainer)`` -> final weights (see harness)."""
    return fit_and_collect


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of many tiny tensor ops (small SVDs, float64
    Hessians, LeNet steps): on two shared cores, two OpenMP threads spin against each other and
    ran such modules 10-100x slower here.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST5k's training images and labels (read once per session: ``tests.filter_fixtures``)."""
    from tests.filter_fixtures import mnist_train_split

    return mnist_train_split()


@pytest.fixture(scope="module")
def trained_lenet() -> torch.nn.Module:
    """A module's own copy of the LeNet-5 trained once per session on MNIST5k (``tests.filter_fixtures``)."""
    from tests.filter_fixtures import trained_lenet_copy

    return trained_lenet_copy()


@pytest.fixture
def runs(tmp_path):
    """A private copy of the two finished runs of a real tiny sweep (made once per session, by
    ``tests.sweep.helpers.real_sweep``): ``<tmp>/runs/tiny_sweep/<id>``; what the tests of
    ``tdl compare`` and of ``tdl_lightning.runs.reading`` read."""
    import shutil

    from tests.sweep.helpers import real_sweep_runs

    target = tmp_path / "runs" / "tiny_sweep"
    shutil.copytree(real_sweep_runs(), target, symlinks=True)  # wandb symlinks its debug log
    return target
