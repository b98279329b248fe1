"""Test helpers shared by the plugin tests: the quiet CPU Trainer's arguments, and a fit to compare.

``fit_and_collect`` trains a fresh task for a few steps and returns its final weights; fitting
once with a plugin attached and once without, from the same seed, proves that the plugin left
training exactly as it found it (weights, gradients, RNG, BatchNorm statistics, data order).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch


def quiet_trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Trainer arguments for fast CPU tests: one CPU device, 4 steps, one validation batch, no logger,
    checkpoints, progress bar or model summary; ``overrides`` on top (``None`` restores a default).

    Example:
        >>> quiet_trainer_kwargs(max_steps=2, devices=2)["max_steps"], quiet_trainer_kwargs()["logger"]
        (2, False)
    """
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 4,
        "limit_val_batches": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "log_every_n_steps": 1,
        **overrides,
    }


def fit_and_collect(
    make_task: Callable[[], L.LightningModule],
    make_data: Callable[[], L.LightningDataModule],
    callbacks: list[L.Callback],
    seed: int = 0,
    **trainer_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Seed, build, fit and return ``{name: tensor}`` of all parameters and buffers."""
    L.seed_everything(seed, verbose=False)
    task, data = make_task(), make_data()
    trainer = L.Trainer(callbacks=callbacks, **quiet_trainer_kwargs(limit_val_batches=0, **trainer_kwargs))
    trainer.fit(task, data)
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Exact equality of two state dicts (bitwise: CPU training is deterministic)."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs: the plugin changed training"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a ``tdl`` run in a subprocess: this one, without ``WANDB_SERVICE``.

    W&B advertises this process's service there; a child that inherits it logs through it and
    may leave its run file unwritten when this process moves on (``ddp_spawn`` workers, in
    contrast, need it to attach to the parent's run, so it is not removed here globally).
    """
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(extra)
    return env
