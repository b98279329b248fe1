"""``tdl_lightning.sweep.sampling``: grid, random and (locally) Bayesian points."""

from __future__ import annotations

import pytest

from tdl_lightning.errors import ConfigError
from tdl_lightning.sweep import (
    SweepConfig,
    expand_sweep,
    sweep_arguments,
)
from tests.sweep.helpers import (
    sweep_config,
)


def test_grid_is_every_combination_in_order_with_the_sweep_as_experiment():
    sweep = sweep_config(a={"values": [1, 2, 3]}, b={"values": ["x", "y"]}, c={"value": 0.5})
    points = expand_sweep(sweep)
    assert len(points) == 6
    assert [(p["a"], p["b"]) for p in points] == [(1, "x"), (1, "y"), (2, "x"), (2, "y"), (3, "x"), (3, "y")]
    assert all(p["c"] == 0.5 and p["run.experiment"] == "demo" for p in points)
    assert len(expand_sweep(sweep, max_runs=4)) == 4
    assert sweep_arguments(points[0]) == ["--a=1", "--b=x", "--c=0.5", "--run.experiment=demo"]


def test_random_draws_are_seeded_and_within_their_distributions():
    sweep = sweep_config(
        "random",
        lr={"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        width={"min": 8, "max": 64},
        dropout={"min": 0.0, "max": 0.5},
        opt={"values": ["SGD", "Adam"]},
    )
    points = expand_sweep(sweep, max_runs=20, seed=3)
    assert len(points) == 20
    assert points == expand_sweep(sweep, max_runs=20, seed=3)
    assert points != expand_sweep(sweep, max_runs=20, seed=4)
    assert all(1e-4 <= p["lr"] <= 0.1 and 0.0 <= p["dropout"] <= 0.5 for p in points)
    assert all(isinstance(p["width"], int) and 8 <= p["width"] <= 64 for p in points)
    assert {p["opt"] for p in points} == {"SGD", "Adam"}
    with pytest.raises(ConfigError, match="--max-runs"):
        expand_sweep(sweep)  # random never ends on its own


def test_bayes_runs_as_seeded_random_locally_with_a_note():
    params = {"lr": {"distribution": "uniform", "min": 0.0, "max": 1.0}}
    bayes = SweepConfig.from_dict(
        {"method": "bayes", "run_cap": 5, "parameters": params, "command": ["${args}"]}
    )
    random_ = SweepConfig.from_dict(
        {"method": "random", "run_cap": 5, "parameters": params, "command": ["${args}"]}
    )
    assert "random" in bayes.notes[0] and not random_.notes
    assert expand_sweep(bayes, seed=1) == expand_sweep(random_, seed=1)
