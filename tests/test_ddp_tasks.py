"""The PINN and the GAN under DDP: the PINN refuses more than one process with one line; the GAN's
feature extractor is trained once, on rank zero, and loaded by the others (2 CPU processes, gloo,
``strategy="ddp"`` in a subprocess with a timeout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from torch import nn

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks import PINN
from tests.harness import subprocess_env

REPO = Path(__file__).resolve().parents[1]


def test_pinn_refuses_ddp_with_one_line():
    task = PINN(nn.Linear(2, 1))
    task.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(ConfigError, match=r"PINN trains on one device, .* 2 processes.*trainer.devices: 1"):
        task.setup("fit")


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
    _gan_fit(Path(sys.argv[1]))
