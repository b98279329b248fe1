"""``RunPredictions``: what ``tdl predict`` writes, for tensor and other outputs and several dataloaders."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tdl_lightning.runs.predictions import RunPredictions, predictions_written

pytestmark = pytest.mark.usefixtures("one_thread")


class Doubler(L.LightningModule):
    def __init__(self, pairs: bool = False) -> None:
        super().__init__()
        self.pairs = pairs
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        doubled = self.weight * batch[0]
        return (doubled, batch[0].sum(1)) if self.pairs else doubled


def _predict(tmp_path, module, loaders):
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RunPredictions(tmp_path)],
    )  # fmt: skip
    returned = trainer.predict(module, dataloaders=loaders)
    return torch.load(tmp_path / "predictions.pt", weights_only=True), returned


def test_tensor_rows_are_concatenated_in_the_order_of_the_data_set(tmp_path):
    x = torch.arange(21.0).reshape(7, 3)
    written, returned = _predict(tmp_path, Doubler(), DataLoader(TensorDataset(x), batch_size=3))
    assert torch.equal(written["predictions"], 2 * x) and torch.equal(written["indices"], torch.arange(7))
    assert torch.equal(written["predictions"], torch.cat(returned))  # what Lightning returns, kept
    assert predictions_written(tmp_path) == {"path": str(tmp_path / "predictions.pt"), "rows": 7}


def test_other_outputs_stay_a_list_of_batches_and_several_loaders_a_list_of_each(tmp_path):
    x = torch.arange(12.0).reshape(4, 3)
    written, _ = _predict(tmp_path, Doubler(pairs=True), DataLoader(TensorDataset(x), batch_size=3))
    (first, sums), (second, _) = written["predictions"]
    assert torch.equal(torch.cat([first, second]), 2 * x) and torch.equal(sums, x[:3].sum(1))
    assert predictions_written(tmp_path)["rows"] == 4
    loaders = [DataLoader(TensorDataset(x), batch_size=2), DataLoader(TensorDataset(x[:1]), batch_size=2)]
    written, _ = _predict(tmp_path, Doubler(), loaders)
    assert [p.shape[0] for p in written["predictions"]] == [4, 1]
    assert [i.tolist() for i in written["indices"]] == [[0, 1, 2, 3], [0]]
    assert predictions_written(tmp_path)["rows"] == 5
