"""Tasks: the one objective, metrics, and shape errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdl_lightning.data import TeacherStudent
from tdl_lightning.errors import ConfigError
from tdl_lightning.models import DeepMLP
from tdl_lightning.tasks import Classifier, Regressor


def test_classifier_loss_is_cross_entropy():
    task = Classifier(nn.Linear(5, 3), num_classes=3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    assert torch.allclose(task.loss((x, y)), F.cross_entropy(task(x), y))


def test_classifier_rejects_wrong_logit_shape():
    task = Classifier(nn.Linear(5, 4), num_classes=10)
    with pytest.raises(ConfigError, match="make the model's output size equal num_classes"):
        task.loss((torch.randn(2, 5), torch.zeros(2, dtype=torch.long)))


def test_regressor_matches_mse_and_accepts_flat_targets():
    task = Regressor(nn.Linear(3, 1))
    x, y = torch.randn(6, 3), torch.randn(6)
    assert torch.allclose(task.loss((x, y)), F.mse_loss(task(x).squeeze(1), y))
    with pytest.raises(ConfigError, match="target dimension"):
        task.loss((x, torch.randn(6, 2)))


def test_training_reduces_the_loss_and_logs_accuracy(tmp_path):
    data = TeacherStudent(num_samples=512, input_dim=10, task="classification", num_classes=2, batch_size=64)
    task = Classifier(DeepMLP(input_dim=10, width=64, depth=2, output_dim=2), num_classes=2)
    data.setup()
    batch = data.splits["val"]
    before = task.loss(batch).item()
    trainer = L.Trainer(
        max_epochs=5,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        enable_model_summary=False,
    )
    trainer.fit(task, data)
    assert task.loss(batch).item() < 0.7 * before
    assert trainer.callback_metrics["val/acc"] > 0.8
    assert set(trainer.callback_metrics) >= {"train/loss", "train/acc", "val/loss", "val/acc"}
