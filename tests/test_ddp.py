"""Two-process DDP on CPU (gloo): ``ddp_spawn`` inside pytest, ``ddp`` through the real ``tdl``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tdl_lightning.data import TeacherStudent
from tdl_lightning.models import DeepMLP
from tdl_lightning.runs import Run, RunSettings, default_loggers
from tdl_lightning.tasks import Classifier
from tests.harness import subprocess_env

pytestmark = pytest.mark.ddp
REPO = Path(__file__).resolve().parents[1]


class RankRecorder(L.Callback):
    """Writes, from every rank, what it saw: world size, its sample count, and the final weights."""

    def __init__(self, out: Path) -> None:
        self.out, self.seen = out, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += len(batch[0])

    def on_train_end(self, trainer, pl_module):
        weight = pl_module.model.readout.weight.detach()
        record = {"world_size": trainer.world_size, "seen": self.seen, "weight_sum": float(weight.sum())}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_ddp_spawn_two_cpu_processes_train_in_step(tmp_path):
    run = Run.create(RunSettings(experiment="ddp_spawn", root=str(tmp_path / "runs")))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=default_loggers(run, RunSettings(), "fit"),
        callbacks=[RankRecorder(tmp_path)],
        default_root_dir=str(run.dir),
    )
    data = TeacherStudent(num_samples=640, input_dim=8, task="classification", batch_size=32)
    trainer.fit(Classifier(DeepMLP(input_dim=8, width=32, depth=2, output_dim=2), num_classes=2), data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert [r["seen"] for r in ranks] == [256, 256]  # 512 training samples, sharded over 2 ranks
    assert ranks[0]["weight_sum"] == pytest.approx(ranks[1]["weight_sum"], abs=1e-6)  # replicas agree
    assert len(list((run.dir / "wandb").glob("offline-run-*"))) == 1
    assert "val/acc" in trainer.callback_metrics


def test_tdl_fit_with_ddp_spawn_reports_the_steps_its_processes_trained(in_tmp):
    # the spawned processes keep their loops' progress: the summary takes it from the fit's checkpoint
    from tdl_lightning.cli import main

    main([
        "fit", "--config", str(REPO / "experiments" / "lenet_mnist.yaml"), "--run.id=spawned",
        "--trainer.strategy=ddp_spawn", "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])  # fmt: skip
    summary = json.loads((in_tmp / "runs" / "lenet_mnist" / "spawned" / "summary.json").read_text())
    assert (summary["status"], summary["global_step"], summary["epochs"]) == ("finished", 6, 2)


@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_tdl_fit_with_ddp_strategy_in_its_own_processes(tmp_path):
    cmd = [
        sys.executable, "-m", "tdl_lightning.cli", "fit",
        "--config", str(REPO / "experiments" / "lenet_mnist.yaml"),
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
        "--trainer.enable_model_summary=false",  # the progress bar on, as users run it
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "lenet_mnist").iterdir()  # one run, not one per rank
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 4 and 0.0 <= summary["metrics"]["val/acc"] <= 1.0
    assert proc.stdout.count("tdl: fit finished") == 1  # the report comes from rank zero alone
    assert torch.load(next((run_dir / "checkpoints").glob("*.ckpt")), weights_only=False)["global_step"] == 4
    # tdl predict under DDP: each rank writes its share of the predict split, with the rows' positions
    predict = [*cmd[:3], "predict", *cmd[4:10], f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    proc = subprocess.run(
        predict, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (predicted,) = (p for p in (tmp_path / "runs" / "lenet_mnist").iterdir() if p != run_dir)
    shares = [torch.load(predicted / f"predictions_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert sorted(i for share in shares for i in share["indices"].tolist()) == list(range(500))
    assert json.loads((predicted / "summary.json").read_text())["predictions"]["rows"] == 500


def test_ddp_with_the_run_progress_bar_and_checkpoints_reaches_every_collective_on_every_rank(tmp_path):
    # the bar reads the epoch's metrics at an epoch end (a reduce across processes): Lightning's bar
    # does it where it is drawn, on rank zero alone, while the other ranks went on to the checkpoint's
    # broadcast; the two waited for each other until the process group's timeout (for ever in `tdl`)
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    from tdl_lightning.runs.checkpoints import checkpoint_callbacks
    from tdl_lightning.runs.quiet import RunProgressBar

    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)),
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_model_summary=False,
        callbacks=[RunProgressBar(), *checkpoint_callbacks(tmp_path / "checkpoints", minutes=10)],
        default_root_dir=str(tmp_path),
    )
    data = TeacherStudent(num_samples=256, input_dim=8, task="classification", batch_size=32)
    trainer.fit(Classifier(DeepMLP(input_dim=8, width=16, depth=2, output_dim=2), num_classes=2), data)
    assert "train/loss" in trainer.callback_metrics  # (ddp_spawn: the parent's trainer ran no step)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch=1-step=6.ckpt",
        "last.ckpt",
    ]


def test_ctrl_c_under_ddp_stops_every_rank_at_one_batch_with_a_checkpoint(tmp_path):
    # a terminal's Ctrl-C reaches every rank (one process group): each used to run Lightning's SIGTERM
    # handler, which broadcasts inside the handler, and the ranks waited for each other for ever
    import os
    import signal
    import time

    cmd = [
        sys.executable, "-m", "tdl_lightning.cli", "fit",
        "--config", str(REPO / "experiments" / "lenet_mnist.yaml"), "--run.id=ddp-int",
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.max_epochs=200", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
        "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    run_dir = tmp_path / "runs" / "lenet_mnist" / "ddp-int"
    with (tmp_path / "log").open("wb") as log:
        process = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not list((run_dir / "checkpoints").glob("epoch=*.ckpt")):  # training is under way
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[
                -3000:
            ]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: every process of the group
        assert process.wait(timeout=120) == 130, (tmp_path / "log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["global_step"]
    assert summary["status"] == "interrupted" and 0 < stopped < 800
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == stopped  # the checkpoint of the batch every rank stopped at
    assert (tmp_path / "log").read_text().count("stopping after this batch") == 1  # said by rank zero
