"""The PINN and the GAN under DDP: the PINN shares its collocation points over the processes and takes
the steps one process would take (a strategy other than DDP is refused with one line); the GAN's
feature extractor is trained once, on rank zero, and loaded by the others (2 CPU processes, gloo,
``strategy="ddp"`` in a subprocess with a timeout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from torch import nn

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks import PINN
from tests.harness import subprocess_env

REPO = Path(__file__).resolve().parents[1]


def test_pinn_refuses_a_strategy_other_than_ddp_with_one_line():
    class PipelineStrategy:  # a multi-process strategy that is not DDP (FSDP, DeepSpeed need a GPU here)
        pass

    task = PINN(nn.Linear(2, 1))
    task.trainer = SimpleNamespace(world_size=2, strategy=PipelineStrategy())
    with pytest.raises(ConfigError, match=r"PINN shares .* 2 processes with PipelineStrategy: use .*ddp"):
        task.setup("fit")


def _pinn_fit(out: Path, devices: int) -> None:
    """A PINN fit on Burgers, on 1 or 2 CPU processes (DDP, gloo); every rank writes its share of the
    last interior points, its final weights, iterations and metrics to ``out/pinn<devices>_rank<r>.json``."""
    import torch

    from tdl_lightning.data.pde import PDECollocation
    from tdl_lightning.models import DeepMLP

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.points = batch["x"].tolist()

        def on_train_end(self, trainer, pl_module):
            weights = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()]).tolist()
            record = dict(
                points=self.points,
                weights=weights,
                iterations=pl_module.lbfgs_iterations,
                global_step=trainer.global_step,
                rel_l2=float(trainer.callback_metrics["val/rel_l2"]),
                loss=float(trainer.callback_metrics["train/loss"]),
            )
            (out / f"pinn{devices}_rank{trainer.global_rank}.json").write_text(json.dumps(record))

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = DeepMLP(input_dim=2, width=6, depth=2, output_dim=1, activation="tanh", init="xavier")
    task = PINN(net, adam_steps=3, lbfgs_steps=2, lbfgs_iters_per_step=5)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=-1,
        limit_val_batches=1,
        callbacks=[Record()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(out),
    )
    data = PDECollocation(  # residual-weighted redraws at each Adam epoch: made on rank zero, broadcast
        "burgers", n_interior=64, n_initial=8, n_boundary=8, steps_per_epoch=1, resample_every_n_epochs=1,
        adaptive="rad", candidates=512,
    )  # fmt: skip
    trainer.fit(task, data)


@pytest.mark.ddp
@pytest.mark.slow  # 45-80 s on 2 CPU cores: runs in `tox -e ddp`
def test_pinn_under_ddp_shares_the_points_and_takes_the_single_process_steps(tmp_path):
    """Two processes: each fits half of the points (disjoint, together the full set, residual-weighted
    redraws included); DDP averages the gradients and the line search sees the mean loss, so both ranks
    end with the same weights, equal to one process's fit on all the points (to rounding), Adam and
    L-BFGS phases alike."""
    env = subprocess_env(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "tests.test_ddp_tasks", "pinn", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _pinn_fit(tmp_path, devices=1)
    single = json.loads((tmp_path / "pinn1_rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"pinn2_rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(r["points"]) for r in ranks] == [32, 32]
    assert ranks[0]["points"] + ranks[1]["points"] == single["points"]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # every rank took the same steps
    assert ranks[0]["iterations"] == ranks[1]["iterations"] == single["iterations"] == 10
    assert ranks[0]["global_step"] == single["global_step"] == 5
    assert ranks[0]["weights"] == pytest.approx(single["weights"], rel=1e-8, abs=1e-10)
    assert ranks[0]["rel_l2"] == pytest.approx(single["rel_l2"], rel=1e-8)  # the grid, shared and summed
    assert ranks[0]["loss"] == pytest.approx(single["loss"], rel=1e-8)  # the mean of the halves' losses


def test_pinn_points_must_split_evenly_over_the_processes():
    from tdl_lightning.data.pde import PDECollocation

    data = PDECollocation("burgers", n_interior=63, n_initial=8, n_boundary=8)
    with pytest.raises(ConfigError, match="n_interior=63 is not a multiple of 2; use e.g. n_interior: 64"):
        data.share(data.make_batch(), 0, 2)


def test_gan_under_ddp_asks_for_the_search_of_unused_parameters_with_one_line():
    # each player's loss leaves the other's weights unused: plain ddp failed at the first backward
    from tdl_lightning.models import MLPGAN
    from tdl_lightning.tasks import GAN

    task = GAN(MLPGAN(latent_dim=4, hidden_dims=(8,)), metrics=False)
    for strategy, refused in (("ddp", True), ("ddp_spawn", True), ("ddp_find_unused_parameters_true", False)):
        task.trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
        if refused:
            with pytest.raises(ConfigError, match=r"use --trainer.strategy ddp_find_unused_parameters_true"):
                task.setup("fit")
        else:
            task.setup("fit")
    task.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    task.setup("fit")  # one process: nothing to find


def _gan_fit(out: Path) -> None:
    """One rank of a 2-process GAN fit; records, per rank, whether the extractor's cache was filled
    when this rank asked for it (rank zero: empty, it trains; the others: filled, they load)."""
    import torch

    from tdl_lightning.data import MNIST5k
    from tdl_lightning.models import MLPGAN
    from tdl_lightning.tasks import GAN, gan

    make = gan.lenet_feature_extractor

    def recorded(images, labels, cache_dir, **kwargs):
        rank = torch.distributed.get_rank()
        cached = sorted(p.name for p in Path(cache_dir).glob("lenet_features_*.pt"))
        (out / f"rank{rank}.json").write_text(json.dumps({"cached_before": cached}))
        return make(images, labels, cache_dir, **kwargs)

    gan.lenet_feature_extractor = recorded
    torch.set_num_threads(1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",  # the two players: each step trains one of them
        max_steps=1,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(out),
    )
    task = GAN(
        MLPGAN(latent_dim=4, hidden_dims=(16,)),
        feature_epochs=1,
        metric_samples=100,
        feature_cache_dir=str(out / "cache"),
    )
    trainer.fit(task, MNIST5k(normalize=False, batch_size=32))


@pytest.mark.ddp
@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_gan_feature_extractor_is_trained_once_on_rank_zero(tmp_path):
    env = subprocess_env(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "tests.test_ddp_tasks", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["cached_before"] == []  # rank zero trains it
    assert len(one["cached_before"]) == 1  # rank one waited, then found it in the cache
    assert len(list((tmp_path / "cache").glob("lenet_features_*.pt"))) == 1


if __name__ == "__main__":
    if sys.argv[1] == "pinn":
        _pinn_fit(Path(sys.argv[2]), devices=2)
    else:
        _gan_fit(Path(sys.argv[1]))
