"""``tdl sweep``: expansion of W&B sweep configs, dry run, resume, Ctrl-C, and one real tiny sweep."""

from __future__ import annotations

import contextlib
import doctest
import functools
import importlib
import io
import json
import os
import pkgutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tdl_lightning import sweep as sweep_module
from tdl_lightning.errors import ConfigError, TDLError
from tdl_lightning.sweep import (
    SweepConfig,
    config_matches,
    expand_sweep,
    plan_sweep,
    run_sweep,
    sweep_arguments,
)

REPO = Path(__file__).resolve().parents[1]

# A tiny real experiment: a 2-layer MLP on 256 teacher-student points, 2 epochs of 4 steps.
TINY_BASE = {
    "seed_everything": 0,
    "model": {
        "class_path": "Classifier",
        "init_args": {
            "num_classes": 2,
            "model": {
                "class_path": "DeepMLP",
                "init_args": {"input_dim": 8, "width": 16, "depth": 2, "output_dim": 2, "sigma_w": 1.0},
            },
        },
    },
    "data": {
        "class_path": "TeacherStudent",
        "init_args": {"num_samples": 256, "input_dim": 8, "task": "classification", "batch_size": 64},
    },
    "trainer": {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
}
SIGMA_KEY = "model.init_args.model.init_args.sigma_w"


def _sweep(method: str = "grid", **parameters: dict) -> SweepConfig:
    return SweepConfig.from_dict(
        {"name": "demo", "method": method, "parameters": parameters, "command": ["tdl", "fit", "${args}"]}
    )


def test_docstring_examples_run():
    names = [m.name for m in pkgutil.iter_modules(sweep_module.__path__) if m.name != "__main__"]
    modules = [sweep_module] + [importlib.import_module(f"tdl_lightning.sweep.{name}") for name in names]
    results = [doctest.testmod(module, optionflags=doctest.ELLIPSIS) for module in modules]
    assert sum(r.attempted for r in results) > 10 and all(r.failed == 0 for r in results)


def test_grid_is_every_combination_in_order_with_the_sweep_as_experiment():
    sweep = _sweep(a={"values": [1, 2, 3]}, b={"values": ["x", "y"]}, c={"value": 0.5})
    points = expand_sweep(sweep)
    assert len(points) == 6
    assert [(p["a"], p["b"]) for p in points] == [(1, "x"), (1, "y"), (2, "x"), (2, "y"), (3, "x"), (3, "y")]
    assert all(p["c"] == 0.5 and p["run.experiment"] == "demo" for p in points)
    assert len(expand_sweep(sweep, max_runs=4)) == 4
    assert sweep_arguments(points[0]) == ["--a=1", "--b=x", "--c=0.5", "--run.experiment=demo"]


def test_random_draws_are_seeded_and_within_their_distributions():
    sweep = _sweep(
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


def test_config_matching_reads_lightning_cli_configs():
    config = {
        "model": {
            "class_path": "tdl_lightning.tasks.Classifier",
            "init_args": {"model": {"init_args": {"sigma_w": 1.5}}},
        },
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 1e-05}},
        "trainer": {"enable_progress_bar": False},
    }
    assert config_matches(config, {SIGMA_KEY: 1.5, "optimizer": "SGD", "optimizer.lr": "1e-05"})
    assert config_matches(config, {"trainer.enable_progress_bar": "False"})
    assert not config_matches(config, {SIGMA_KEY: 1.0})
    assert not config_matches(config, {"optimizer": "Adam"})
    assert not config_matches(config, {"model.init_args.model.init_args.depth": 4})  # absent


