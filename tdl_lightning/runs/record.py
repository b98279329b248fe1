"""A finished run as the tools read it: its config, final metrics and curves, in memory.

:func:`tdl_lightning.runs.reading.load_run` fills a :class:`RunRecord` from a run directory;
``tdl compare`` and the figure scripts in ``experiments/`` work on records, never on files.

Example:
    >>> run = RunRecord(Path("runs/demo/1"), "1", "demo", {}, {}, curves={"val/acc": [(1, 0.5), (2, 0.7)]})
    >>> run.value("val/acc", "best")
    0.7
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Curve", "RunRecord", "higher_is_better", "is_number", "to_step"]

Curve = list[tuple[int, float]]
_HIGHER_IS_BETTER = ("acc", "accuracy", "f1", "auc", "auroc", "precision", "recall", "r2", "iou", "psnr")


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (a bool is not a number here).

    Example:
        >>> is_number(3), is_number(0.5), is_number(True), is_number("1")
        (True, True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_step(text: Any) -> int:
    """A logged step (``"12"``, ``12.0``) as an int; ``-1`` where there is none.

    Example:
        >>> to_step("12.0"), to_step(None)
        (12, -1)
    """
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return -1


def higher_is_better(metric: str) -> bool:
    """Whether larger is better for ``metric``: accuracy-like names (acc, f1, auc, r2, ...) yes, else no.

    Example:
        >>> higher_is_better("val/acc"), higher_is_better("val/loss"), higher_is_better("hessian/lambda_max")
        (True, False, False)
    """
    last = metric.rsplit("/", 1)[-1].lower()
    words = set(re.split(r"[^a-z0-9]+", last))
    return any(word in words for word in _HIGHER_IS_BETTER)


@dataclass
class RunRecord:
    """Everything ``tdl compare`` reads from one run directory.

    Attributes:
        path: the run directory.
        run_id: the run's id (its folder name; the W&B run id).
        experiment: the experiment (W&B group).
        config: the resolved config, flattened to dotted keys with ``init_args`` dropped.
        final: last value of every metric in ``summary.json`` and of every plugin scalar.
        curves: ``metric -> [(step, value), ...]`` from ``metrics.csv`` (or the W&B history).
        plugin_curves: ``<plugin>/<scalar> -> [(step, value), ...]`` from ``plugins/*/history.json``.
        sources: where the config and the curves came from (``config.yaml``/``metrics.csv``/``wandb``).

    Example:
        >>> run = RunRecord(Path("runs/demo/1"), "1", "demo", {"lr": 0.1}, {"val/loss": 0.5},
        ...                 curves={"val/loss": [(10, 0.9), (20, 0.4), (30, 0.5)]})
        >>> run.value("val/loss", "final"), run.value("val/loss", "best")
        (0.5, 0.4)
    """

    path: Path
    run_id: str
    experiment: str
    config: dict[str, Any]
    final: dict[str, float]
    curves: dict[str, Curve] = field(default_factory=dict)
    plugin_curves: dict[str, Curve] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def curve(self, metric: str) -> Curve:
        """The logged values of ``metric``: its own column, else its ``_epoch``, else its ``_step`` one.

        Example:
            >>> RunRecord(Path("r"), "r", "e", {}, {}, curves={"train/loss_epoch": [(5, 1.0)]}).curve(
            ...     "train/loss")
            [(5, 1.0)]
        """
        for key in (metric, f"{metric}_epoch", f"{metric}_step"):
            if key in self.curves:
                return self.curves[key]
            if key in self.plugin_curves:
                return self.plugin_curves[key]
        return []

    def value(self, metric: str, which: str = "final") -> float | None:
        """The ``final`` or ``best`` value of ``metric`` (``None`` where the run has none).

        ``best`` is the maximum for accuracy-like metrics and the minimum for the others
        (see :func:`higher_is_better`), over every logged value.

        Example:
            >>> RunRecord(Path("r"), "r", "e", {}, {"val/acc": 0.8}).value("val/acc")
            0.8
        """
        curve = self.curve(metric)
        if which == "final":
            if metric in self.final:
                return self.final[metric]
            return curve[-1][1] if curve else None
        if which != "best":
            raise ValueError(f"which must be 'final' or 'best', got {which!r}")
        if metric in self.plugin_curves:
            return None  # a probe, not an objective: no better or worse
        values = [v for _, v in curve if not math.isnan(v)]
        if metric in self.final and not math.isnan(self.final[metric]):
            values.append(self.final[metric])
        if not values:
            return None
        return max(values) if higher_is_better(metric) else min(values)
