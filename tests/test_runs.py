"""The run directory's rules without a Trainer: ids and locks, the W&B mode, checkpoints, strict JSON."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import (
    Run,
    RunSettings,
    decide_wandb_mode,
    resolve_wandb_mode,
    unfinished_runs,
    write_json,
)
from tdl_lightning.runs.checkpoints import AtomicCheckpointIO, DiskFullError, check_checkpoint
from tdl_lightning.runs.loggers import keep_metrics_before, resume_step
from tdl_lightning.runs.resume import resolve_last, resume_arguments


def _netrc_home(tmp_path: Path, host: str = "api.wandb.ai") -> dict[str, str]:
    """A HOME whose ~/.netrc holds a W&B key, the way `wandb login` writes it."""
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    return {"HOME": str(tmp_path)}


@pytest.mark.parametrize(
    ("environ", "mode", "reason"),
    [
        ({}, "offline", "no W&B credentials"),
        ({"WANDB_API_KEY": "k"}, "online", "WANDB_API_KEY"),
        ({"WANDB_SWEEP_ID": "abc"}, "online", "a wandb agent run (WANDB_SWEEP_ID)"),
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k"}, "offline", "WANDB_MODE"),
        ({"WANDB_MODE": "disabled"}, "disabled", "WANDB_MODE"),
    ],
)
def test_wandb_mode_from_the_environment(environ, mode, reason, tmp_path):
    choice = decide_wandb_mode({"HOME": str(tmp_path), **environ})
    assert (choice.mode, choice.reason) == (mode, reason)


def test_wandb_login_netrc_means_online_for_its_host_only(tmp_path):
    home = _netrc_home(tmp_path)
    assert decide_wandb_mode(home).mode == "online"
    assert decide_wandb_mode({**home, "WANDB_BASE_URL": "https://wandb.example.org"}).mode == "offline"
    assert decide_wandb_mode({"NETRC": str(tmp_path / ".netrc"), "HOME": "/nonexistent"}).mode == "online"


def test_explicit_online_without_a_key_is_one_line_not_a_prompt(tmp_path):
    with pytest.raises(ConfigError, match="run `wandb login` first"):
        resolve_wandb_mode({"HOME": str(tmp_path), "WANDB_MODE": "online"})


def test_auto_online_without_a_server_falls_back_to_offline(tmp_path, capsys):
    environ = {
        **_netrc_home(tmp_path, "127.0.0.1"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",
    }  # nothing listens on 9
    choice = resolve_wandb_mode(environ)
    assert choice.mode == "offline" and "no W&B server reachable" in choice.reason
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be reached: logging offline" in err


def test_a_reused_run_id_is_refused_and_leaves_the_run_alone(tmp_path):
    settings = RunSettings(id="r1", root=str(tmp_path))
    first = Run.create(settings, "demo")
    first.claim()
    (first.dir / "metrics.csv").write_text("step\n0\n")
    first.release()
    before = {p: p.read_bytes() for p in first.dir.iterdir()}
    with pytest.raises(ConfigError, match=r"already exists .* `tdl fit --resume"):
        Run.create(settings, "demo").claim()
    assert {p: p.read_bytes() for p in first.dir.iterdir()} == before
    again = Run.create(settings, "demo")
    again.claim(resume=True)
    assert again.resumed
    again.release()


def test_a_live_lock_refuses_a_second_fit_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = Run.create(RunSettings(id="busy", root=str(tmp_path)), "demo")
    run.dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run.dir / ".lock").write_text(str(sleeper.pid))
        with pytest.raises(ConfigError, match=f"being written by process {sleeper.pid}"):
            run.claim(resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    run.claim(resume=True)  # the holder is gone (as after kill -9): its lock does not block
    assert (run.dir / ".lock").read_text() == str(os.getpid())
    run.release()
    assert not (run.dir / ".lock").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_root_is_one_line(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="pick a writable folder with --run.root"):
            Run.create(RunSettings(root=str(tmp_path / "runs")), "demo").claim()
    finally:
        tmp_path.chmod(0o700)


def test_a_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(ConfigError, match="pick a writable folder with --run.root"):
        Run.create(RunSettings(root=str(tmp_path / "runs")), "demo").claim()


def test_bad_run_ids_are_refused():
    with pytest.raises(ConfigError, match="not a valid run id"):
        Run.create(RunSettings(id="../elsewhere"), "demo")


def test_discard_removes_only_what_this_process_made(tmp_path):
    (tmp_path / "runs" / "other" / "old").mkdir(parents=True)
    run = Run.create(RunSettings(id="new", root=str(tmp_path / "runs")), "demo")
    run.claim()
    run.discard()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]


def test_atomic_checkpoint_io_leaves_no_truncated_file_on_a_full_disk(tmp_path, monkeypatch):
    def full_disk(checkpoint, filepath):
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "checkpoints" / "epoch=0-step=63.ckpt"
    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", full_disk)
    with pytest.raises(DiskFullError, match="no space left to write the checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert list(path.parent.iterdir()) == []


def _checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(50)}, "global_step": 3}, path)
    return path


class _Payload:
    """A class a weights-only load refuses to build."""


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "pickle", "no_state_dict"])
def test_checkpoints_that_are_not_checkpoints_are_refused_naming_the_file(kind, tmp_path):
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("epoch: 3\n")
    elif kind == "truncated":
        bad.write_bytes(_checkpoint(tmp_path).read_bytes()[:200])
    elif kind == "pickle":
        torch.save({"state_dict": {}, "x": _Payload()}, bad)
    else:
        torch.save({"weights": torch.ones(2)}, bad)
    with pytest.raises(ConfigError, match="is not a tdl checkpoint") as info:
        check_checkpoint(bad)
    assert str(bad) in str(info.value) and "weights_only=False" not in str(info.value)
    if kind == "pickle":
        assert check_checkpoint(bad, trusted=True)["x"].__class__ is _Payload
    assert check_checkpoint(_checkpoint(tmp_path))["global_step"] == 3


def test_summaries_are_strict_json(tmp_path):
    path = write_json(tmp_path / "summary.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None,
        "b": [None, 1.5],
    }


def test_metrics_after_the_checkpoint_are_cut_for_the_resumed_run(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val/acc\n0,0,\n0,1,\n0,1,0.5\n1,2,\n1,3,\n")
    assert keep_metrics_before(path, resume_step({"global_step": 2})) == 2
    assert path.read_text().splitlines() == ["epoch,step,val/acc", "0,0,", "0,1,", "0,1,0.5"]


def test_resume_arguments_and_last(tmp_path):
    run_dir = tmp_path / "runs" / "lenet" / "r7"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed_everything: 0\n")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        resume_arguments(["fit", "--resume", str(run_dir)])
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    argv, found = resume_arguments(["fit", f"--resume={run_dir}", "--trainer.max_epochs", "5"])
    assert found == run_dir
    assert argv[:5] == ["fit", "--config", str(run_dir / "config.yaml"), "--trainer.max_epochs", "5"]
    assert argv[-2:] == ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    assert "r7" in argv and str(tmp_path / "runs") in argv
    assert unfinished_runs(run_dir.parent) == [run_dir]
    assert resolve_last(tmp_path / "runs", "lenet") == (run_dir, [])
    write_json(run_dir / "summary.json", {"status": "finished"})
    with pytest.raises(ConfigError, match="no unfinished run of lenet"):
        resolve_last(tmp_path / "runs", "lenet")


def test_plugin_history_json_is_strict(tmp_path):
    from plugins.base import DiagnosticCallback, ProbeResult

    class Probe(DiagnosticCallback):
        name = "probe"

        def probe(self, pl_module, batch):
            return ProbeResult()

    plugin = Probe()
    plugin.out_dir = tmp_path
    plugin.history = [{"step": 0, "theory_variance": float("nan"), "chi_1": float("inf")}]
    plugin._write_files(ProbeResult(), step=0)
    text = (tmp_path / "history.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == [
        {"step": 0, "theory_variance": None, "chi_1": None}
    ]


NO_SERVER = "http://127.0.0.1:9"  # nothing listens on port 9: a connection is refused at once
REPO = Path(__file__).resolve().parents[1]
TINY_FIT = [sys.executable, "-m", "tdl_lightning.cli", "fit",
            "--config", str(REPO / "experiments" / "lenet_mnist.yaml"), "--trainer.max_steps=2",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip


def _tdl_env(home: Path, **extra: str) -> dict[str, str]:
    """A `tdl` subprocess's environment: no W&B mode, key or service from this one, HOME in ``home``."""
    drop = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SERVICE", "WANDB_RUN_ID", "WANDB_BASE_URL", "NETRC")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.lower().endswith("_proxy")}
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def test_explicit_online_with_a_key_and_no_server_is_one_line(tmp_path):
    environ = {
        "HOME": str(tmp_path),
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "k" * 40,
        "WANDB_BASE_URL": NO_SERVER,
    }
    with pytest.raises(ConfigError, match=r"server 127\.0\.0\.1:9 cannot be reached .* WANDB_MODE=offline"):
        resolve_wandb_mode(environ)
    # behind a proxy a direct connection says nothing: W&B's own init decides
    assert resolve_wandb_mode({**environ, "HTTPS_PROXY": "http://proxy:3128"}).mode == "online"


