"""``tdl_lightning.compare.twins``: a theory twin is paired with its quantity whichever way it is spelled."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from tdl_lightning.compare import Comparison, RunRecord
from tdl_lightning.compare.figure import _draw_curves, _draw_layers
from tdl_lightning.compare.panels import figure_panels
from tdl_lightning.compare.twins import (
    is_theory_of_another,
    layer_family,
    step_twin_of,
    theory_of,
    theory_spellings,
    theory_twin,
)

matplotlib.use("Agg")

SPELLINGS = {"prefix": "{head}/theory_{name}", "suffix": "{head}/{name}_theory"}


def _theory_key(spelling: str, head: str, name: str) -> str:
    return SPELLINGS[spelling].format(head=head, name=name)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_theory_of_and_theory_twin_accept_both_spellings(spelling):
    key = _theory_key(spelling, "init_statistics", "q_layer_03")
    assert theory_of(key) == "init_statistics/q_layer_03"
    assert theory_twin("init_statistics/q_layer_03", {key, "init_statistics/q_layer_03"}) == key
    assert is_theory_of_another(key, ["init_statistics/q_layer_03", key])
    assert not is_theory_of_another(key, [key]), "a theory with no measurement is a quantity of its own"
    assert key in theory_spellings("init_statistics/q_layer_03")


def test_names_that_only_look_like_theory_are_measurements():
    assert theory_of("hessian/lambda_max") is None
    assert theory_of("p/theory") is None and theory_of("p/theory_") is None and theory_of("p/_theory") is None
    assert theory_of("theory_x") == "x", "a key with no plugin head pairs too"
    assert theory_twin("hessian/lambda_max", ["hessian/trace"]) is None


def test_step_twins_and_layer_families():
    assert step_twin_of("train/loss_step") == "train/loss" and step_twin_of("val/acc") is None
    assert layer_family("init_statistics/theory_q_layer_03") == ("init_statistics/theory_q_layer_{l}", 3)
    assert layer_family("init_stats/q_l3") == ("init_stats/q_l{l}", 3)
    assert layer_family("linear_dynamics/mode_0_theory") == ("linear_dynamics/mode_{l}_theory", 0)


def _run(run_id: str, plugin_curves: dict) -> RunRecord:
    return RunRecord(Path(run_id), run_id, "e", {}, {}, plugin_curves=plugin_curves)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_per_layer_theory_is_drawn_inside_its_family_panel(spelling):
    curves = {}
    for l in range(3):
        curves[f"init_statistics/q_layer_{l:02d}"] = [(0, 1.0 + l), (4, 2.0 + l)]
        curves[_theory_key(spelling, "init_statistics", f"q_layer_{l:02d}")] = [(0, 1.5 + l)]
    comparison = Comparison.of([_run("a", curves)], [])
    assert figure_panels(comparison) == [
        (
            "init_statistics/q_layer_{l} over layers (solid: last probe, dashed: first, dotted: theory)",
            "layers",
            "init_statistics/q_layer_{l}",
        )
    ], "the theory family gets no panel of its own"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _draw_layers(ax, comparison.runs[0], "init_statistics/q_layer_{l}", "C0", "a")
    styles = {line.get_linestyle(): list(line.get_ydata()) for line in ax.get_lines()}
    plt.close(fig)
    assert styles == {"-": [2.0, 3.0, 4.0], "--": [1.0, 2.0, 3.0], ":": [1.5, 2.5, 3.5]}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_scalar_theory_is_drawn_dotted_in_its_quantity_panel(spelling):
    theory = _theory_key(spelling, "jacobian", "variance")
    run = _run("a", {"jacobian/variance": [(0, 1.0), (5, 1.2)], theory: [(0, 1.1), (5, 1.1)]})
    comparison = Comparison.of([run], [])
    assert figure_panels(comparison) == [("jacobian/variance (dotted: theory)", "curve", "jacobian/variance")]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _draw_curves(ax, run, "jacobian/variance", "C0", "a")
    styles = {line.get_linestyle(): list(line.get_ydata()) for line in ax.get_lines()}
    plt.close(fig)
    assert styles == {"-": [1.0, 1.2], ":": [1.1, 1.1]}


def test_a_theory_metric_pairs_with_its_metric_and_keeps_a_panel_when_alone():
    curves = {"ld/mode_1": [(0, 0.1), (9, 0.8)], "ld/theory_mode_1": [(0, 0.1), (9, 0.9)]}
    run = RunRecord(Path("a"), "a", "e", {}, {}, curves=dict(curves))
    both = Comparison.of([run], ["ld/mode_1", "ld/theory_mode_1"])
    assert [p.title for p in figure_panels(both)] == ["ld/mode_1 (dotted: theory)"]
    alone = Comparison.of([run], ["ld/theory_mode_1"])
    assert [p.title for p in figure_panels(alone)] == ["ld/theory_mode_1"]


def test_spellings_mixed_across_runs_pair_in_each_run():
    old = _run(
        "a",
        {f"s/q_layer_{l}": [(0, 1.0)] for l in (1, 2)}
        | {f"s/q_layer_{l}_theory": [(0, 2.0)] for l in (1, 2)},
    )
    new = _run(
        "b",
        {f"s/q_layer_{l}": [(0, 1.0)] for l in (1, 2)}
        | {f"s/theory_q_layer_{l}": [(0, 3.0)] for l in (1, 2)},
    )
    panels = figure_panels(Comparison.of([old, new], []))
    assert [p.key for p in panels] == ["s/q_layer_{l}"], "neither spelling of the theory gets its own panel"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for run in (old, new):
        _draw_layers(ax, run, "s/q_layer_{l}", "C0", run.run_id)
    dotted = [list(line.get_ydata()) for line in ax.get_lines() if line.get_linestyle() == ":"]
    plt.close(fig)
    assert dotted == [[2.0, 2.0], [3.0, 3.0]]
