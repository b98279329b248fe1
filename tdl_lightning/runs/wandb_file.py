"""The W&B run file of a run directory (``wandb/offline-run-*/run-<id>.wandb``), read with no server.

W&B offline writes no ``config.yaml`` or ``wandb-summary.json``: everything is inside the binary
``.wandb`` file, and ``wandb leet inspect`` (W&B's own reader) prints it as JSON. This is the
fallback where a run's own files (``config.yaml``, ``metrics.csv``) are missing.

Example:
    >>> read_wandb_run(Path("/nonexistent")) is None
    True
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tdl_lightning.runs.record import Curve, is_number, to_step

__all__ = ["read_wandb_run", "wandb_history_curves"]

WANDB_FILES = "wandb/*run-*/run-*.wandb"


def read_wandb_run(run_dir: Path, history: bool = False) -> dict[str, Any] | None:
    """Read the W&B run file in ``run_dir`` (offline or synced) with ``wandb leet inspect``.

    Returns the ``--summary --json`` object (``config``, ``summary``, ``state``, ``exit_code``, ...),
    with ``history`` (the list of logged rows) added when asked; ``None`` when the run has no W&B
    file or the ``wandb`` command is missing or fails.

    Example:
        >>> read_wandb_run(Path("/nonexistent")) is None
        True
    """
    files = sorted(run_dir.glob(WANDB_FILES), key=lambda p: p.stat().st_mtime)
    command = _wandb_command()
    if not files or command is None:
        return None
    try:
        out = subprocess.run(
            [command, "leet", "inspect", "--summary", "--json", str(files[-1])],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        info = json.loads(out.stdout)
        if not isinstance(info, dict):
            return None
        if history:
            out = subprocess.run(
                [command, "leet", "inspect", "--json", str(files[-1])],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            records = (json.loads(line) for line in out.stdout.splitlines() if line.strip())
            info["history"] = [r["history"]["item"] for r in records if r.get("type") == "history"]
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return info


def wandb_history_curves(history: list[dict[str, Any]]) -> dict[str, Curve]:
    """``metric -> [(step, value), ...]`` from the history rows of :func:`read_wandb_run`.

    The step is Lightning's ``trainer/global_step`` where logged, else W&B's ``_step``.

    Example:
        >>> wandb_history_curves([{"_step": 0, "trainer/global_step": 9, "val/acc": 0.5, "epoch": 0}])
        {'val/acc': [(9, 0.5)]}
    """
    curves: dict[str, Curve] = {}
    for row in history:
        step = to_step(row.get("trainer/global_step", row.get("_step")))
        for key, value in row.items():
            if not key.startswith("_") and key not in ("epoch", "trainer/global_step") and is_number(value):
                curves.setdefault(key, []).append((step, float(value)))
    return curves


def _wandb_command() -> str | None:
    beside = Path(sys.executable).parent / "wandb"
    return str(beside) if beside.is_file() else shutil.which("wandb")
