"""Every plugin at once under DDP: 2 CPU processes (gloo, ``ddp_spawn``) against 1 process.

One LeNet-5 fit on MNIST5k carries all five plugins with tiny probes and schedules. It runs as a
script in a subprocess (``python -m tests.test_ddp_plugins RUN_ROOT DEVICES``), so a plugin that
makes a collective on one rank only fails the test by its timeout instead of hanging pytest. The
test then reads the run directory back: one run and one W&B run, each figure written and logged
to W&B once per probe, every rank probing the same batch, and the deterministic probes at init
(``InitStatistics``, ``JacobianSpectrum``, ``FilterVisualisation``'s maps, the distributed
``HessianEigenvalues``) equal to a 1-process run of the same script. The 1-process run serves its
data from in-memory tensors (``on_device=True``) and the 2-process run through a ``DataLoader``
with Lightning's distributed sampler: the probe batch depends on neither the loader nor the rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from plugins import FilterVisualisation, HessianEigenvalues, InitStatistics, JacobianSpectrum, LossLandscape
from plugins.base import DiagnosticCallback, probe_inputs, take_probe_batch
from tdl_lightning.data import MNIST5k
from tdl_lightning.data.base import OnDeviceLoader, SeededPermutation
from tdl_lightning.models import LeNet5
from tdl_lightning.runs import Run, RunSettings, default_loggers
from tdl_lightning.tasks import Classifier
from tests.harness import subprocess_env

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # optimizer steps of the fit: probes at 0 (init), 2 and 4 (epoch end / end)
RTOL = 1e-5  # init probes, 2 processes vs 1 (only float summation order may differ)

# PNGs each plugin writes in this fit (figure name -> steps), and so W&B images per key.
EXPECTED_FIGURES = {
    "init_statistics": {"q_c": [0]},
    "jacobian_spectrum": {"spectrum": [0, 2, 4]},
    "hessian": {"density": [0], "lambda_max_curve": [STEPS]},
    "loss_landscape": {"contour": [STEPS], "interpolation": [STEPS]},
    "filters": {
        f"{figure}_model.conv1": [0, STEPS]
        for figure in ("filter_grid", "activation_maps", "filter_strip", "activation_maximisation")
    },
}


class ProbeBatchRecorder(L.Callback):
    """Writes from every rank a fingerprint of each plugin's probe batch (shape, sum, sum of squares)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        prints = {}
        for cb in trainer.callbacks:
            if isinstance(cb, DiagnosticCallback) and cb.probe_batch is not None:
                x = probe_inputs(cb.probe_batch).double()
                prints[cb.name] = [list(x.shape), float(x.sum()), float((x**2).sum())]
        (self.out / f"probe_batches_rank{trainer.global_rank}.json").write_text(json.dumps(prints))


def all_plugins() -> list[DiagnosticCallback]:
    """The five plugins with probes small enough for a 2-core CPU (a few seconds in all)."""
    return [
        InitStatistics(probe_size=32),
        JacobianSpectrum(probe_size=4, every_n_steps=2),
        HessianEigenvalues(
            k=2,
            tol=1e-6,
            max_iter=80,
            trace=True,
            trace_matvecs=6,
            density_at=["init"],
            density_steps=6,
            distributed=True,
            probe_size=64,
        ),  # fmt: skip
        LossLandscape(steps=3, interpolation_steps=3, probe_size=32),
        FilterVisualisation(num_images=2, maximise=True, maximise_channels=2, maximise_steps=3),
    ]


def fit(root: Path, devices: int, on_device: bool) -> None:
    """Fit LeNet-5 on MNIST5k for ``STEPS`` steps with every plugin, into a fresh run under ``root``."""
    torch.set_num_threads(1)
    run = Run.create(RunSettings(experiment="all_plugins", root=str(root)))
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        limit_train_batches=STEPS,
        limit_val_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=default_loggers(run, RunSettings(), "fit"),
        callbacks=[*all_plugins(), ProbeBatchRecorder(run.dir)],
        default_root_dir=str(run.dir),
    )
    trainer.fit(Classifier(LeNet5(), num_classes=10), MNIST5k(batch_size=16, on_device=on_device))


def _fit_in_subprocess(root: Path, devices: int) -> Path:
    env = subprocess_env(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_RUN_ID", None)
    loader = "on_device" if devices == 1 else "dataloader"
    cmd = [sys.executable, "-m", "tests.test_ddp_plugins", str(root), str(devices), loader]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = (root / "all_plugins").iterdir()  # one run directory, not one per rank
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """The run directories of the same fit on 1 and on 2 processes."""
    root = tmp_path_factory.mktemp("ddp_plugins")
    return {devices: _fit_in_subprocess(root / f"devices{devices}", devices) for devices in (1, 2)}


def _wandb_images(run_dir: Path) -> Counter:
    """``(media key, step)`` of every image in the run's W&B history, counted (read back offline)."""
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")  # exactly one W&B run
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_dir)]
    lines = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    images: Counter = Counter()
    for record in (json.loads(line) for line in lines if line.strip()):
        if record.get("type") != "history":
            continue
        item = record["history"]["item"]  # flat keys: "<key>._type" is "image-file" for an image
        for key, value in item.items():
            if key.endswith("._type") and value == "image-file":
                images[key.removesuffix("._type"), int(item["trainer/global_step"])] += 1
    return images


