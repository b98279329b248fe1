"""``tdl_lightning.runs.checkpoints``: atomic writes, last.ckpt as a link, and files that are not
checkpoints refused by name."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.checkpoints import (
    AtomicCheckpointIO,
    DiskFullError,
    RunCheckpoint,
    check_checkpoint,
    checkpoint_callbacks,
)
from tdl_lightning.runs.resume import latest_checkpoint


def test_atomic_checkpoint_io_leaves_no_truncated_file_on_a_full_disk(tmp_path, monkeypatch):
    def full_disk(checkpoint, filepath):
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "checkpoints" / "epoch=0-step=63.ckpt"
    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", full_disk)
    with pytest.raises(DiskFullError, match="no space left to write the checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert list(path.parent.iterdir()) == []


def test_last_checkpoint_links_to_the_epoch_checkpoint_and_resumes(tmp_path, tiny_trainer_kwargs):
    folder = tmp_path / "run" / "checkpoints"
    kwargs = {**tiny_trainer_kwargs, "max_steps": -1, "limit_train_batches": 3, "enable_checkpointing": True}
    callbacks = checkpoint_callbacks(folder, minutes=0)
    trainer = L.Trainer(**kwargs, max_epochs=2, callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    trainer.fit(BoringModel())
    last = folder / "last.ckpt"
    # one write per epoch: last.ckpt is a relative link to the epoch's file, which alone is kept
    assert last.is_symlink() and os.readlink(last) == "epoch=1-step=6.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=1-step=6.ckpt", "last.ckpt"]
    assert latest_checkpoint(tmp_path / "run") == last and check_checkpoint(last)["global_step"] == 6
    # a file written in its place between epochs (the timed checkpoint) replaces the link, not its target
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 7}, last)
    assert not last.is_symlink() and torch.load(folder / "epoch=1-step=6.ckpt")["global_step"] == 6
    resumed = L.Trainer(**kwargs, max_epochs=3, callbacks=checkpoint_callbacks(folder, minutes=0))
    resumed.fit(BoringModel(), ckpt_path=str(folder / "epoch=1-step=6.ckpt"))
    assert resumed.global_step == 9 and os.readlink(last) == "epoch=2-step=9.ckpt"
    # the state key is ModelCheckpoint's own, so older checkpoints resume their callback state
    key = RunCheckpoint(dirpath=str(folder)).state_key
    assert key == ModelCheckpoint(dirpath=str(folder)).state_key
    assert key in check_checkpoint(last)["callbacks"]


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


class _SaveLog(L.Callback):
    """The global steps at which a checkpoint was written."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.steps.append(checkpoint["global_step"])


@pytest.mark.parametrize(("seconds", "saved"), [(0.0, [1, 2, 3, 4]), (1e9, [1, 4])])
def test_epoch_checkpoints_are_spaced_and_training_ends_on_one(seconds, saved, tmp_path, tiny_trainer_kwargs):
    folder = tmp_path / "checkpoints"
    log = _SaveLog()
    kwargs = {**tiny_trainer_kwargs, "max_steps": -1, "limit_train_batches": 1, "enable_checkpointing": True}
    trainer = L.Trainer(**kwargs, max_epochs=4, callbacks=[*checkpoint_callbacks(folder, 0, seconds), log])
    trainer.fit(BoringModel())
    # one-step epochs: with spacing, the first epoch and the end of training only; the end is final
    assert log.steps == saved
    assert os.readlink(folder / "last.ckpt") == "epoch=3-step=4.ckpt"
    assert check_checkpoint(folder / "last.ckpt")["global_step"] == 4
