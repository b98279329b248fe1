"""``tdl compare``: config differences, final/best metrics, the figure, and bad run directories.

The runs compared are real: the two runs of the tiny sweep in ``test_sweep`` (made once per session).
"""

from __future__ import annotations

import csv
import doctest
import json
import shutil
from pathlib import Path

import pytest

from tdl_lightning import compare as compare_module
from tdl_lightning.compare import RunRecord, compare_runs, load_run, plot_comparison
from tdl_lightning.errors import ConfigError, TDLError
from tests.test_sweep import real_sweep_runs

SIGMA = "model.model.sigma_w"


@pytest.fixture
def runs(tmp_path) -> Path:
    """A private copy of the sweep's two finished runs: ``<tmp>/runs/tiny_sweep/<id>``."""
    target = tmp_path / "runs" / "tiny_sweep"
    shutil.copytree(real_sweep_runs(), target, symlinks=True)  # wandb symlinks its debug log
    return target


def _run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def _csv_column(run: Path, column: str) -> list[float]:
    with (run / "metrics.csv").open() as handle:
        return [float(row[column]) for row in csv.DictReader(handle) if row.get(column)]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_docstring_examples_run():
    result = doctest.testmod(compare_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 15 and result.failed == 0


def test_config_differences_and_metrics_come_from_the_run_files(runs):
    comparison = compare_runs([runs])  # a folder of runs expands to its runs
    dirs = _run_dirs(runs)
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
        summary = _summary(path)["metrics"]
        assert run.run_id == path.name and run.experiment == "tiny_sweep"
        assert run.value("val/acc", "final") == summary["val/acc"]
        assert run.value("val/loss", "best") == min(_csv_column(path, "val/loss"))
        assert run.value("val/acc", "best") == max(_csv_column(path, "val/acc"))
        assert run.sources == {"config": "config.yaml", "curves": "metrics.csv"}
    assert comparison.labels() == [f"sigma_w={s}" for s in sigmas]


def test_json_and_table_output(runs, capsys):
    compare_module.main([str(runs), "--metric", "val/acc", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"] == ["val/acc"]
    assert list(data["config_differences"]) == [SIGMA]
    for entry in data["runs"]:
        assert entry["final"]["val/acc"] == _summary(Path(entry["path"]))["metrics"]["val/acc"]
        assert entry["config"][SIGMA] in (0.5, 2.0)
    compare_module.main([str(runs), "-m", "val/*"])
    table = capsys.readouterr().out
    assert "sigma_w" in table and "val/acc" in table and "val/loss" in table
    for path in _run_dirs(runs):
        assert path.name in table
        assert f"{_summary(path)['metrics']['val/acc']:.4g}" in table


def test_bad_run_directories_are_named_and_the_others_still_compared(runs, tmp_path, capsys):
    good, second = _run_dirs(runs)
    killed = runs / "killed"
    shutil.copytree(second, killed, symlinks=True)
    (killed / "summary.json").unlink()
    cut = runs / "cut"
    shutil.copytree(second, cut, symlinks=True)
    (cut / "summary.json").write_text('{"run_id": ')
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    missing = tmp_path / "no_such_run"

    comparison = compare_runs([good, killed, cut, empty, missing])
    assert [r.path for r in comparison.runs] == [good]
    reasons = {p.path: p.reason for p in comparison.problems}
    assert set(reasons) == {killed, cut, empty, missing}
    assert "half-written run, no summary.json" in reasons[killed]
    assert "not valid JSON" in reasons[cut]
    assert "not a run directory" in reasons[empty]
    assert "no such file or directory" in reasons[missing]

    compare_module.main([str(runs)])  # the folder: the killed and cut runs are skipped, the others compared
    out, err = capsys.readouterr()
    assert f"skipped {killed}: half-written" in err and f"skipped {cut}:" in err
    assert good.name in out and second.name in out and "killed" not in out

    with pytest.raises(TDLError, match="no run to compare.*no_such_run"):
        compare_module.main([str(missing)])


def test_an_unknown_metric_names_the_ones_there_are(runs):
    with pytest.raises(ConfigError, match="'val/accuracy' is in none of the runs.*val/acc"):
        compare_runs([runs], metrics=["val/accuracy"])


def test_the_wandb_run_file_stands_in_for_missing_project_files(runs):
    path = _run_dirs(runs)[0]
    expected = load_run(path)
    (path / "config.yaml").unlink()
    (path / "metrics.csv").unlink()
    run = load_run(path)
    assert run.sources == {"config": "wandb", "curves": "wandb"}
    assert run.config[SIGMA] == expected.config[SIGMA]
    assert [v for _, v in run.curve("val/acc")] == [v for _, v in expected.curve("val/acc")]
    assert [s for s, _ in run.curve("val/acc")] == [s for s, _ in expected.curve("val/acc")]


def _add_plugin_history(run: Path, scale: float) -> None:
    """A plugin's history.json as plugins/base.py writes it: per-layer q^l and a Hessian curve."""
    for plugin, entries in {
        "init_statistics": [
            {
                "step": s,
                "epoch": 0,
                "when": "step",
                **{f"init_statistics/q_layer_{l:02d}": scale**l * (1 + s) for l in range(1, 5)},
                **{f"init_statistics/q_layer_{l:02d}_theory": scale**l for l in range(1, 5)},
                "init_statistics/chi_1": scale,
            }
            for s in (0, 4)
        ],
        "hessian": [
            {"step": s, "epoch": 0, "when": "step", "hessian/lambda_max": scale * s} for s in (0, 2, 4)
        ],
    }.items():
        folder = run / "plugins" / plugin
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps(entries))


def test_figure_overlays_metric_and_plugin_curves(runs, tmp_path, capsys):
    comparison = compare_runs([runs])
    for i, run in enumerate(comparison.runs):
        _add_plugin_history(run.path, scale=1.0 + i)
    comparison = compare_runs([runs], metrics=["val/acc", "hessian/*"])
    assert comparison.metrics == ["val/acc", "hessian/lambda_max"]
    assert [r.value("hessian/lambda_max") for r in comparison.runs] == [4.0, 8.0]
    assert comparison.to_dict()["runs"][1]["plugins"]["init_statistics/q_layer_03"] == 2.0**3 * 5
    panels = compare_module._panels(comparison)
    assert [p[0].split(" (")[0] for p in panels] == [
        "val/acc",
        "hessian/lambda_max",
        "init_statistics/chi_1",
        "init_statistics/q_layer_{l} over layers",
    ], "per-layer scalars make one panel, their theory drawn inside it"
    assert "dotted: theory" in panels[-1][0]
    only = compare_module._panels(comparison, plugins=["hessian/*"])
    assert [p[0] for p in only] == ["val/acc", "hessian/lambda_max"], "--plugins chooses the plugin panels"
    figure = tmp_path / "figs" / "compare.png"
    compare_module.main([str(runs), "--metric", "val/acc", "--output", str(figure)])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert f"figure written to {figure}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="none of the runs has a curve"):
        plot_comparison(compare_module.Comparison.of([], ["val/acc"]), tmp_path / "empty.png")


def test_a_two_axis_sweep_is_sorted_and_gets_a_final_metric_panel(tmp_path):
    def run(run_id: str, depth: int, sigma_w: float, acc: float) -> RunRecord:
        config = {"model.model.depth": depth, "model.model.sigma_w": sigma_w, "seed": 0}
        return RunRecord(tmp_path / run_id, run_id, "eoc", config, {"val/acc": acc}, {"val/acc": [(1, acc)]})

    runs = [run("a", 16, 2.5, 0.3), run("b", 4, 1.0, 0.9), run("c", 16, 1.0, 0.8), run("d", 4, 2.5, 0.85)]
    comparison = compare_module.Comparison.of(runs, ["val/acc"]).sorted_by_config()
    assert [r.run_id for r in comparison.runs] == ["b", "d", "c", "a"]
    assert comparison.config_differences == {"model.model.depth": [4, 4, 16, 16], SIGMA: [1.0, 2.5, 1.0, 2.5]}
    assert [p[0] for p in compare_module._panels(comparison)] == ["val/acc", "final val/acc against sigma_w"]
    assert plot_comparison(comparison, tmp_path / "eoc.png").stat().st_size > 10_000
