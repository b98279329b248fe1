"""The table ``tdl compare`` prints: one row per run, its differing config values, final/best metrics.

Example:
    >>> from pathlib import Path
    >>> from tdl_lightning.compare.comparison import Comparison
    >>> a = RunRecord(Path("a"), "a", "s", {"lr": 0.1}, {"val/acc": 0.5})
    >>> b = RunRecord(Path("b"), "b", "s", {"lr": 0.2}, {"val/acc": 0.7})
    >>> [column.header for column in comparison_table(Comparison.of([a, b], ["val/acc"])).columns]
    ['run', 'lr', 'val/acc', 'best ↑']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tdl_lightning.compare.values import display_value, short_names
from tdl_lightning.runs.record import RunRecord, higher_is_better

if TYPE_CHECKING:
    from tdl_lightning.compare.comparison import Comparison

__all__ = ["comparison_table"]

MAX_TABLE_KEYS = 12  # config columns shown; the others are named in the caption (all are in --json)


def comparison_table(comparison: Comparison) -> Any:
    """A ``rich`` table of ``comparison``; the best value of each metric column is shown in bold.

    A ``best`` column follows a metric's ``final`` one where some run has a best value (plugin
    probes have none: they are not objectives).

    Example:
        >>> from pathlib import Path
        >>> from tdl_lightning.compare.comparison import Comparison
        >>> a = RunRecord(Path("a"), "a", "s", {"lr": 0.1}, {"val/acc": 0.5})
        >>> comparison_table(Comparison.of([a], ["val/acc"])).row_count
        1
    """
    from rich.table import Table

    runs = comparison.runs
    keys = list(comparison.config_differences)
    shown = keys[:MAX_TABLE_KEYS]
    short = short_names(keys)
    experiments = {run.experiment for run in runs}
    title = f"{len(runs)} run(s) of {', '.join(sorted(experiments))}"
    caption = None
    if not keys and len(runs) > 1:
        caption = "the runs' configs are the same"
    elif len(keys) > len(shown):
        caption = f"and {len(keys) - len(shown)} more differing config keys: see --json"
    table = Table(title=title, caption=caption)
    table.add_column("run", no_wrap=True)
    for key in shown:
        table.add_column(short[key], no_wrap=True)
    columns = [
        (m, w)
        for m in comparison.metrics
        for w in ("final", "best")
        if w == "final" or any(run.value(m, "best") is not None for run in runs)
    ]
    for metric, which in columns:
        arrow = "↑" if higher_is_better(metric) else "↓"
        header = f"best {arrow}" if which == "best" else metric
        table.add_column(header, justify="right", no_wrap=True)
    for i, run in enumerate(runs):
        row = [run.run_id if len(experiments) == 1 else f"{run.experiment}/{run.run_id}"]
        row += [display_value(comparison.config_differences[k][i]) for k in shown]
        row += [_cell(runs, metric, which, i) for metric, which in columns]
        table.add_row(*row)
    return table


def _cell(runs: list[RunRecord], metric: str, which: str, index: int) -> str:
    values = [run.value(metric, which) for run in runs]
    present = [v for v in values if v is not None]
    value = values[index]
    if value is None:
        return "–"
    text = f"{value:.4g}"
    best = (max if higher_is_better(metric) else min)(present)
    return f"[bold]{text}[/bold]" if len(present) > 1 and value == best else text