def _npz(run_dir: Path, plugin: str, step: int) -> dict[str, np.ndarray]:
    with np.load(run_dir / "plugins" / plugin / f"step{step:07d}.npz") as data:
        return dict(data)


def _history(run_dir: Path, plugin: str) -> list[dict]:
    return json.loads((run_dir / "plugins" / plugin / "history.json").read_text())


def test_on_device_data_gives_every_rank_the_probe_batch_of_a_data_loader():
    """An on-device loader yields its rank's shard; the probe batch is still the seeded draw of all data."""
    dm = MNIST5k(on_device=True)
    dm.setup("fit")
    x, y = dm.splits["train"]
    expected = take_probe_batch(DataLoader(TensorDataset(x, y), batch_size=16), 32, seed=0)
    for rank in (0, 1):
        order = SeededPermutation(len(x), seed=0)
        before = order.generator.get_state()
        batch = take_probe_batch(OnDeviceLoader((x, y), 16, order, rank, world_size=2), 32, seed=0)
        assert all(torch.equal(a, b) for a, b in zip(batch, expected, strict=True)), f"rank {rank}"
        assert torch.equal(order.generator.get_state(), before)  # the training order is untouched


@pytest.mark.ddp
@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_each_figure_is_written_once_per_probe(runs):
    for devices, run_dir in runs.items():
        for plugin, figures in EXPECTED_FIGURES.items():
            found = sorted(p.name for p in (run_dir / "plugins" / plugin).glob("*.png"))
            expected = sorted(f"{name}_step{s:07d}.png" for name, steps in figures.items() for s in steps)
            assert found == expected, f"{devices} process(es), {plugin}"
            steps = [h["step"] for h in _history(run_dir, plugin)]
            assert len(steps) == len(set(steps)), f"{devices} process(es), {plugin}: a step probed twice"


@pytest.mark.ddp
@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_one_wandb_run_logs_each_figure_once_per_probe(runs):
    expected = Counter(
        (f"{plugin}/{name}", step)
        for plugin, figures in EXPECTED_FIGURES.items()
        for name, steps in figures.items()
        for step in steps
    )
    assert _wandb_images(runs[2]) == expected


@pytest.mark.ddp
@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_every_rank_probes_the_same_batch_as_one_process(runs):
    one = json.loads((runs[1] / "probe_batches_rank0.json").read_text())
    ranks = [json.loads((runs[2] / f"probe_batches_rank{r}.json").read_text()) for r in (0, 1)]
    assert set(one) == set(EXPECTED_FIGURES)
    for plugin, (shape, total, squares) in one.items():
        for rank in ranks:
            assert rank[plugin][0] == shape
            np.testing.assert_allclose(rank[plugin][1:], [total, squares], rtol=1e-12, err_msg=plugin)


@pytest.mark.ddp
@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_probes_at_init_equal_one_process(runs):
    one, two = runs[1], runs[2]
    # InitStatistics: q^l and c^l of every linear layer
    for key in ("q", "c"):
        np.testing.assert_allclose(
            _npz(two, "init_statistics", 0)[key], _npz(one, "init_statistics", 0)[key], rtol=RTOL
        )
    # JacobianSpectrum: every singular value of the probe inputs' Jacobians
    s1, s2 = (_npz(r, "jacobian_spectrum", 0)["singular_values"] for r in (one, two))
    np.testing.assert_allclose(s2, s1, rtol=RTOL)
    # FilterVisualisation: the same filters, maps of the same probe images, same maximised inputs
    f1, f2 = _npz(one, "filters", 0), _npz(two, "filters", 0)
    assert f1.keys() == f2.keys()
    for key in set(f1) - {"scalar_probe_seconds"}:  # a time, not a result
        np.testing.assert_allclose(f2[key], f1[key], rtol=RTOL, atol=1e-6, err_msg=key)
    # HessianEigenvalues: each rank takes half the probe batch, products all-reduced = the whole batch
    h1, h2 = _history(one, "hessian")[0], _history(two, "hessian")[0]
    assert h1["step"] == h2["step"] == 0
    for key in ("hessian/lambda_1", "hessian/lambda_2"):
        assert h2[key] == pytest.approx(h1[key], rel=RTOL), key
    assert h2["hessian/trace"] == pytest.approx(h1["hessian/trace"], rel=1e-4)


if __name__ == "__main__":
    fit(Path(sys.argv[1]), devices=int(sys.argv[2]), on_device=sys.argv[3] == "on_device")
