"""``tdl_lightning.runs.checkpoints``: atomic writes, and files that are not checkpoints refused by name."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.checkpoints import AtomicCheckpointIO, DiskFullError, check_checkpoint


def test_atomic_checkpoint_io_leaves_no_truncated_file_on_a_full_disk(tmp_path, monkeypatch):
    def full_disk(checkpoint, filepath):
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "checkpoints" / "epoch=0-step=63.ckpt"
    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", full_disk)
    with pytest.raises(DiskFullError, match="no space left to write the checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert list(path.parent.iterdir()) == []


def _checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(50)}, "global_step": 3}, path)
    return path


class _Payload:
    """A class a weights-only load refuses to build."""


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "pickle", "no_state_dict"])
def test_checkpoints_that_are_not_checkpoints_are_refused_naming_the_file(kind, tmp_path):
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("epoch: 3\n")
    elif kind == "truncated":
        bad.write_bytes(_checkpoint(tmp_path).read_bytes()[:200])
    elif kind == "pickle":
        torch.save({"state_dict": {}, "x": _Payload()}, bad)
    else:
        torch.save({"weights": torch.ones(2)}, bad)
    with pytest.raises(ConfigError, match="is not a tdl checkpoint") as info:
        check_checkpoint(bad)
    assert str(bad) in str(info.value) and "weights_only=False" not in str(info.value)
    if kind == "pickle":
        assert check_checkpoint(bad, trusted=True)["x"].__class__ is _Payload
    assert check_checkpoint(_checkpoint(tmp_path))["global_step"] == 3
