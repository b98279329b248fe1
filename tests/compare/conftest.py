"""The runs compared are real: the two runs of the tiny sweep in ``test_sweep`` (made once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_sweep import real_sweep_runs


@pytest.fixture
def runs(tmp_path) -> Path:
    """A private copy of the sweep's two finished runs: ``<tmp>/runs/tiny_sweep/<id>``."""
    target = tmp_path / "runs" / "tiny_sweep"
    shutil.copytree(real_sweep_runs(), target, symlinks=True)  # wandb symlinks its debug log
    return target
