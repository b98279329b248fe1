"""Probes that share their work across ranks, refuse what would hang, and fail on every rank at once.

Two CPU processes (gloo, one thread each) in a subprocess with a timeout, so that a collective made
on one rank only fails the test instead of hanging pytest:

- ``equal``: LossLandscape (plane and path), JacobianSpectrum and FilterVisualisation's activation
  maximisation probed on 2 ranks in lockstep equal one process on the same probe batch to 1e-6, and
  the other ranks return nothing (rank zero alone logs);
- ``fail``: a real ``Trainer.fit`` with ``strategy="ddp"`` in two independently launched processes
  (as SLURM's ``srun`` or a scheduler starts them: no launcher kills a survivor), where the probe's
  loss raises on rank 1 only: both processes end within 60 s with the error's line.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import types
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn

import plugins.base
from plugins import FilterVisualisation, JacobianSpectrum, LossLandscape
from plugins.base import DiagnosticCallback, ProbeResult, require_strategy, share_work, work_share
from tests.harness import subprocess_env

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-6


class ConvTask(L.LightningModule):
    """A small two-conv classifier with the plugin protocol (``loss``, ``forward``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.head(h.flatten(1))

    def loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def _case() -> tuple[ConvTask, tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
    """The module, probe batch and a starting point (away from the weights) of the equality case."""
    torch.manual_seed(0)
    task = ConvTask()
    batch = (torch.randn(9, 1, 12, 12), torch.randint(0, 3, (9,)))
    theta_init = [p.detach() + 0.1 * torch.randn_like(p) for p in task.parameters()]
    return task, batch, theta_init


def _plugins() -> list[DiagnosticCallback]:
    return [
        LossLandscape(steps=5, interpolation_steps=4),  # 26 + 4 points: uneven shares of 2
        JacobianSpectrum(),  # 9 inputs: 5 and 4
        FilterVisualisation(layers=["conv1", "conv2"], maximise=True, maximise_channels=2, maximise_steps=4),
    ]


def _probe_all() -> dict[str, np.ndarray] | None:
    """Every plugin's arrays from one probe of the equality case (``None`` on ranks other than zero)."""
    task, batch, theta_init = _case()
    arrays: dict[str, np.ndarray] = {}
    for cb in _plugins():
        if isinstance(cb, LossLandscape):
            cb.theta_init = theta_init
        result = cb.probe(task, batch)
        arrays.update(
            {f"{cb.name}/{k}": np.asarray(torch.as_tensor(v).detach()) for k, v in result.arrays.items()}
        )
        arrays.update({f"{cb.name}/scalar_{k}": np.asarray(v) for k, v in result.scalars.items()})
    uneven = share_work(list(range(7)), lambda share: [10 * i for i in share])
    return None if uneven is None else {**arrays, "uneven": np.asarray(uneven)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _equal_worker(rank: int, out: str, port: int) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        arrays = _probe_all()
        if rank == 0:
            assert arrays is not None
            # as inside the probe of a plugin that rank zero runs alone: share_work makes no collective
            plugins.base._ALONE[0] = True
            arrays["alone"] = np.asarray(share_work(list(range(5)), lambda share: [i * i for i in share]))
            plugins.base._ALONE[0] = False
            np.savez(out, **arrays)
        else:
            Path(out).with_suffix(".rank1.json").write_text(json.dumps({"returned": arrays is not None}))
    finally:
        torch.distributed.destroy_process_group()


def test_work_share_covers_every_item_once_in_order():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            shares = [work_share(list(range(n)), r, world) for r in range(world)]
            assert [i for share in shares for i in share] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.ddp
@pytest.mark.slow  # tens of seconds on 2 CPU cores: in `tox -e ddp` / `-m slow`
def test_shared_probes_equal_one_process(tmp_path):
    out = tmp_path / "two.npz"
    cmd = [sys.executable, "-m", "tests.test_ddp_sharing", "equal", str(out), str(_free_port())]
    proc = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(out.with_suffix(".rank1.json").read_text()) == {"returned": False}
    one = _probe_all()
    with np.load(out) as two:
        np.testing.assert_array_equal(two["alone"], [0, 1, 4, 9, 16])
        assert set(two) - {"alone"} == set(one)
        assert "loss_landscape/interpolation_loss" in two and "filters/act_max_images_conv2" in two
        for key in one:
            if key.endswith("scalar_probe_seconds"):
                continue
            np.testing.assert_allclose(two[key], one[key], rtol=0, atol=ATOL, err_msg=key)
    np.testing.assert_array_equal(one["uneven"], 10 * np.arange(7))


def _failing_loss(out: Path):
    def loss_fn(model, batch):
        if torch.distributed.get_rank() == 1:
            (out / "raised_at").write_text(str(time.time()))
            raise RuntimeError("the probe's loss broke on rank 1")
        return model.loss(batch)

    return loss_fn


def _fail_worker(out: Path) -> None:
    """One rank of a 2-process ``strategy='ddp'`` fit whose LossLandscape probe raises on rank 1."""
    from tdl_lightning.data import TeacherStudent
    from tdl_lightning.models import DeepMLP
    from tdl_lightning.tasks import Classifier

    torch.set_num_threads(1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(minutes=30)),  # Lightning's default: a hang would last 30 min
        max_steps=3,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(out),
        callbacks=[
            LossLandscape(
                steps=3, interpolation_steps=2, probe_size=8, at_init=True, loss_fn=_failing_loss(out)
            )
        ],
    )
    data = TeacherStudent(num_samples=256, input_dim=4, task="classification", batch_size=16)
    trainer.fit(Classifier(DeepMLP(input_dim=4, width=8, depth=2, output_dim=2), num_classes=2), data)


@pytest.mark.ddp
def test_failure_on_rank_one_ends_every_rank_within_a_minute(tmp_path):
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = subprocess_env(
            OMP_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            NODE_RANK="0",
            LOCAL_RANK=str(rank),
        )
        cmd = [sys.executable, "-m", "tests.test_ddp_sharing", "fail", str(tmp_path)]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        errors = [proc.communicate(timeout=240)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    ended = time.time()
    assert all(proc.returncode != 0 for proc in procs)
    raised = float((tmp_path / "raised_at").read_text())
    assert ended - raised < 60
    for rank, err in enumerate(errors):
        assert (
            "LossLandscape's probe failed on rank 1: RuntimeError: the probe's loss broke on rank 1" in err
        ), f"rank {rank}: {err[-3000:]}"


def test_sharding_strategies_are_refused_with_one_line():
    fsdp = types.SimpleNamespace(strategy=FSDPStrategy(), world_size=2)
    with pytest.raises(MisconfigurationException, match=r"supports one device and DDP .* not FSDPStrategy"):
        require_strategy("LossLandscape", fsdp, nn.Linear(2, 2), runs_train_mode=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", sync_batchnorm=True, logger=False)
    with pytest.raises(
        MisconfigurationException, match="train with sync_batchnorm=False, or remove LossLandscape"
    ):
        LossLandscape().setup(trainer, ConvTask(), "fit")
    require_strategy(
        "JacobianSpectrum", trainer, ConvTask(), JacobianSpectrum.runs_train_mode
    )  # eval mode: fine


class Slow(DiagnosticCallback):
    name = "slow"

    def probe(self, pl_module, batch):
        return ProbeResult()


def test_a_probe_near_the_timeout_warns_once():
    cb = Slow()
    trainer = types.SimpleNamespace(strategy=DDPStrategy(timeout=timedelta(seconds=100)), world_size=2)
    with pytest.warns(UserWarning, match=r"DDPStrategy\(timeout=datetime.timedelta"):
        cb._warn_if_near_timeout(trainer, 60.0)
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        cb._warn_if_near_timeout(trainer, 70.0)
    assert later == []  # once per run


if __name__ == "__main__":
    if sys.argv[1] == "equal":
        torch.multiprocessing.spawn(_equal_worker, args=(sys.argv[2], int(sys.argv[3])), nprocs=2)
    else:
        _fail_worker(Path(sys.argv[2]))


class TrainedConvTask(ConvTask):
    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_long_probe_says_so_when_it_ends_and_the_next_when_it_starts(tmp_path, caplog):
    cb = Slow(at_init=True, every_n_steps=1, probe_size=4)
    cb.announce_after_seconds = 0.0  # every probe counts as long here
    task = TrainedConvTask()
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))), batch_size=4
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=str(tmp_path), callbacks=[cb],
    )  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.fit(task, data)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Slow: the probe at step 0 (init) took ") for m in messages), messages
    assert any(m.startswith("Slow: probing at step 1 (the last probe took ") for m in messages), messages
    assert [h["step"] for h in cb.history] == [0, 1] and all("slow/probe_seconds" in h for h in cb.history)
