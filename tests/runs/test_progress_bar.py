"""``RunProgressBar`` (``tdl_lightning.runs.quiet``): Lightning's bar, each update drawn once."""

from __future__ import annotations

import io
import re
import sys

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from tdl_lightning.runs.quiet import RunProgressBar


class _Writes(io.TextIOBase):
    """A stdout that keeps every ``write`` (what W&B's console capture sends on, one record each)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


def _screen_lines(writes: list[str]) -> list[str]:
    """What each output line ends as after carriage returns, timings blanked, repeats dropped."""
    lines = [part.split("\r")[-1].strip() for part in "".join(writes).split("\n")]
    lines = [re.sub(r"\d+(\.\d+)?(it/s|s/it)|\d\d:\d\d|\?it/s", "T", line) for line in lines]
    return [line for i, line in enumerate(lines) if line and (i == 0 or line != lines[i - 1])]


class _LoggingModel(BoringModel):
    """BoringModel with its loss on the bar: each redraw shows the step's value."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"], prog_bar=True)
        return out


def _fit_writes(bar: TQDMProgressBar, monkeypatch, tiny_trainer_kwargs) -> list[str]:
    out = _Writes()
    monkeypatch.setattr(sys, "stdout", out)
    kwargs = {**tiny_trainer_kwargs, "enable_progress_bar": True, "max_steps": -1, "limit_val_batches": 2}
    trainer = L.Trainer(
        **kwargs, max_epochs=2, limit_train_batches=5, num_sanity_val_steps=0, callbacks=[bar]
    )
    L.seed_everything(0, verbose=False)  # both bars show the same numbers
    trainer.fit(_LoggingModel())
    return out.writes


def test_each_update_is_written_once_and_the_bar_ends_on_the_same_lines(monkeypatch, tiny_trainer_kwargs):
    lightning = _fit_writes(TQDMProgressBar(refresh_rate=2), monkeypatch, tiny_trainer_kwargs)
    ours = _fit_writes(RunProgressBar(refresh_rate=2, min_seconds=0), monkeypatch, tiny_trainer_kwargs)
    assert _screen_lines(ours) == _screen_lines(lightning)
    assert any(
        "Epoch 1: 100%" in line and "5/5" in line and "train_loss=" in line for line in _screen_lines(ours)
    )
    # per epoch: the start, 2 redraws and the last batch, and the validation's reset, each one write
    # instead of two
    assert len(lightning) - len(ours) >= 2 * (1 + 3 + 1)
