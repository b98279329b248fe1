"""``summary.json`` and the report ``tdl`` prints at the end of a run: finished, interrupted or failed.

Example:
    >>> print(report_lines({"subcommand": "fit", "experiment": "x", "run_id": "r", "run_dir": "runs/x/r",
    ...                     "status": "finished", "metrics": {"val/acc": 0.5}}))
    tdl: fit finished: experiment x, run r
      run directory : runs/x/r
      final metrics :
        val/acc                  0.5000
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tdl_lightning.runs.directory import Run, figure_folders
from tdl_lightning.runs.loggers import find_wandb_logger
from tdl_lightning.runs.predictions import predictions_written
from tdl_lightning.runs.resume import latest_checkpoint

__all__ = ["report_lines", "run_summary"]


def run_summary(
    trainer: L.Trainer, run: Run, subcommand: str | None, status: str = "finished"
) -> dict[str, Any]:
    """The summary of a run: id, status, where it went (its figures' folders too), final metrics,
    checkpoint (a fit's best as ``best_checkpoint``; for ``validate``, ``test`` and ``predict`` the
    one evaluated, as ``checkpoint``), the file of ``predict``'s outputs (``predictions``) and W&B run.

    Every rank must call it under DDP (reading ``callback_metrics`` and ``log_dir`` can reduce).
    """
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    log_dir = str(Path(trainer.log_dir or run.dir))
    # "x_step"/"x_epoch" are Lightning's copies of "x": report "x" (the epoch value) once
    metrics = {
        k: v
        for k, v in logged.items()
        if not (k.endswith(("_step", "_epoch")) and k.rsplit("_", 1)[0] in logged)
    }
    summary: dict[str, Any] = {
        "run_id": run.id,
        "experiment": run.experiment,
        "subcommand": subcommand,
        "status": status,
        "run_dir": log_dir,
        "metrics": metrics,
    }
    summary["global_step"], summary["epochs"] = _fit_progress(trainer, run.dir, subcommand)
    figures = figure_folders(Path(log_dir))
    if figures:
        summary["figures"] = figures
    if status != "finished":
        summary["resume"] = shlex.join(["tdl", "fit", "--resume", str(run.dir)])
    if subcommand in ("validate", "test", "predict"):
        # the weights evaluated; a checkpoint callback restored from them holds its fit's best
        evaluated = getattr(trainer, "ckpt_path", None)
        if evaluated:
            summary["checkpoint"] = str(evaluated)
        written = predictions_written(log_dir) if subcommand == "predict" else None
        if written is not None:
            summary["predictions"] = written
    else:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            summary["best_checkpoint"] = best
    wandb_logger = find_wandb_logger(trainer.loggers)
    if wandb_logger is not None and trainer.is_global_zero:
        experiment = wandb_logger.experiment
        summary["wandb"] = {
            "name": experiment.name,
            "id": experiment.id,
            "mode": run.wandb_mode.mode if run.wandb_mode else "offline",
            "dir": str(Path(experiment.dir).parent) if experiment.dir else None,
        }
    return summary


def _fit_progress(trainer: L.Trainer, run_dir: Path, subcommand: str | None) -> tuple[int, int]:
    """``(global_step, epochs)`` of the run: the trainer's; for a fit whose ranks were spawned
    (``ddp_spawn``), which keep their loops' progress to themselves, its newest checkpoint's."""
    step, epochs = trainer.global_step, trainer.current_epoch
    checkpoint = latest_checkpoint(run_dir) if subcommand == "fit" and step == 0 else None
    if checkpoint is None:
        return step, epochs
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        epochs_done = saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
        return int(saved["global_step"]), int(epochs_done)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError):  # not a fit's checkpoint
        return step, epochs


def report_lines(summary: dict[str, Any]) -> str:
    """The lines ``tdl`` prints for a summary; ``figures`` (folders in the run directory) is one line.

    Example:
        >>> print(report_lines({"subcommand": "fit", "experiment": "x", "run_id": "r", "status": "finished",
        ...                     "run_dir": "runs/x/r", "metrics": {},
        ...                     "figures": ["plugins/a/", "plugins/b/"]}))
        tdl: fit finished: experiment x, run r
          run directory : runs/x/r
          figures       : plugins/a/, plugins/b/ (in the run directory)
          final metrics :
    """
    lines = [
        f"tdl: {summary['subcommand']} {summary['status']}: "
        f"experiment {summary['experiment']}, run {summary['run_id']}",
        f"  run directory : {summary['run_dir']}",
    ]
    if summary.get("figures"):
        lines.append(f"  figures       : {', '.join(summary['figures'])} (in the run directory)")
    if "best_checkpoint" in summary:
        lines.append(f"  checkpoint    : {_shown(summary['best_checkpoint'])}")
    if "checkpoint" in summary:
        lines.append(f"  checkpoint    : {_shown(summary['checkpoint'])} (evaluated)")
    if "predictions" in summary:
        written = summary["predictions"]
        lines.append(f"  predictions   : {_shown(written['path'])} ({written['rows']} rows)")
    wandb_info = summary.get("wandb")
    if wandb_info:
        lines.append(f"  W&B run       : {wandb_info['name']} ({wandb_info['mode']})")
        lines.append(f"  W&B files     : {_shown(wandb_info['dir'])}")
        if wandb_info["mode"] in ("offline", "dryrun"):
            lines.append(f"  upload later  : wandb sync {_shown(wandb_info['dir'])}")
    if "resume" in summary:
        lines.append(f"  resume with   : {summary['resume']}")
    if not summary["metrics"] and summary["subcommand"] == "predict":
        return "\n".join(lines)  # predict logs no metrics
    lines.append("  final metrics :" if summary["status"] == "finished" else "  metrics so far:")
    for key, value in sorted(summary["metrics"].items()):
        lines.append(f"    {key:<24} {value:.4f}")
    return "\n".join(lines)


def _shown(path: str | None) -> str:
    """``path`` as the report shows it: relative to the working directory where it lies below it
    (``summary.json`` keeps it as written).

    Example:
        >>> _shown(str(Path.cwd() / "runs" / "x" / "last.ckpt")) == str(Path("runs", "x", "last.ckpt"))
        True
        >>> _shown("/elsewhere/last.ckpt")
        '/elsewhere/last.ckpt'
    """
    if not path:
        return str(path)
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
