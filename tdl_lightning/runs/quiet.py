"""Quiet output: the tdl report is the last thing a run prints; ``TDL_DEBUG=1`` shows everything.

What is hidden: Lightning's "Tip: ... litlogger / litmodels" adverts, warnings the project knows to
be harmless here (torch's ``_pytree`` deprecation inside Lightning, W&B's ``anonymous`` setting,
the non-empty checkpoint folder of a resumed run, the ``weights_only`` note of a run's own
checkpoints, the note that a run resumed mid-epoch repeats that epoch's data order (docs/runs.md
says so), LightningCLI's note on the arguments ``tdl fit --resume`` passes it, the note that a checkpoint of
another run came from another folder, and for evaluations the note on the callbacks that made the
checkpoint), W&B's banner lines
(offline mode, where its files are, ``wandb leet``: the report at the end says where the run went)
and the history and summary W&B prints when a run ends. :class:`RunModelSummary` is Lightning's
model summary without the FLOPs column, which is all zeros unless the model has an
``example_input_array``; :class:`RunProgressBar` is Lightning's TQDM bar redrawn by step count and
at most a few times a second.

Example:
    >>> quiet_output(environ={"TDL_DEBUG": "1"})
    False
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.model_summary.model_summary import (
    _format_summary_table,
    get_formatted_model_size,
    get_human_readable_count,
)
from typing_extensions import override

__all__ = ["RunModelSummary", "hide_wandb_banner", "quiet_output"]

_HIDDEN_LOGS = ("💡 Tip:", "`weights_only` was not set", "Trainer already configured with model summary")
_HIDDEN_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r".*Checkpoint directory .* exists and is not empty",
    r".*The anonymous setting has no effect",
    r".*resuming from a checkpoint that ended before the epoch ended",
    r".*LightningCLI's args parameter is intended to run from within Python",
    r".*The dirpath has changed from",  # a checkpoint of another run: this run's checkpoints are its own
)
# an evaluation needs the weights alone, not the state of the callbacks that trained them
_HIDDEN_EVALUATION_WARNINGS = (r".*callbacks used to create the checkpoint need to be provided",)


class _HideKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(_HIDDEN_LOGS)


def quiet_output(environ: Mapping[str, str] | None = None, subcommand: str | None = None) -> bool:
    """Hide the known noise of Lightning and W&B (not under ``TDL_DEBUG``); return whether it did.

    ``subcommand`` ``validate``, ``test`` or ``predict`` also hides Lightning's note that the callbacks
    which made the checkpoint are not there (``fit`` keeps it: their state would be lost)."""
    environ = os.environ if environ is None else environ
    if environ.get("TDL_DEBUG"):
        return False
    evaluation = _HIDDEN_EVALUATION_WARNINGS if subcommand in ("validate", "test", "predict") else ()
    for message in (*_HIDDEN_WARNINGS, *evaluation):
        warnings.filterwarnings("ignore", message=message)
    noise = _HideKnownNoise()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.addFilter(noise)
        for handler in logger.handlers:
            handler.addFilter(noise)
    os.environ.setdefault("WANDB_QUIET", "true")  # no history/summary lines after the report
    return True


def hide_wandb_banner(mode: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether W&B starts silent: in offline mode, unless ``TDL_DEBUG`` is set.

    Offline, W&B's banner says only what the report at the end says better ("syncing is set to
    `offline`", "Run data is saved locally in ...", "View this run in the terminal with `wandb
    leet`"). Online its lines give the run's URL, and stay.

    Example:
        >>> hide_wandb_banner("offline", environ={}), hide_wandb_banner("online", environ={})
        (True, False)
    """
    environ = os.environ if environ is None else environ
    return mode in ("offline", "dryrun") and not environ.get("TDL_DEBUG")


class RunModelSummary(ModelSummary):
    """Lightning's model summary (a rich table where ``rich`` is installed), without FLOPs that are zero.

    Lightning counts FLOPs only through the model's ``example_input_array``; without one its
    summary has a FLOPs column of zeros and a "Total FLOPs: 0" line. Those are left out; with
    an example input the summary is Lightning's own.

    Example:
        >>> RunModelSummary(max_depth=2)._max_depth
        2
    """

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        table = RichModelSummary if _RICH_AVAILABLE else ModelSummary
        args = (total_parameters, trainable_parameters, model_size, total_training_modes)
        if total_flops:
            table.summarize(summary_data, *args, total_flops, **summarize_kwargs)
            return
        columns = [(name, cells) for name, cells in summary_data if name != "FLOPs"]
        if not _RICH_AVAILABLE:
            text = _format_summary_table(*args, 0, *columns)
            logging.getLogger(ModelSummary.__module__).info("\n" + text.rsplit("\n", 1)[0])
            return
        _rich_summary(columns, *args, **summarize_kwargs)


