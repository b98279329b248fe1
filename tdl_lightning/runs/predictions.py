"""``tdl predict`` keeps what it predicts: ``predictions.pt`` in the run directory.

:class:`RunPredictions` is a Lightning ``BasePredictionWriter`` that gathers the model's outputs on
the predict split, batch by batch, and writes them once the split is done, as one file that
``torch.load(..., weights_only=True)`` reads back: ``{"predictions": ..., "indices": ...}``. Tensor
outputs (a classifier's predicted classes) are concatenated along the batch, in the order of the data set;
other outputs (a tuple per batch) stay a list of the batches' outputs. ``indices`` are the data
set positions of the rows. Under DDP every rank writes its own share,
``predictions_rank<r>.pt``, whose ``indices`` say where its rows belong (``None`` for a loader that
does not say, as tdl's ``on_device`` loader). Several predict dataloaders give a list of each.

Example:
    >>> import tempfile
    >>> RunPredictions(tempfile.mkdtemp()).path.name
    'predictions.pt'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from typing_extensions import override

__all__ = ["PREDICTIONS", "RunPredictions", "predictions_written"]

PREDICTIONS = "predictions.pt"


class RunPredictions(BasePredictionWriter):
    """Writes the outputs of ``predict_step`` on the predict split to ``<run_dir>/predictions.pt``.

    Args:
        run_dir: the run directory; the file is ``predictions.pt`` there (``predictions_rank<r>.pt``
            for rank ``r`` of several processes).

    Example:
        >>> import tempfile
        >>> RunPredictions(tempfile.mkdtemp()).interval.on_batch
        True
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / PREDICTIONS  # this process's file
        self._batches: dict[int, list[tuple[Any, Sequence[int] | None]]] = {}  # by dataloader

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            self.path = self.run_dir / f"predictions_rank{trainer.global_rank}.pt"
        self._batches = {}

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        output = apply_to_collection(prediction, Tensor, lambda t: t.detach().cpu())
        self._batches.setdefault(dataloader_idx, []).append((output, batch_indices))

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered = [_gathered(self._batches[i], trainer.world_size) for i in sorted(self._batches)]
        # one dataloader (every tdl data module): its rows; several: a list of them, one per dataloader
        content = (
            {"predictions": gathered[0][0], "indices": gathered[0][1]}
            if len(gathered) == 1
            else {"predictions": [p for p, _ in gathered], "indices": [i for _, i in gathered]}
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        torch.save(content, partial)
        os.replace(partial, self.path)
        self._batches = {}


def predictions_written(run_dir: str | Path) -> dict[str, Any] | None:
    """What ``tdl predict`` wrote into ``run_dir``: ``{"path": file or pattern, "rows": n}`` (``None``:
    nothing). Read from the files, so it holds for processes that were spawned, too.

    Example:
        >>> import tempfile
        >>> predictions_written(tempfile.mkdtemp()) is None
        True
    """
    run_dir = Path(run_dir)
    files = [run_dir / PREDICTIONS] if (run_dir / PREDICTIONS).is_file() else []
    files = files or sorted(run_dir.glob("predictions_rank*.pt"))
    if not files:
        return None
    rows = 0
    for file in files:
        written = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        loaders = written["predictions"] if isinstance(written["indices"], list) else [written["predictions"]]
        rows += sum(_rows(predictions) for predictions in loaders)
    path = files[0] if len(files) == 1 else run_dir / "predictions_rank*.pt"
    return {"path": str(path), "rows": rows}


def _gathered(batches: list[tuple[Any, Sequence[int] | None]], world_size: int) -> tuple[Any, Tensor | None]:
    """One dataloader's outputs (concatenated if every one is a batch of tensor rows) and the data
    set positions of their rows; where the loader does not say (tdl's on-device loader), its order
    on one process, and ``None`` on several (each serves its own share)."""
    outputs: Any = [output for output, _ in batches]
    if outputs and all(isinstance(out, Tensor) and out.ndim > 0 for out in outputs):
        outputs = torch.cat(outputs)
    if all(indices is not None for _, indices in batches):
        return outputs, torch.tensor([i for _, indices in batches for i in indices or ()], dtype=torch.long)
    return outputs, torch.arange(_rows(outputs)) if world_size == 1 else None


def _rows(predictions: Any) -> int:
    """The rows of a dataloader's predictions: a tensor's length, else the sum over its batches."""
    if isinstance(predictions, Tensor):
        return len(predictions)
    return sum(_batch_rows(output) for output in predictions)


def _batch_rows(output: Any) -> int:
    """The rows of one batch's output: its (first) tensor's length; 1 for a scalar or no tensor."""
    if isinstance(output, Tensor):
        return len(output) if output.ndim > 0 else 1
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)) and output:
        return _batch_rows(output[0])
    return 1