def _write_sweep(tmp: Path, command: list[str], values: list, parallel_name: str = "tiny_sweep") -> Path:
    (tmp / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    config = {
        "name": parallel_name,
        "method": "grid",
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {SIGMA_KEY: {"values": values}},
        "command": command,
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fake_finished_run(runs_dir: Path, run_id: str, sigma_w: float, summary: bool = True) -> Path:
    run = runs_dir / run_id
    run.mkdir(parents=True)
    config = json.loads(json.dumps(TINY_BASE))
    config["model"]["init_args"]["model"]["init_args"]["sigma_w"] = sigma_w
    config["run"] = {"experiment": runs_dir.name}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if summary:
        (run / "summary.json").write_text(json.dumps({"run_id": run_id, "metrics": {"val/acc": 0.5}}))
    return run


def test_dry_run_lists_the_commands_and_marks_finished_runs(in_tmp):
    path = _write_sweep(in_tmp, ["tdl", "fit", "--config", "base.yaml", "${args}"], [0.5, 1.0, 2.0])
    done = _fake_finished_run(in_tmp / "runs" / "tiny_sweep", "a", 1.0)
    _fake_finished_run(in_tmp / "runs" / "tiny_sweep", "killed", 2.0, summary=False)
    lines: list[str] = []
    report = run_sweep(path, dry_run=True, echo=lines.append)
    assert [r.status for r in report.runs] == ["planned", "skipped", "planned"]
    assert report.runs[1].run_dir.resolve() == done.resolve()
    assert "3 runs, 1 finished before, 2 to run" in lines[0]
    assert lines[1].endswith(f"--config base.yaml --{SIGMA_KEY}=0.5 --run.experiment=tiny_sweep")
    assert lines[1].startswith("[1/3] run   tdl fit")
    assert "skip (finished" in lines[2]
    assert not (in_tmp / "runs" / "tiny_sweep" / ".sweep-logs").exists(), "a dry run runs nothing"
    changed = json.loads(json.dumps(TINY_BASE))
    changed["trainer"]["max_epochs"] = 3
    (in_tmp / "base.yaml").write_text(yaml.safe_dump(changed))
    report = run_sweep(path, dry_run=True, echo=lambda s: None)
    assert [r.status for r in report.runs] == ["planned"] * 3, "a changed base config makes the runs stale"


def test_a_missing_base_config_is_reported_before_anything_runs(in_tmp):
    path = _write_sweep(in_tmp, ["tdl", "fit", "--config", "experiments/none.yaml", "${args}"], [1.0])
    with pytest.raises(ConfigError, match="repository root"):
        run_sweep(path, dry_run=True, echo=lambda s: None)


FAKE_FIT = """
import json, os, pathlib, sys, time, yaml
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
run = pathlib.Path("runs") / args["run.experiment"] / os.environ["WANDB_RUN_ID"]
run.mkdir(parents=True)
config = yaml.safe_load(pathlib.Path("base.yaml").read_text())
config["model"]["init_args"]["model"]["init_args"]["sigma_w"] = float(args[SIGMA_KEY])
config["run"] = {"experiment": args["run.experiment"]}
(run / "config.yaml").write_text(yaml.safe_dump(config))
if float(args[SIGMA_KEY]) < 0:
    sys.exit(3)
(run / "summary.json").write_text(json.dumps({"metrics": {"val/acc": 0.25}}))
""".replace("SIGMA_KEY", repr(SIGMA_KEY))


def test_runs_k_at_once_then_resume_skips_the_finished_ones(in_tmp):
    (in_tmp / "fake_fit.py").write_text(FAKE_FIT)
    path = _write_sweep(in_tmp, [sys.executable, "fake_fit.py", "${args}"], [0.5, 1.0, -1.0, 2.0])
    lines: list[str] = []
    report = run_sweep(path, parallel=2, echo=lines.append)
    assert [r.status for r in report.runs] == ["done", "done", "failed", "done"]
    assert all(r.run_dir and (r.run_dir / "config.yaml").is_file() for r in report.runs)
    assert any("val/acc 0.25" in line for line in lines)
    assert any("FAILED (exit 3)" in line for line in lines)
    again = run_sweep(path, parallel=2, echo=lambda s: None)
    assert [r.status for r in again.runs] == ["skipped", "skipped", "failed", "skipped"]
    with pytest.raises(TDLError, match="1 of 4 runs failed"):
        sweep_module.main([str(path)])


SLEEPY_FIT = """
import os, pathlib, sys, time
pathlib.Path("pids").mkdir(exist_ok=True)
pathlib.Path("pids", str(os.getpid())).write_text("")
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started_in_background", [False, True], ids=["terminal", "background"])
def test_ctrl_c_stops_the_running_runs_and_starts_no_more(in_tmp, started_in_background):
    """``tdl sweep ... &`` starts with SIGINT ignored: it must still stop at SIGINT, and fast."""
    (in_tmp / "sleepy_fit.py").write_text(SLEEPY_FIT)
    path = _write_sweep(in_tmp, [sys.executable, "sleepy_fit.py", "${args}"], [1.0, 2.0, 3.0])
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tdl_lightning.sweep", str(path), "--parallel", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint if started_in_background else None,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list((in_tmp / "pids").glob("*"))) < 2:
        time.sleep(0.1)
    pids = [int(p.name) for p in (in_tmp / "pids").glob("*")]
    assert len(pids) == 2, "two runs should be running"
    sweep.send_signal(signal.SIGINT)
    try:
        out, _ = sweep.communicate(timeout=20)  # the runs get SIGINT, not the 30 s wait and SIGKILL
    except subprocess.TimeoutExpired:
        sweep.kill()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        pytest.fail("the sweep did not stop within 20 s of SIGINT")
    assert sweep.returncode == 130, out
    assert "interrupted" in out and "Resume with the same command" in out
    assert not any(_alive(pid) for pid in pids), "the runs must be stopped with the sweep"
    assert len(list((in_tmp / "pids").glob("*"))) == 2, "no run starts after Ctrl-C"


@functools.cache
def real_sweep() -> tuple[Path, str]:
    """Run a real 2-point sweep of `tdl fit` (2 at once) once per test session, printing to a
    stdout that is no terminal; its runs folder and what it printed."""
    tmp = Path(tempfile.mkdtemp(prefix="tdl-sweep-"))
    path = _write_sweep(tmp, ["tdl", "fit", "--config", "base.yaml", "${args}"], [0.5, 2.0])
    cwd = os.getcwd()
    os.chdir(tmp)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            report = run_sweep(path, parallel=2)
    finally:
        os.chdir(cwd)
    logs = [r.log.read_text()[-3000:] for r in report.runs if r.status != "done" and r.log]
    assert [r.status for r in report.runs] == ["done", "done"], logs
    return tmp / "runs" / "tiny_sweep", printed.getvalue()


def real_sweep_runs() -> Path:
    """The runs folder of :func:`real_sweep`."""
    return real_sweep()[0]


def test_a_real_sweep_prints_one_plain_line_per_event_when_stdout_is_no_terminal():
    printed = real_sweep()[1]
    lines = printed.splitlines()
    assert lines[0].startswith("sweep tiny_sweep (grid): 2 runs, 0 finished before, 2 to run"), printed
    assert [line[:10] for line in lines[1:3]] == ["slot 1/2: ", "slot 2/2: "]
    assert sorted(line.split(" start ")[0] for line in lines if " start " in line) == ["[1/2]", "[2/2]"]
    done = [line for line in lines if "] done  sigma_w=" in line]
    assert len(done) == 2 and all(", val/acc " in line for line in done), printed
    assert "1 done, 0 failed, 1 running, 0 queued; ETA " in done[0]  # the other point is still running
    assert done[1].endswith(" [2 done, 0 failed, 0 running, 0 queued]")
    assert "\x1b[" not in printed, "no terminal codes in a log"


def test_a_real_sweep_makes_normal_runs_and_resumes_from_their_configs(monkeypatch):
    runs_dir = real_sweep_runs()
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2
    sigmas = set()
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["experiment"] == "tiny_sweep" and "val/acc" in summary["metrics"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        sigmas.add(config["model"]["init_args"]["model"]["init_args"]["sigma_w"])
        assert list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert sigmas == {0.5, 2.0}
    monkeypatch.chdir(runs_dir.parent.parent)
    _, report = plan_sweep("sweep.yaml")
    assert [r.status for r in report.runs] == ["skipped", "skipped"]
