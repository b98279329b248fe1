"""``tdl_lightning.runs.wandb_mode``: online, offline or disabled, and one line when W&B cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdl_lightning.errors import ConfigError
from tdl_lightning.runs import (
    decide_wandb_mode,
    resolve_wandb_mode,
)


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


NO_SERVER = "http://127.0.0.1:9"  # nothing listens on port 9: a connection is refused at once
REPO = Path(__file__).resolve().parents[2]
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
