"""Helpers over the real runs that the tests of ``tdl compare`` and ``runs.reading`` read (``runs``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

SIGMA = "model.model.sigma_w"


def run_dirs(runs: Path) -> list[Path]:
    """The run directories in a folder of runs, sorted."""
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def csv_column(run: Path, column: str) -> list[float]:
    """Every logged value of ``column`` in the run's ``metrics.csv``."""
    with (run / "metrics.csv").open() as handle:
        return [float(row[column]) for row in csv.DictReader(handle) if row.get(column)]


def summary(run: Path) -> dict:
    """The run's ``summary.json``."""
    return json.loads((run / "summary.json").read_text())


def add_plugin_history(run: Path, scale: float) -> None:
    """A plugin's history.json as plugins/base.py writes it: per-layer q^l and a Hessian curve."""
    for plugin, entries in {
        "init_statistics": [
            {
                "step": s,
                "epoch": 0,
                "when": "step",
                **{f"init_statistics/q_layer_{l:02d}": scale**l * (1 + s) for l in range(1, 5)},
                **{f"init_statistics/q_layer_{l:02d}_theory": scale**l for l in range(1, 5)},
                "init_statistics/chi_1": scale,
            }
            for s in (0, 4)
        ],
        "hessian": [
            {"step": s, "epoch": 0, "when": "step", "hessian/lambda_max": scale * s} for s in (0, 2, 4)
        ],
    }.items():
        folder = run / "plugins" / plugin
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps(entries))
