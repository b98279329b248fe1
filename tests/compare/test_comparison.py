"""``tdl_lightning.compare.comparison``: config differences, the metrics chosen, the run order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdl_lightning.compare import Comparison, RunRecord, compare_runs
from tdl_lightning.compare.comparison import choose_metrics
from tdl_lightning.errors import ConfigError
from tests.sweep_runs import SIGMA, csv_column, run_dirs, summary


def test_config_differences_and_metrics_come_from_the_run_files(runs):
    comparison = compare_runs([runs])  # a folder of runs expands to its runs
    dirs = run_dirs(runs)
    assert sorted(r.path for r in comparison.runs) == dirs
    assert not comparison.problems
    sigmas = [r.config[SIGMA] for r in comparison.runs]
    assert sigmas == [0.5, 2.0], "runs are ordered by the config values that differ"
    assert comparison.config_differences == {SIGMA: sigmas}, "only the swept key differs"
    assert comparison.metrics[:2] == ["val/acc", "val/loss"]
    assert "train/loss_step" not in comparison.metrics, (
        "a _step twin of train/loss is not a metric of its own"
    )
    for run in comparison.runs:
        path = run.path
        metrics = summary(path)["metrics"]
        assert run.run_id == path.name and run.experiment == "tiny_sweep"
        assert run.value("val/acc", "final") == metrics["val/acc"]
        assert run.value("val/loss", "best") == min(csv_column(path, "val/loss"))
        assert run.value("val/acc", "best") == max(csv_column(path, "val/acc"))
        assert run.sources == {"config": "config.yaml", "curves": "metrics.csv"}
    assert comparison.labels() == [f"sigma_w={s}" for s in sigmas]


def test_an_unknown_metric_names_the_ones_there_are(runs):
    with pytest.raises(ConfigError, match="'val/accuracy' is in none of the runs.*val/acc"):
        compare_runs([runs], metrics=["val/accuracy"])


def test_runs_keep_the_order_given_when_asked(runs):
    dirs = list(reversed(run_dirs(runs)))
    comparison = compare_runs(dirs, sort_by_config=False)
    assert [r.path for r in comparison.runs] == dirs


def _record(run_id: str, config: dict, final: dict | None = None) -> RunRecord:
    return RunRecord(Path(run_id), run_id, "e", config, final or {})


def test_equal_runs_sort_by_id_and_get_their_id_as_label():
    runs = [_record("b", {"lr": 0.1}), _record("a", {"lr": 0.1})]
    comparison = Comparison.of(runs, []).sorted_by_config()
    assert comparison.config_differences == {}
    assert [r.run_id for r in comparison.runs] == ["a", "b"]
    assert comparison.labels() == ["a", "b"]


def test_how_a_run_was_started_is_no_difference_but_another_runs_checkpoint_is():
    # a resumed run's config names its own last.ckpt and how it was loaded (weights_only)
    fresh = _record("a", {"lr": 0.1, "ckpt_path": None, "weights_only": None})
    resumed = _record("b", {"lr": 0.1, "ckpt_path": "runs/e/b/checkpoints/last.ckpt", "weights_only": True})
    assert Comparison.of([fresh, resumed], []).config_differences == {}
    tuned = _record("c", {"lr": 0.1, "ckpt_path": "runs/e/a/checkpoints/last.ckpt", "weights_only": True})
    assert list(Comparison.of([fresh, tuned], []).config_differences) == ["ckpt_path"]


def test_nested_values_compare_by_content_and_numbers_sort_by_value():
    runs = [
        _record("a", {"depth": 16, "tags": {"x": 1, "y": 2}}),
        _record("b", {"depth": 4, "tags": {"y": 2, "x": 1}}),
        _record("c", {"depth": 8, "tags": {"x": 1, "y": 2}}),
    ]
    comparison = Comparison.of(runs, []).sorted_by_config()
    assert list(comparison.config_differences) == ["depth"], "dicts equal in another key order do not differ"
    assert [r.run_id for r in comparison.runs] == ["b", "c", "a"], "4 < 8 < 16, not '16' < '4'"


def test_labels_that_clash_carry_the_run_id():
    runs = [_record(i, {"a": 1, "b": 1, "c": 1, "d": j}) for i, j in (("r1", 1), ("r2", 2))]
    runs[1].config.update(a=2, b=2, c=2)
    runs.append(_record("r3", {"a": 1, "b": 1, "c": 1, "d": 3}))
    labels = Comparison.of(runs, []).labels()  # only the first three differing keys are shown
    assert labels == ["a=1 b=1 c=1 (r1)", "a=2 b=2 c=2 (r2)", "a=1 b=1 c=1 (r3)"]


def test_default_metrics_leave_out_plugin_scalars_and_order_val_test_train():
    run = RunRecord(
        Path("r"),
        "r",
        "e",
        {},
        {"train/loss": 1.0, "test/acc": 0.8, "val/acc": 0.9, "lr": 0.1, "hessian/trace": 2.0},
        plugin_curves={"hessian/trace": [(0, 2.0)]},
    )
    assert choose_metrics([run], None) == ["val/acc", "test/acc", "train/loss", "lr"]
    assert choose_metrics([run], ["hessian/*", "val/acc", "hessian/trace"]) == ["hessian/trace", "val/acc"]
    assert choose_metrics([], ["val/acc"]) == ["val/acc"], "with no run to check, the names are kept"


def test_json_dict_holds_final_best_and_plugin_values():
    run = RunRecord(
        Path("r"),
        "r",
        "e",
        {"lr": 0.1},
        {"val/loss": 0.5},
        curves={"val/loss": [(1, 0.9), (2, 0.3), (3, 0.5)]},
        plugin_curves={"hessian/trace": [(1, 4.0), (3, 2.0)]},
    )
    other = _record("s", {"lr": 0.2}, {"val/loss": 0.6})
    data = Comparison.of([run, other], ["val/loss"]).to_dict()
    assert data["config_differences"] == {"lr": [0.1, 0.2]}
    first = data["runs"][0]
    assert first["final"] == {"val/loss": 0.5} and first["best"] == {"val/loss": 0.3}
    assert first["plugins"] == {"hessian/trace": 2.0}
    assert data["problems"] == []


def _callback(name: str, **init_args) -> dict:
    return {"class_path": f"plugins.{name}", "init_args": {"every_n_epochs": None, "k": 1, **init_args}}


def test_listed_classes_differ_by_name_and_by_the_arguments_that_differ():
    runs = [
        _record("with", {"trainer.callbacks": [_callback("HessianEigenvalues")], "run.id": "with"}),
        _record("without", {"lr": 0.1}),
        _record("dense", {"trainer.callbacks": [_callback("HessianEigenvalues", every_n_epochs=2)]}),
        _record(
            "two", {"trainer.callbacks": [_callback("HessianEigenvalues"), _callback("HessianEigenvalues")]}
        ),
    ]
    differences = Comparison.of(runs, []).config_differences
    names = [
        ["HessianEigenvalues"],
        None,
        ["HessianEigenvalues"],
        ["HessianEigenvalues", "HessianEigenvalues_2"],
    ]
    assert differences == {
        "trainer.callbacks": names,
        # an argument that differs where the class is listed; `k`, the same wherever it is, is not shown
        "trainer.callbacks.HessianEigenvalues.every_n_epochs": [None, None, 2, None],
        "lr": [None, 0.1, None, None],
    }, "the run id names a run (the table's first column): it is not a difference"
    table = Comparison.of(runs, []).table()
    assert [c.header for c in table.columns][:3] == ["run", "callbacks", "every_n_epochs"]