def test_a_wandb_error_of_several_lines_is_one_line():
    from wandb.errors import CommError

    from tdl_lightning.cli import user_error

    message = str(
        user_error(CommError("Timed out while retrying: connection refused\nConsider increasing ..."))
    )
    assert "\n" not in message and message.startswith("W&B: Timed out") and "WANDB_MODE=offline" in message


def test_tdl_fit_online_with_no_server_stops_in_one_line_and_starts_nothing(tmp_path):
    env = _tdl_env(tmp_path, WANDB_MODE="online", WANDB_API_KEY="k" * 40, WANDB_BASE_URL=NO_SERVER)
    proc = subprocess.run(TINY_FIT, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("tdl:", "Traceback", "wandb:"))]
    assert len(lines) == 1 and lines[0].startswith("tdl: error: WANDB_MODE=online but the W&B server")
    assert not (tmp_path / "runs").exists()  # nothing was trained, so nothing is lost


@pytest.mark.slow  # one `tdl fit` process: ~25 s on the loaded 2-core machine
def test_tdl_fit_auto_online_with_no_server_says_so_once_and_logs_offline(tmp_path):
    env = _tdl_env(tmp_path, WANDB_BASE_URL=NO_SERVER, **_netrc_home(tmp_path, "127.0.0.1"))
    proc = subprocess.run(TINY_FIT, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("tdl: W&B server 127.0.0.1:9 cannot be reached: logging offline") == 1
    assert "Traceback" not in proc.stderr
    (run,) = (tmp_path / "runs" / "lenet_mnist").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["wandb"]["mode"] == "offline"
    assert list(run.glob("wandb/offline-run-*/run-*.wandb")) and "upload later  : wandb sync" in proc.stdout


def test_the_report_lists_the_folders_that_hold_figures(tmp_path):
    from tdl_lightning.runs.directory import figure_folders
    from tdl_lightning.runs.report import report_lines

    for name, files in {"pinn": ["solution_step0000008.png", "step0000008.npz"], "gradient_noise": [
        "history.json"], "samples": ["grid_step0000002.png"]}.items():  # fmt: skip
        (tmp_path / "plugins" / name).mkdir(parents=True)
        for file in files:
            (tmp_path / "plugins" / name / file).write_bytes(b"")
    figures = figure_folders(tmp_path)
    assert figures == ["plugins/pinn/", "plugins/samples/"]  # gradient_noise drew nothing
    summary = {"subcommand": "fit", "experiment": "x", "run_id": "r", "run_dir": str(tmp_path),
               "status": "finished", "metrics": {"val/acc": 0.5}, "figures": figures}  # fmt: skip
    lines = report_lines(summary).splitlines()
    assert lines[2] == "  figures       : plugins/pinn/, plugins/samples/ (in the run directory)"
    assert all("figures" not in line for line in report_lines({**summary, "figures": []}).splitlines())
    assert figure_folders(tmp_path / "nothing") == []
