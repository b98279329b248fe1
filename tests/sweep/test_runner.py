"""``tdl_lightning.sweep.runner``: dry runs, k runs at once, resume, Ctrl-C, a real sweep of ``tdl fit``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tdl_lightning import sweep as sweep_module
from tdl_lightning.errors import ConfigError, TDLError
from tdl_lightning.sweep import (
    plan_sweep,
    run_sweep,
)
from tests.sweep.helpers import (
    FAKE_FIT,
    SIGMA_KEY,
    SLEEPY_FIT,
    TINY_BASE,
    fake_finished_run,
    real_sweep,
    real_sweep_runs,
    write_sweep,
)


def test_dry_run_lists_the_commands_and_marks_finished_runs(in_tmp):
    path = write_sweep(in_tmp, ["tdl", "fit", "--config", "base.yaml", "${args}"], [0.5, 1.0, 2.0])
    done = fake_finished_run(in_tmp / "runs" / "tiny_sweep", "a", 1.0, status="finished")
    fake_finished_run(in_tmp / "runs" / "tiny_sweep", "killed", 2.0, summary=False)
    # a run stopped by Ctrl-C or pre-emption writes its summary too: its point is run again
    fake_finished_run(in_tmp / "runs" / "tiny_sweep", "stopped", 2.0, status="interrupted")
    fake_finished_run(in_tmp / "runs" / "tiny_sweep", "broken", 0.5, status="failed")
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
    path = write_sweep(in_tmp, ["tdl", "fit", "--config", "experiments/none.yaml", "${args}"], [1.0])
    with pytest.raises(ConfigError, match="repository root"):
        run_sweep(path, dry_run=True, echo=lambda s: None)


def test_runs_k_at_once_then_resume_skips_the_finished_ones(in_tmp):
    (in_tmp / "fake_fit.py").write_text(FAKE_FIT)
    path = write_sweep(in_tmp, [sys.executable, "fake_fit.py", "${args}"], [0.5, 1.0, -1.0, 2.0])
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
    path = write_sweep(in_tmp, [sys.executable, "sleepy_fit.py", "${args}"], [1.0, 2.0, 3.0])
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
