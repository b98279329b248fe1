"""``tdl_lightning.sweep.config``: bad sweep files say what to do; the course's sweeps are valid."""

from __future__ import annotations

import pytest
import yaml

from tdl_lightning.errors import ConfigError
from tdl_lightning.sweep import (
    SweepConfig,
    plan_sweep,
)
from tests.sweep.helpers import (
    REPO,
)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seed_everything": 0, "model": {}}, "not a W&B sweep config"),
        ({"method": "hyperband", "parameters": {"a": {"value": 1}}}, "method must be one of"),
        ({"method": "grid", "parameters": {"a": {"min": 0.0, "max": 1.0}}}, "grid cannot enumerate"),
        ({"method": "random", "parameters": {"a": {"min": "1e-4", "max": 1.0}}}, "write 1.0e-4"),
        (
            {"method": "grid", "parameters": {"a": {"value": 1}}, "command": ["tdl", "fit"]},
            "no \\$\\{args\\}",
        ),
        ({"method": "grid", "parameters": {"a": {"parameters": {"b": {"value": 1}}}}}, "dotted names"),
        ({"method": "grid", "parameters": {"a": {"distribution": "zipf"}}}, "unknown distribution"),
    ],
)
def test_bad_sweep_configs_say_what_to_do(raw, message):
    raw.setdefault("command", ["tdl", "fit", "${args}"])
    with pytest.raises(ConfigError, match=message):
        SweepConfig.from_dict(raw)


# sweeps whose full grid is a long study (tens of CPU minutes): docs/double_descent.md, docs/optimisers.md
STUDIES = {"double_descent": 16, "optimizers": 72}


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem
)
def test_course_sweeps_are_valid_and_small(path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep, report = plan_sweep(path)
    raw = yaml.safe_load(path.read_text())
    assert raw["command"][:3] == ["tdl", "fit", "--config"] and raw["command"][-1] == "${args}"
    assert (REPO / raw["command"][3]).is_file()
    assert raw["metric"]["name"] and raw["method"] in ("grid", "random", "bayes")
    assert report.runs_dir.name == sweep.name
    if path.stem in STUDIES:  # the course's long studies: their docs say how many runs were made here
        assert len(report.runs) == STUDIES[path.stem]
    else:
        assert 4 <= len(report.runs) <= 12, "keep local sweeps a few minutes long on 2 CPU cores"


def test_the_course_studies_are_all_there():
    names = {p.stem for p in (REPO / "experiments" / "sweeps").glob("*.yaml")}
    assert {"edge_of_chaos", "optimizer_lr", "dynamical_isometry"} <= names
    eoc = yaml.safe_load((REPO / "experiments/sweeps/edge_of_chaos.yaml").read_text())
    assert {"model.init_args.model.init_args.sigma_w", "model.init_args.model.init_args.depth"} <= set(
        eoc["parameters"]
    )
