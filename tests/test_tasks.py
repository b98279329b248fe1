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


class _FrozenClassifier(Classifier):
    """A Classifier whose optimizer does not move it, so each epoch's accuracy is known in advance."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_epoch_accuracies_count_every_batch_of_the_epoch(tmp_path):
    # accuracy is updated per batch and logged once per epoch: the logged number must be the
    # accuracy over all samples of the split (batches of unequal size included), for each stage,
    # and the sanity check's two validation batches must not leak into the first epoch's
    torch.manual_seed(0)
    data = TeacherStudent(
        num_samples=300, input_dim=6, task="classification", num_classes=3, batch_size=64, eval_batch_size=8
    )
    data.setup()
    task = _FrozenClassifier(nn.Linear(6, 3), num_classes=3)
    epochs = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[Record()],
    )
    trainer.fit(task, data)
    after_fit = dict(trainer.callback_metrics)
    tested = trainer.test(task, data, verbose=False)[0]

    def accuracy(split: str) -> float:
        x, y = data.splits[split]
        return float((task(x).argmax(1) == y).float().mean())

    assert len(epochs) == 2 and epochs[0]["val/acc"] == pytest.approx(accuracy("val"), abs=1e-6)
    for logged in (epochs[-1], after_fit):  # seen by callbacks at the epoch's end, and after fit
        assert float(logged["train/acc"]) == pytest.approx(accuracy("train"), abs=1e-6)
    assert tested["test/acc"] == pytest.approx(accuracy("test"), abs=1e-6)