def _rich_summary(
    columns: list[tuple[str, list[str]]],
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    **summarize_kwargs: Any,
) -> None:
    """RichModelSummary's table and totals, for the columns given (no FLOPs)."""
    from rich import get_console
    from rich.table import Table

    console = get_console()
    table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
    for name, _ in columns:
        right = name in ("Params", "Params per Device", "In sizes", "Out sizes")
        style = "dim" if name == " " else "white" if name in ("In sizes", "Out sizes") else None
        table.add_column(name, justify="right" if right else "left", style=style, no_wrap=name == "Name")
    for row in zip(*(cells for _, cells in columns), strict=True):
        table.add_row(*row)
    console.print(table)
    grid = Table.grid(expand=True)
    grid.add_column()
    totals = {
        "Trainable params": get_human_readable_count(int(trainable_parameters)),
        "Non-trainable params": get_human_readable_count(int(total_parameters - trainable_parameters)),
        "Total params": get_human_readable_count(int(total_parameters)),
        "Total estimated model params size (MB)": get_formatted_model_size(model_size),
        "Modules in train mode": total_training_modes["train"],
        "Modules in eval mode": total_training_modes["eval"],
    }
    for name, value in totals.items():
        grid.add_row(f"[bold]{name}[/]: {value}")
    console.print(grid)


class RunProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar, redrawn every ``refresh_rate`` steps but at most once every
    ``min_seconds`` (the last batch of each epoch is always drawn, so the bar ends on its numbers),
    each update written once.

    Each redraw reads the bar's metrics back from the device, formats the bar and writes it, and
    W&B's console capture copies every write into the run's log: at one redraw per 10 steps that
    was about 0.2 s of a 1.5 s LeNet-5 epoch on MNIST5k on the CPU (measured with the bar on and
    off). Drawn at most twice a second, the bar still moves as it did to the eye. Lightning's bar
    also draws each update twice (the new count, then the same line with the new metrics; at an
    epoch's or a validation's start the reset bar, then its new name): here the count, the
    metrics or the name are set first and the bar is drawn once, with the same final line. That
    halves the lines W&B's console capture sends to its service (about 30 a LeNet-5 epoch before,
    16 after), each of which cost about 1 ms of CPU between the training process and W&B's.

    Example:
        >>> bar = RunProgressBar(refresh_rate=10, min_seconds=0.5)
        >>> bar.refresh_rate, bar.min_seconds
        (10, 0.5)
    """

    def __init__(self, refresh_rate: int = 10, min_seconds: float = 0.5, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.min_seconds = min_seconds
        self._drawn_at = -float("inf")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        _reset_once(self.train_progress_bar, self.total_train_batches, f"Epoch {trainer.current_epoch}")

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar, n = self._train_progress_bar, batch_idx + 1
        if bar is not None and self._should_update(n, bar.total):
            if not bar.disable:
                bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # one redraw: the count and the metrics

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every rank reads the epoch's metrics, which reduces them across processes: Lightning's bar
        # reads them where it is drawn (rank zero alone), while the other ranks went on to the next
        # collective (a checkpoint's broadcast), and the processes waited for each other for ever
        metrics = self.get_metrics(trainer, pl_module)
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(metrics)

    @override
    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        name = f"{desc} DataLoader {dataloader_idx}"
        _reset_once(self.val_progress_bar, self.total_val_batches_current_dataloader, name)

    @override
    def _should_update(self, current: int, total: int) -> bool:
        # Lightning's test of a redraw (every refresh_rate batches, and the last), spaced in time
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current != total and now - self._drawn_at < self.min_seconds:
            return False
        self._drawn_at = now
        return True


def _reset_once(bar: Any, total: float, description: str) -> None:
    """What Lightning's bar does at an epoch's (a validation's) start, drawn once: ``reset``, a new
    ``total`` and a new name (Lightning draws the reset bar, then again with the name).

    Example:
        >>> from tqdm import tqdm
        >>> bar = tqdm(total=3, disable=True)
        >>> _reset_once(bar, float("inf"), "Epoch 1")
        >>> bar.n, bar.total, bar.desc
        (0, None, 'Epoch 1: ')
    """
    bar.total, bar.initial = convert_inf(total), 0
    bar.set_description(description, refresh=False)
    bar.reset()  # draws the bar (unless disabled), with its new total and name
