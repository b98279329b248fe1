"""SLURM: the sbatch scripts ask for the pre-emption signal and requeue, and data on a shared file
system is prepared once, on global rank zero."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tdl_lightning.data import MNIST, MNIST5k

SLURM = Path(__file__).resolve().parents[1] / "experiments" / "slurm"


@pytest.mark.parametrize("script", ["tdl_fit.sbatch", "tdl_sweep.sbatch"])
def test_sbatch_scripts_requeue_on_the_time_limit_signal(script):
    text = (SLURM / script).read_text()
    assert "SIGUSR1@90" in text and "#SBATCH --requeue" in text
    assert "TDL_SHARED_FILESYSTEM" in text
    subprocess.run(["bash", "-n", str(SLURM / script)], check=True)  # it parses


def test_the_sweep_array_runs_one_share_per_task_with_no_inherited_run_id():
    text = (SLURM / "tdl_sweep.sbatch").read_text()
    assert '--shard "$SHARD"' in text and "SLURM_ARRAY_TASK_ID" in text and "unset WANDB_RUN_ID" in text


def test_shared_filesystem_prepares_data_on_global_rank_zero_only(monkeypatch):
    monkeypatch.delenv("TDL_SHARED_FILESYSTEM", raising=False)
    assert MNIST(download=False).prepare_data_per_node  # Lightning's default: once per node
    assert not MNIST(download=False, shared_filesystem=True).prepare_data_per_node
    monkeypatch.setenv("TDL_SHARED_FILESYSTEM", "1")  # as the sbatch scripts set it
    assert not MNIST5k().prepare_data_per_node
    assert MNIST(download=False, shared_filesystem=False).prepare_data_per_node
