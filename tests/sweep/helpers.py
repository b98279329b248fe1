"""Helpers of the sweep tests: a tiny real experiment, sweep files, fake runs, one real sweep per session."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
from pathlib import Path

import yaml

from tdl_lightning.sweep import (
    SweepConfig,
    run_sweep,
)

REPO = Path(__file__).resolve().parents[2]

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


def sweep_config(method: str = "grid", **parameters: dict) -> SweepConfig:
    """A sweep of ``parameters`` (W&B's spelling) named ``demo``, running ``tdl fit ${args}``."""
    return SweepConfig.from_dict(
        {"name": "demo", "method": method, "parameters": parameters, "command": ["tdl", "fit", "${args}"]}
    )


def write_sweep(tmp: Path, command: list[str], values: list, parallel_name: str = "tiny_sweep") -> Path:
    """``base.yaml`` (:data:`TINY_BASE`) and ``sweep.yaml`` (a grid over ``values`` of sigma_w) in ``tmp``."""
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


def fake_finished_run(
    runs_dir: Path, run_id: str, sigma_w: float, summary: bool = True, status: str | None = None
) -> Path:
    """A run folder with the config of one point (and a ``summary.json`` unless ``summary`` is false,
    with ``status`` if given: ``tdl fit`` writes ``interrupted`` or ``failed`` for a run that stopped)."""
    run = runs_dir / run_id
    run.mkdir(parents=True)
    config = json.loads(json.dumps(TINY_BASE))
    config["model"]["init_args"]["model"]["init_args"]["sigma_w"] = sigma_w
    config["run"] = {"experiment": runs_dir.name}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if summary:
        content = {"run_id": run_id, "metrics": {"val/acc": 0.5}, **({"status": status} if status else {})}
        (run / "summary.json").write_text(json.dumps(content))
    return run


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


SLEEPY_FIT = """
import os, pathlib, sys, time
pathlib.Path("pids").mkdir(exist_ok=True)
pathlib.Path("pids", str(os.getpid())).write_text("")
time.sleep(120)
"""


@functools.cache
def real_sweep() -> tuple[Path, str]:
    """Run a real 2-point sweep of `tdl fit` (2 at once) once per test session, printing to a
    stdout that is no terminal; its runs folder and what it printed."""
    tmp = Path(tempfile.mkdtemp(prefix="tdl-sweep-"))
    path = write_sweep(tmp, ["tdl", "fit", "--config", "base.yaml", "${args}"], [0.5, 2.0])
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
