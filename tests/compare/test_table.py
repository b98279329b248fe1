"""``tdl_lightning.compare.table``: the columns, the caption and the bold best value."""

from __future__ import annotations

from pathlib import Path

from tdl_lightning.compare import Comparison, RunRecord
from tdl_lightning.compare.table import MAX_TABLE_KEYS, comparison_table


def _cells(table, header: str) -> list[str]:
    column = next(c for c in table.columns if c.header == header)
    return list(column.cells)


def test_best_values_are_bold_and_probes_have_no_best_column():
    a = RunRecord(Path("a"), "a", "s", {"lr": 0.1}, {"val/acc": 0.5, "val/loss": 0.2})
    b = RunRecord(Path("b"), "b", "s", {"lr": 0.2}, {"val/acc": 0.7, "val/loss": 0.4})
    probe = RunRecord(Path("c"), "c", "s", {"lr": 0.3}, {}, plugin_curves={"hessian/trace": [(0, 1.0)]})
    table = comparison_table(Comparison.of([a, b, probe], ["val/acc", "val/loss", "hessian/trace"]))
    assert [c.header for c in table.columns] == [
        "run",
        "lr",
        "val/acc",
        "best ↑",
        "val/loss",
        "best ↓",
        "hessian/trace",
    ]
    assert _cells(table, "val/acc") == ["0.5", "[bold]0.7[/bold]", "–"], "higher accuracy is better"
    assert _cells(table, "val/loss") == ["[bold]0.2[/bold]", "0.4", "–"], "lower loss is better"
    assert _cells(table, "hessian/trace") == ["–", "–", "1"], "a lone value is not bold"


def test_caption_says_when_configs_match_or_keys_are_left_out():
    same = [RunRecord(Path(i), i, "s", {"lr": 0.1}, {}) for i in "ab"]
    assert comparison_table(Comparison.of(same, [])).caption == "the runs' configs are the same"
    many = [
        RunRecord(Path(i), i, "s", {f"k{j}": j + n for j in range(MAX_TABLE_KEYS + 2)}, {})
        for n, i in enumerate("ab")
    ]
    table = comparison_table(Comparison.of(many, []))
    assert table.caption == "and 2 more differing config keys: see --json"
    assert len(table.columns) == 1 + MAX_TABLE_KEYS


def test_runs_of_several_experiments_are_named_with_their_experiment():
    runs = [RunRecord(Path("a"), "a", "lenet", {}, {}), RunRecord(Path("b"), "b", "mlp", {}, {})]
    table = comparison_table(Comparison.of(runs, []))
    assert table.title == "2 run(s) of lenet, mlp"
    assert _cells(table, "run") == ["lenet/a", "mlp/b"]
