"""Reading finished runs back: find the run directories under a path and load each into a record.

The file names are those of :mod:`tdl_lightning.runs.directory`; ``config.yaml`` and
``metrics.csv`` are read first, the W&B run file (:mod:`tdl_lightning.runs.wandb_file`) where they
are missing. A run that cannot be read (missing, not a run, killed before it finished) is named
with the reason and what to do, so a tool can leave it out and go on with the others.

Example:
    >>> find_run_dirs(["/nonexistent/run"])[1][0].message()  # doctest: +ELLIPSIS
    '/nonexistent/run: no such file or directory: check the path...'
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tdl_lightning.errors import TDLError
from tdl_lightning.runs.directory import (
    CHECKPOINTS,
    CONFIG,
    METRICS,
    PLUGIN_HISTORIES,
    RUN_MARKERS,
    SUMMARY,
    is_run_dir,
    read_summary,
)
from tdl_lightning.runs.record import Curve, RunRecord, is_number, to_step
from tdl_lightning.runs.wandb_file import read_wandb_run, wandb_history_curves

__all__ = [
    "RunError",
    "RunProblem",
    "find_run_dirs",
    "finished_run_configs",
    "flatten_config",
    "load_run",
    "read_config",
    "read_finished_summary",
    "read_metrics_csv",
    "read_plugin_histories",
]

_WHERE_RUNS_LIVE = "runs live in runs/<experiment>/<run id>"


class RunError(TDLError):
    """A run directory that cannot be compared; the message says why and what to do.

    Example:
        >>> str(RunError("runs/x: not a run directory"))
        'runs/x: not a run directory'
    """


@dataclass
class RunProblem:
    """A path given to ``tdl compare`` that was left out, and why.

    Example:
        >>> RunProblem(Path("runs/x"), "no such file or directory").message()
        'runs/x: no such file or directory'
    """

    path: Path
    reason: str

    def message(self) -> str:
        """``<path>: <reason>``, the line printed for this problem.

        Example:
            >>> RunProblem(Path("runs/a"), "killed").message()
            'runs/a: killed'
        """
        return f"{self.path}: {self.reason}"


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted.key: value}``, with LightningCLI's ``init_args`` levels dropped.

    Example:
        >>> flatten_config({"model": {"class_path": "Classifier", "init_args": {"model": {
        ...     "class_path": "DeepMLP", "init_args": {"depth": 8}}}}, "run": {"tags": ["a"]}})
        ... # doctest: +NORMALIZE_WHITESPACE
        {'model.class_path': 'Classifier', 'model.model.class_path': 'DeepMLP',
         'model.model.depth': 8, 'run.tags': ['a']}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if str(key).startswith("_"):
            continue
        dotted = prefix if key == "init_args" else (f"{prefix}.{key}" if prefix else str(key))
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, dotted))
        else:
            flat[dotted] = value
    return flat


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's resolved ``config.yaml`` as a dict, or ``None`` when it is missing, not YAML or no mapping.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> read_config(run) is None, bool((run / "config.yaml").write_text("trainer: {max_epochs: 3}"))
        (True, True)
        >>> read_config(run)
        {'trainer': {'max_epochs': 3}}
    """
    try:
        config = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def finished_run_configs(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(run dir, resolved config)`` of each run directly in ``folder`` (sorted by name) that finished:
    its ``summary.json`` says ``status: finished`` (an interrupted or failed run writes one too) and its
    ``config.yaml`` is readable; the others are left out.

    Example:
        >>> finished_run_configs(Path("/nonexistent"))
        []
    """
    found: list[tuple[Path, dict[str, Any]]] = []
    if not folder.is_dir():
        return found
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        summary = read_summary(run_dir)
        finished = summary is not None and summary.get("status", "finished") == "finished"
        config = read_config(run_dir) if finished else None
        if config is not None:
            found.append((run_dir, config))
    return found


def find_run_dirs(paths: Iterable[str | Path]) -> tuple[list[Path], list[RunProblem]]:
    """Expand ``paths`` to run directories: a run stays, a folder of runs becomes its runs (sorted).

    Folders are searched two levels deep (``runs/`` -> ``runs/<experiment>/<run id>``); hidden
    folders are skipped. A path that is missing or holds no run is returned as a problem.

    Example:
        >>> find_run_dirs(["/nonexistent/run"])[1][0].reason
        'no such file or directory: check the path (runs live in runs/<experiment>/<run id>)'
    """
    found: list[Path] = []
    problems: list[RunProblem] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            reason = f"no such file or directory: check the path ({_WHERE_RUNS_LIVE})"
            problems.append(RunProblem(path, reason))
        elif not path.is_dir():
            problems.append(
                RunProblem(
                    path,
                    "not a directory: give a run directory (runs/<experiment>/<run id>) or a folder of runs",
                )
            )
        elif is_run_dir(path):
            found.append(path)
        else:
            inside = _runs_below(path, depth=2)
            if inside:
                found += inside
            else:
                problems.append(
                    RunProblem(
                        path,
                        "not a run directory and no runs inside: a run directory "
                        f"holds {' or '.join(RUN_MARKERS)}",
                    )
                )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    by_resolved = {p.resolve(): p for p in found}
    return [by_resolved[p] for p in unique], problems


def _runs_below(path: Path, depth: int) -> list[Path]:
    runs: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_run_dir(child):
            runs.append(child)
        elif depth > 1:
            runs += _runs_below(child, depth - 1)
    return runs


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory; raise :class:`RunError` (with what to do) if it cannot be compared.

    A run counts as finished when ``summary.json`` (written by ``tdl`` when training ends) is there.

    Example:
        >>> load_run("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tdl_lightning.runs.reading.RunError: /nonexistent: no such directory...
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such directory: check the path ({_WHERE_RUNS_LIVE})")
    summary = read_finished_summary(path)
    wandb_info: dict[str, Any] | None = None
    sources: dict[str, str] = {}
    config_file = path / CONFIG
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
        sources["config"] = CONFIG
    else:
        wandb_info = read_wandb_run(path, history=True)
        if wandb_info is None or not wandb_info.get("config"):
            raise RunError(f"{path}: no {CONFIG} and no readable W&B run file: this is not a complete run")
        config = wandb_info["config"]
        sources["config"] = "wandb"
    curves = read_metrics_csv(path / METRICS)
    if curves is not None:
        sources["curves"] = METRICS
    else:
        wandb_info = wandb_info or read_wandb_run(path, history=True)
        curves = wandb_history_curves(wandb_info.get("history", [])) if wandb_info else {}
        sources["curves"] = "wandb" if wandb_info else "none"
    plugin_curves = read_plugin_histories(path)
    final = {k: float(v) for k, v in (summary.get("metrics") or {}).items() if is_number(v)}
    for key, curve in plugin_curves.items():
        final.setdefault(key, curve[-1][1])
    return RunRecord(
        path=path,
        run_id=str(summary.get("run_id") or path.name),
        experiment=str(summary.get("experiment") or path.parent.name),
        config=flatten_config(config),
        final=final,
        curves=curves,
        plugin_curves=plugin_curves,
        sources=sources,
    )


def read_finished_summary(path: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run; :class:`RunError` saying what to do for any other run.

    Example:
        >>> import tempfile
        >>> from tdl_lightning.runs.directory import write_json
        >>> run = Path(tempfile.mkdtemp())
        >>> read_finished_summary(write_json(run / "summary.json", {"status": "finished"}).parent)
        {'status': 'finished'}
    """
    file = path / SUMMARY
    if not file.is_file():
        state = ""
        info = read_wandb_run(path)
        if info is not None:
            state = f" (its W&B run file says state={info.get('state')!r})"
        if list((path / CHECKPOINTS).glob("*.ckpt")):
            raise RunError(
                f"{path}: half-written run, no {SUMMARY}{state}: it was killed or is still running. "
                f"Wait for it to finish, or continue it with `tdl fit --resume {path}`"
            )
        raise RunError(
            f"{path}: half-written run, no {SUMMARY}{state}: it was killed or is still running. "
            "Wait for it to finish, or rerun it (`tdl sweep` reruns a sweep's unfinished runs); "
            "delete the folder to stop seeing this"
        )
    try:
        summary = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise RunError(
            f"{path}: {SUMMARY} is not valid JSON ({err}): the run was cut off while writing it; rerun it"
        ) from None
    if not isinstance(summary, dict):
        raise RunError(f"{path}: {SUMMARY} holds no run summary: rerun it")
    status = summary.get("status", "finished")
    if status != "finished":
        resume = f": continue it with `{summary['resume']}`" if summary.get("resume") else ""
        raise RunError(f"{path}: {status} run (stopped at step {summary.get('global_step')}){resume}")
    return summary


def read_metrics_csv(file: Path) -> dict[str, Curve] | None:
    """``metric -> [(step, value), ...]`` from a ``metrics.csv``, sorted by step; ``None`` if there is none.

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = file.write_text("epoch,step,val/acc,train/loss\\n0,9,0.5,\\n0,4,,1.2\\n0,19,0.75,\\n")
        >>> read_metrics_csv(file)
        {'val/acc': [(9, 0.5), (19, 0.75)], 'train/loss': [(4, 1.2)]}
    """
    if not file.is_file():
        return None
    curves: dict[str, Curve] = {}
    with file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = to_step(row.get("step"))
            for key, text in row.items():
                if key in ("step", "epoch") or key is None or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue  # a text column: no curve
                curves.setdefault(key, []).append((step, value))
    return {k: sorted(v, key=lambda sv: sv[0]) for k, v in curves.items()}


def read_plugin_histories(path: Path) -> dict[str, Curve]:
    """``<plugin>/<scalar> -> [(step, value), ...]`` from the run's ``plugins/*/history.json`` files.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "plugins" / "hessian").mkdir(parents=True)
        >>> _ = (run / "plugins/hessian/history.json").write_text('[{"step": 5, "hessian/lambda_max": 3.0}]')
        >>> read_plugin_histories(run)
        {'hessian/lambda_max': [(5, 3.0)]}
    """
    curves: dict[str, Curve] = {}
    for file in sorted(path.glob(PLUGIN_HISTORIES)):
        try:
            entries = json.loads(file.read_text())
        except json.JSONDecodeError:
            continue
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            step = to_step(entry.get("step"))
            for key, value in entry.items():
                if "/" in key and is_number(value):
                    curves.setdefault(key, []).append((step, float(value)))
    return curves
