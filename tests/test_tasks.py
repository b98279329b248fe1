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


class _LogsLossEveryStep(Classifier):
    """The training loss logged as a tensor at every step (what Task did before StepLossMean)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        outputs = self(x)
        loss = self.criterion(outputs, y)
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(x)
        )
        self.update_metrics("train", outputs, y)
        return loss


def test_train_loss_logged_at_cadence_matches_logging_every_step(tmp_path):
    # the step loss reaches self.log only where a logger, the bar or the epoch end reads it: the
    # metrics.csv rows, the bar's numbers at each redraw and the epoch's mean (an uneven last batch
    # included) must equal those of logging the tensor at every step
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    def run(cls: type[Classifier], name: str) -> tuple[str, list[dict[str, float]], dict[str, float]]:
        L.seed_everything(0, verbose=False)
        data = TeacherStudent(
            num_samples=300, input_dim=6, task="classification", num_classes=3, batch_size=32
        )
        task = cls(nn.Linear(6, 3), num_classes=3)
        bars: list[dict[str, float]] = []

        class Bar(TQDMProgressBar):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
                if (batch_idx + 1) % self.refresh_rate == 0 or trainer.is_last_batch:
                    bars.append(
                        {k: float(v) for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
                    )

        trainer = L.Trainer(
            max_epochs=3,
            logger=CSVLogger(str(tmp_path), name=name, version=0),
            log_every_n_steps=4,
            callbacks=[Bar(refresh_rate=3)],
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )
        trainer.fit(task, data)
        csv = (tmp_path / name / "version_0" / "metrics.csv").read_text()
        return csv, bars, {k: float(v) for k, v in trainer.callback_metrics.items()}

    csv, bars, final = run(Classifier, "cadence")
    csv_every, bars_every, final_every = run(_LogsLossEveryStep, "every_step")
    assert "train/loss_step" in csv.splitlines()[0] and "train/loss_epoch" in csv.splitlines()[0]
    assert csv == csv_every
    assert len(bars) == 9 and bars == bars_every  # after batches 3, 6 and the last of each epoch
    assert final == final_every and {"train/loss", "train/loss_step", "train/loss_epoch"} <= set(final)
