"""Full-batch training: one batch per epoch holding every training example; evaluation unchanged."""

from __future__ import annotations

import lightning as L
import torch

from tdl_lightning.data import MNIST5k, OnDeviceLoader, TeacherStudent
from tdl_lightning.tasks import Regressor


def test_full_batch_is_one_batch_of_every_training_example():
    dm, plain = MNIST5k(full_batch=True, batch_size=64), MNIST5k(batch_size=64)
    dm.setup(), plain.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader, OnDeviceLoader) and len(loader) == 1
    for _epoch in range(2):
        (batch,) = list(loader)
        x, y = dm.splits["train"]
        assert len(batch[0]) == len(x) == 4000
        assert torch.equal(batch[0], x) and torch.equal(batch[1], y)  # all of them, in split order
    assert len(dm.val_dataloader()) == len(plain.val_dataloader()) == 2  # 500 images, batches of 256
    assert len(dm.test_dataloader()) == len(plain.test_dataloader())


def test_a_fit_takes_one_full_batch_per_epoch(tiny_trainer_kwargs):
    seen: list[int] = []

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(len(batch[0]))

    dm = TeacherStudent(num_samples=100, input_dim=4, full_batch=True, batch_size=8)
    kwargs = dict(tiny_trainer_kwargs, max_steps=-1, max_epochs=3)
    trainer = L.Trainer(callbacks=[Count()], **kwargs)
    trainer.fit(Regressor(torch.nn.Linear(4, 1)), dm)
    assert seen == [80, 80, 80] and trainer.global_step == 3
