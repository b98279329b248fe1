"""``tdl_lightning.runs.reading``: finding run directories and loading them, the way ``tdl compare`` does."""

from __future__ import annotations

import json

import pytest

from tdl_lightning.compare import load_run
from tdl_lightning.runs.directory import write_json
from tdl_lightning.runs.reading import (
    RunError,
    find_run_dirs,
    finished_run_configs,
    flatten_config,
    read_config,
    read_finished_summary,
    read_metrics_csv,
    read_plugin_histories,
)
from tests.sweep_runs import SIGMA, run_dirs


def test_the_wandb_run_file_stands_in_for_missing_project_files(runs):
    path = run_dirs(runs)[0]
    expected = load_run(path)
    (path / "config.yaml").unlink()
    (path / "metrics.csv").unlink()
    run = load_run(path)
    assert run.sources == {"config": "wandb", "curves": "wandb"}
    assert run.config[SIGMA] == expected.config[SIGMA]
    assert [v for _, v in run.curve("val/acc")] == [v for _, v in expected.curve("val/acc")]
    assert [s for s, _ in run.curve("val/acc")] == [s for s, _ in expected.curve("val/acc")]


def test_folders_are_searched_two_levels_deep_and_hidden_ones_skipped(tmp_path):
    for folder in ("exp_a/r2", "exp_a/r1", "exp_b/r3", "exp_b/.trash/r4", "deep/x/y/r5"):
        write_json(tmp_path / folder / "summary.json", {})
    (tmp_path / "file.txt").write_text("not a folder")
    found, problems = find_run_dirs([tmp_path, tmp_path / "exp_a" / "r1", tmp_path / "file.txt"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["exp_a/r1", "exp_a/r2", "exp_b/r3"], "sorted, once each, three levels down not searched"
    assert [p.reason.split(":")[0] for p in problems] == ["not a directory"]


def test_an_interrupted_run_names_its_resume_command(tmp_path):
    write_json(
        tmp_path / "summary.json", {"status": "interrupted", "global_step": 7, "resume": "tdl fit --resume x"}
    )
    with pytest.raises(
        RunError, match=r"interrupted run \(stopped at step 7\): continue it with `tdl fit --resume x`"
    ):
        read_finished_summary(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="holds no run summary"):
        read_finished_summary(tmp_path)


def test_a_killed_run_with_a_checkpoint_is_told_to_resume(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunError, match=f"continue it with `tdl fit --resume {tmp_path}`"):
        read_finished_summary(tmp_path)


def test_a_run_with_no_config_and_no_wandb_file_is_not_complete(tmp_path):
    write_json(tmp_path / "summary.json", {"status": "finished"})
    with pytest.raises(RunError, match="no config.yaml and no readable W&B run file"):
        load_run(tmp_path)


def test_metrics_csv_skips_text_and_sorts_by_step(tmp_path):
    file = tmp_path / "metrics.csv"
    file.write_text("epoch,step,val/acc,note\n0,20,0.75,x\n0,10,0.5,\n0,,0.9,\n")
    assert read_metrics_csv(file) == {"val/acc": [(-1, 0.9), (10, 0.5), (20, 0.75)]}
    assert read_metrics_csv(tmp_path / "missing.csv") is None


def test_plugin_histories_skip_broken_files_and_unscoped_keys(tmp_path):
    (tmp_path / "plugins" / "good").mkdir(parents=True)
    (tmp_path / "plugins" / "bad").mkdir(parents=True)
    entries = [{"step": 3, "when": "step", "good/x": 1.0, "y": 2.0, "good/flag": True}, "junk"]
    (tmp_path / "plugins" / "good" / "history.json").write_text(json.dumps(entries))
    (tmp_path / "plugins" / "bad" / "history.json").write_text("[{")
    assert read_plugin_histories(tmp_path) == {"good/x": [(3, 1.0)]}


def test_flatten_config_drops_private_keys_and_keeps_empty_dicts():
    assert flatten_config({"_seed": 1, "a": {}, "b": {"init_args": {"c": 2}}}) == {"a": {}, "b.c": 2}


def test_finished_runs_and_their_configs_are_read_in_one_place(tmp_path):
    """The runs with summary.json and a config.yaml that parses to a mapping, sorted (what sweep resumes)."""
    files = {
        "b_done": ("{}", "trainer: {max_epochs: 3}"),
        "a_done": ("{}", "model: {lr: 0.1}"),
        "no_summary": (None, "trainer: {}"),
        "no_config": ("{}", None),
        "broken_yaml": ("{}", "trainer: [unclosed"),
        "not_a_mapping": ("{}", "- 1"),
    }
    for name, (summary, config) in files.items():
        (tmp_path / name).mkdir()
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(summary)
        if config is not None:
            (tmp_path / name / "config.yaml").write_text(config)
    found = finished_run_configs(tmp_path)
    assert [(p.name, c) for p, c in found] == [
        ("a_done", {"model": {"lr": 0.1}}),
        ("b_done", {"trainer": {"max_epochs": 3}}),
    ]
    assert read_config(tmp_path / "broken_yaml") is None and read_config(tmp_path / "no_config") is None
    assert finished_run_configs(tmp_path / "missing") == []
