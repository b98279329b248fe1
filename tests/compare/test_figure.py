"""``tdl_lightning.compare.figure`` and ``.panels``: which panels the figure has, and the file it writes."""

from __future__ import annotations

import pytest

from tdl_lightning.compare import Comparison, RunRecord, compare_runs, main, plot_comparison
from tdl_lightning.compare.panels import figure_panels
from tdl_lightning.errors import ConfigError
from tests.sweep_runs import SIGMA, add_plugin_history


def test_figure_overlays_metric_and_plugin_curves(runs, tmp_path, capsys):
    comparison = compare_runs([runs])
    for i, run in enumerate(comparison.runs):
        add_plugin_history(run.path, scale=1.0 + i)
    comparison = compare_runs([runs], metrics=["val/acc", "hessian/*"])
    assert comparison.metrics == ["val/acc", "hessian/lambda_max"]
    assert [r.value("hessian/lambda_max") for r in comparison.runs] == [4.0, 8.0]
    assert comparison.to_dict()["runs"][1]["plugins"]["init_statistics/q_layer_03"] == 2.0**3 * 5
    panels = figure_panels(comparison)
    assert [p[0].split(" (")[0] for p in panels] == [
        "val/acc",
        "hessian/lambda_max",
        "init_statistics/chi_1",
        "init_statistics/q_layer_{l} over layers",
    ], "per-layer scalars make one panel, their theory drawn inside it"
    assert "dotted: theory" in panels[-1][0]
    only = figure_panels(comparison, plugins=["hessian/*"])
    assert [p[0] for p in only] == ["val/acc", "hessian/lambda_max"], "--plugins chooses the plugin panels"
    figure = tmp_path / "figs" / "compare.png"
    main([str(runs), "--metric", "val/acc", "--output", str(figure)])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert f"figure written to {figure}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="none of the runs has a curve"):
        plot_comparison(Comparison.of([], ["val/acc"]), tmp_path / "empty.png")


def test_a_two_axis_sweep_is_sorted_and_gets_a_final_metric_panel(tmp_path):
    def run(run_id: str, depth: int, sigma_w: float, acc: float) -> RunRecord:
        config = {"model.model.depth": depth, "model.model.sigma_w": sigma_w, "seed": 0}
        return RunRecord(tmp_path / run_id, run_id, "eoc", config, {"val/acc": acc}, {"val/acc": [(1, acc)]})

    runs = [run("a", 16, 2.5, 0.3), run("b", 4, 1.0, 0.9), run("c", 16, 1.0, 0.8), run("d", 4, 2.5, 0.85)]
    comparison = Comparison.of(runs, ["val/acc"]).sorted_by_config()
    assert [r.run_id for r in comparison.runs] == ["b", "d", "c", "a"]
    assert comparison.config_differences == {"model.model.depth": [4, 4, 16, 16], SIGMA: [1.0, 2.5, 1.0, 2.5]}
    assert [p[0] for p in figure_panels(comparison)] == ["val/acc", "final val/acc against sigma_w"]
    assert plot_comparison(comparison, tmp_path / "eoc.png").stat().st_size > 10_000


def test_a_scalar_probed_once_is_drawn_against_the_swept_value(tmp_path):
    runs = [
        RunRecord(tmp_path / str(s), str(s), "e", {"sigma_w": s}, {}, plugin_curves={"ntk/drift": [(0, s)]})
        for s in (0.5, 1.0, 2.0)
    ]
    comparison = Comparison.of(runs, [])
    assert figure_panels(comparison) == [("ntk/drift (probed once) against sigma_w", "final", "ntk/drift")]
    assert plot_comparison(comparison, tmp_path / "once.svg").read_text().startswith("<?xml")
