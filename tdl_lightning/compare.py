"""``tdl compare``: what differs between local runs, how their metrics ended, and their curves.

Works with no server: each run directory (``runs/<experiment>/<run id>/``) is read from the
project's own files (``config.yaml``, ``summary.json``, ``metrics.csv``, ``plugins/*/history.json``)
and, where those lack something, from the offline W&B run file beside them
(``wandb/offline-run-*/run-<id>.wandb``, read with ``wandb leet inspect``). A folder of runs
(``runs/edge_of_chaos_sweep``) is expanded to the runs inside it. A run that cannot be read
(missing, not a run, killed before it finished) is named with the reason, and the others are
still compared.

    tdl compare runs/edge_of_chaos_sweep --metric val/acc --output edge_of_chaos.png
    tdl compare runs/lenet_mnist/20260101-120000-ab12 runs/lenet_mnist/20260101-130000-cd34 --json

Example:
    >>> comparison = compare_runs(["runs/no_such_experiment"])  # doctest: +SKIP
    >>> comparison.problems[0].reason  # doctest: +SKIP
    'no such file or directory'
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdl_lightning.errors import ConfigError, TDLError

__all__ = [
    "Comparison",
    "RunProblem",
    "RunRecord",
    "compare_runs",
    "find_run_dirs",
    "flatten_config",
    "higher_is_better",
    "load_run",
    "main",
    "plot_comparison",
    "read_wandb_run",
]

_RUN_MARKERS = ("summary.json", "config.yaml", "metrics.csv", "hparams.yaml")
_MAX_TABLE_KEYS = 12
_HIGHER_IS_BETTER = ("acc", "accuracy", "f1", "auc", "auroc", "precision", "recall", "r2", "iou", "psnr")
# a per-layer plugin scalar: init_statistics/q_layer_03, init_stats/q_l3, init_statistics/q_layer_03_theory
_LAYER_KEY = re.compile(r"^(?P<head>.*?[a-z_])(?P<layer>\d+)(?P<tail>(_[a-z]+)*)$")
Curve = list[tuple[int, float]]


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
        """``<path>: <reason>``, the line printed for this problem."""
        return f"{self.path}: {self.reason}"


@dataclass
class RunRecord:
    """Everything ``tdl compare`` reads from one run directory.

    Attributes:
        path: the run directory.
        run_id: the run's id (its folder name; the W&B run id).
        experiment: the experiment (W&B group).
        config: the resolved config, flattened to dotted keys with ``init_args`` dropped.
        final: last value of every metric in ``summary.json`` and of every plugin scalar.
        curves: ``metric -> [(step, value), ...]`` from ``metrics.csv`` (or the W&B history).
        plugin_curves: ``<plugin>/<scalar> -> [(step, value), ...]`` from ``plugins/*/history.json``.
        sources: where the config and the curves came from (``config.yaml``/``metrics.csv``/``wandb``).

    Example:
        >>> run = RunRecord(Path("runs/demo/1"), "1", "demo", {"lr": 0.1}, {"val/loss": 0.5},
        ...                 curves={"val/loss": [(10, 0.9), (20, 0.4), (30, 0.5)]})
        >>> run.value("val/loss", "final"), run.value("val/loss", "best")
        (0.5, 0.4)
    """

    path: Path
    run_id: str
    experiment: str
    config: dict[str, Any]
    final: dict[str, float]
    curves: dict[str, Curve] = field(default_factory=dict)
    plugin_curves: dict[str, Curve] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def curve(self, metric: str) -> Curve:
        """The logged values of ``metric``: its own column, else its ``_epoch``, else its ``_step`` one.

        Example:
            >>> RunRecord(Path("r"), "r", "e", {}, {}, curves={"train/loss_epoch": [(5, 1.0)]}).curve(
            ...     "train/loss")
            [(5, 1.0)]
        """
        for key in (metric, f"{metric}_epoch", f"{metric}_step"):
            if key in self.curves:
                return self.curves[key]
            if key in self.plugin_curves:
                return self.plugin_curves[key]
        return []

    def value(self, metric: str, which: str = "final") -> float | None:
        """The ``final`` or ``best`` value of ``metric`` (``None`` where the run has none).

        ``best`` is the maximum for accuracy-like metrics and the minimum for the others
        (see :func:`higher_is_better`), over every logged value.

        Example:
            >>> RunRecord(Path("r"), "r", "e", {}, {"val/acc": 0.8}).value("val/acc")
            0.8
        """
        curve = self.curve(metric)
        if which == "final":
            if metric in self.final:
                return self.final[metric]
            return curve[-1][1] if curve else None
        if which != "best":
            raise ValueError(f"which must be 'final' or 'best', got {which!r}")
        if metric in self.plugin_curves:
            return None  # a probe, not an objective: no better or worse
        values = [v for _, v in curve if not math.isnan(v)]
        if metric in self.final and not math.isnan(self.final[metric]):
            values.append(self.final[metric])
        if not values:
            return None
        return max(values) if higher_is_better(metric) else min(values)


@dataclass
class Comparison:
    """The result of :func:`compare_runs`: runs, the config keys that differ, metrics, problems.

    Attributes:
        runs: the runs that could be read, in the order given (a folder's runs sorted by id).
        metrics: the metrics compared (chosen, or those every run's ``summary.json`` has).
        config_differences: ``dotted key -> [value of each run]`` for every key whose value differs.
        problems: the paths left out, each with the reason.

    Example:
        >>> a = RunRecord(Path("runs/s/a"), "a", "s", {"lr": 0.1, "depth": 4}, {"val/acc": 0.5})
        >>> b = RunRecord(Path("runs/s/b"), "b", "s", {"lr": 0.1, "depth": 8}, {"val/acc": 0.7})
        >>> c = Comparison.of([a, b], ["val/acc"])
        >>> c.config_differences, [r["final"]["val/acc"] for r in c.to_dict()["runs"]]
        ({'depth': [4, 8]}, [0.5, 0.7])
    """

    runs: list[RunRecord]
    metrics: list[str]
    config_differences: dict[str, list[Any]]
    problems: list[RunProblem] = field(default_factory=list)

    @classmethod
    def of(
        cls, runs: list[RunRecord], metrics: list[str], problems: list[RunProblem] | None = None
    ) -> Comparison:
        """Build a comparison of ``runs``, finding the config keys whose values differ.

        Example:
            >>> Comparison.of([], ["val/acc"]).config_differences
            {}
        """
        keys: list[str] = []
        for run in runs:
            keys += [k for k in run.config if k not in keys]
        differences = {}
        for key in keys:
            values = [run.config.get(key) for run in runs]
            if any(_canonical(v) != _canonical(values[0]) for v in values[1:]):
                differences[key] = values
        return cls(runs, metrics, differences, list(problems or []))

    def sorted_by_config(self) -> Comparison:
        """The same comparison with the runs ordered by their differing config values (numbers by value).

        Example:
            >>> a = RunRecord(Path("a"), "a", "s", {"depth": 16}, {})
            >>> b = RunRecord(Path("b"), "b", "s", {"depth": 4}, {})
            >>> [r.run_id for r in Comparison.of([a, b], []).sorted_by_config().runs]
            ['b', 'a']
        """
        keys = list(self.config_differences)
        order = sorted(
            range(len(self.runs)),
            key=lambda i: [_sort_key(self.config_differences[k][i]) for k in keys] + [self.runs[i].run_id],
        )
        return Comparison(
            [self.runs[i] for i in order],
            self.metrics,
            {k: [v[i] for i in order] for k, v in self.config_differences.items()},
            self.problems,
        )

    def labels(self) -> list[str]:
        """One short label per run: its differing config values (``sigma_w=1.5 depth=8``), else its id.

        Example:
            >>> a = RunRecord(Path("a"), "a", "s", {"model.sigma_w": 1.0}, {})
            >>> b = RunRecord(Path("b"), "b", "s", {"model.sigma_w": 2.0}, {})
            >>> Comparison.of([a, b], []).labels()
            ['sigma_w=1.0', 'sigma_w=2.0']
        """
        short = _short_names(list(self.config_differences))
        keys = list(self.config_differences)[:3]
        labels = []
        for i, run in enumerate(self.runs):
            parts = [f"{short[k]}={_display(self.config_differences[k][i])}" for k in keys]
            labels.append(" ".join(parts) if parts else run.run_id)
        if len(set(labels)) < len(labels):
            labels = [f"{label} ({run.run_id})" for label, run in zip(labels, self.runs, strict=True)]
        return labels

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: each run's differing config, final and best metrics, plugin finals.

        Example:
            >>> Comparison.of([], ["val/acc"]).to_dict()["metrics"]
            ['val/acc']
        """
        runs = []
        for i, run in enumerate(self.runs):
            plugin_keys = sorted(run.plugin_curves)
            runs.append(
                {
                    "path": str(run.path),
                    "run_id": run.run_id,
                    "experiment": run.experiment,
                    "config": {k: v[i] for k, v in self.config_differences.items()},
                    "final": {m: run.value(m, "final") for m in self.metrics},
                    "best": {m: run.value(m, "best") for m in self.metrics},
                    "plugins": {k: run.value(k, "final") for k in plugin_keys},
                    "sources": dict(run.sources),
                }
            )
        return {
            "metrics": list(self.metrics),
            "config_differences": {k: list(v) for k, v in self.config_differences.items()},
            "runs": runs,
            "problems": [{"path": str(p.path), "reason": p.reason} for p in self.problems],
        }

    def table(self) -> Any:
        """A ``rich`` table: one row per run, its differing config values, then final/best metrics.

        The best value of each metric column is shown in bold.

        Example:
            >>> a = RunRecord(Path("a"), "a", "s", {"lr": 0.1}, {"val/acc": 0.5})
            >>> Comparison.of([a], ["val/acc"]).table().row_count
            1
        """
        from rich.table import Table

        keys = list(self.config_differences)
        shown = keys[:_MAX_TABLE_KEYS]
        short = _short_names(keys)
        experiments = {run.experiment for run in self.runs}
        title = f"{len(self.runs)} run(s) of {', '.join(sorted(experiments))}"
        caption = None
        if not keys and len(self.runs) > 1:
            caption = "the runs' configs are the same"
        elif len(keys) > len(shown):
            caption = f"and {len(keys) - len(shown)} more differing config keys: see --json"
        table = Table(title=title, caption=caption)
        table.add_column("run", no_wrap=True)
        for key in shown:
            table.add_column(short[key], no_wrap=True)
        columns = [
            (m, w)
            for m in self.metrics
            for w in ("final", "best")
            if w == "final" or any(run.value(m, "best") is not None for run in self.runs)
        ]
        for metric, which in columns:
            arrow = "↑" if higher_is_better(metric) else "↓"
            header = f"best {arrow}" if which == "best" else metric
            table.add_column(header, justify="right", no_wrap=True)
        for i, run in enumerate(self.runs):
            row = [run.run_id if len(experiments) == 1 else f"{run.experiment}/{run.run_id}"]
            row += [_display(self.config_differences[k][i]) for k in shown]
            row += [self._cell(metric, which, i) for metric, which in columns]
            table.add_row(*row)
        return table

    def _cell(self, metric: str, which: str, index: int) -> str:
        values = [run.value(metric, which) for run in self.runs]
        present = [v for v in values if v is not None]
        value = values[index]
        if value is None:
            return "–"
        text = f"{value:.4g}"
        best = (max if higher_is_better(metric) else min)(present)
        return f"[bold]{text}[/bold]" if len(present) > 1 and value == best else text


def higher_is_better(metric: str) -> bool:
    """Whether larger is better for ``metric``: accuracy-like names (acc, f1, auc, r2, ...) yes, else no.

    Example:
        >>> higher_is_better("val/acc"), higher_is_better("val/loss"), higher_is_better("hessian/lambda_max")
        (True, False, False)
    """
    last = metric.rsplit("/", 1)[-1].lower()
    words = set(re.split(r"[^a-z0-9]+", last))
    return any(word in words for word in _HIGHER_IS_BETTER)


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


def read_wandb_run(run_dir: Path, history: bool = False) -> dict[str, Any] | None:
    """Read the W&B run file in ``run_dir`` (offline or synced) with ``wandb leet inspect``.

    Returns the ``--summary --json`` object (``config``, ``summary``, ``state``, ``exit_code``, ...),
    with ``history`` (the list of logged rows) added when asked; ``None`` when the run has no W&B
    file or the ``wandb`` command is missing or fails.

    Example:
        >>> read_wandb_run(Path("/nonexistent")) is None
        True
    """
    files = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
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


def _wandb_command() -> str | None:
    beside = Path(sys.executable).parent / "wandb"
    return str(beside) if beside.is_file() else shutil.which("wandb")


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
            problems.append(
                RunProblem(
                    path,
                    "no such file or directory: check the path (runs live in runs/<experiment>/<run id>)",
                )
            )
        elif not path.is_dir():
            problems.append(
                RunProblem(
                    path,
                    "not a directory: give a run directory (runs/<experiment>/<run id>) or a folder of runs",
                )
            )
        elif _is_run_dir(path):
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
                        f"holds {' or '.join(_RUN_MARKERS)}",
                    )
                )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    by_resolved = {p.resolve(): p for p in found}
    return [by_resolved[p] for p in unique], problems


def _is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _RUN_MARKERS)


def _runs_below(path: Path, depth: int) -> list[Path]:
    runs: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_run_dir(child):
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
        tdl_lightning.compare.RunError: /nonexistent: no such directory...
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such directory: check the path (runs live in runs/<experiment>/<run id>)")
    summary = _read_summary(path)
    wandb_info: dict[str, Any] | None = None
    sources: dict[str, str] = {}
    config_file = path / "config.yaml"
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
        sources["config"] = "config.yaml"
    else:
        wandb_info = read_wandb_run(path, history=True)
        if wandb_info is None or not wandb_info.get("config"):
            raise RunError(f"{path}: no config.yaml and no readable W&B run file: this is not a complete run")
        config = wandb_info["config"]
        sources["config"] = "wandb"
    curves = _read_metrics_csv(path / "metrics.csv")
    if curves is not None:
        sources["curves"] = "metrics.csv"
    else:
        wandb_info = wandb_info or read_wandb_run(path, history=True)
        curves = _history_curves(wandb_info.get("history", [])) if wandb_info else {}
        sources["curves"] = "wandb" if wandb_info else "none"
    plugin_curves = _read_plugin_histories(path)
    final = {k: float(v) for k, v in (summary.get("metrics") or {}).items() if _is_number(v)}
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


def _read_summary(path: Path) -> dict[str, Any]:
    file = path / "summary.json"
    if not file.is_file():
        state = ""
        info = read_wandb_run(path)
        if info is not None:
            state = f" (its W&B run file says state={info.get('state')!r})"
        if list((path / "checkpoints").glob("*.ckpt")):
            raise RunError(
                f"{path}: half-written run, no summary.json{state}: it was killed or is still running. "
                f"Wait for it to finish, or continue it with `tdl fit --resume {path}`"
            )
        raise RunError(
            f"{path}: half-written run, no summary.json{state}: it was killed or is still running. "
            "Wait for it to finish, or rerun it (`tdl sweep` reruns a sweep's unfinished runs); "
            "delete the folder to stop seeing this"
        )
    try:
        summary = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise RunError(
            f"{path}: summary.json is not valid JSON ({err}): the run was cut off while writing it; rerun it"
        ) from None
    if not isinstance(summary, dict):
        raise RunError(f"{path}: summary.json holds no run summary: rerun it")
    status = summary.get("status", "finished")
    if status != "finished":
        resume = f": continue it with `{summary['resume']}`" if summary.get("resume") else ""
        raise RunError(f"{path}: {status} run (stopped at step {summary.get('global_step')}){resume}")
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_metrics_csv(file: Path) -> dict[str, Curve] | None:
    if not file.is_file():
        return None
    curves: dict[str, Curve] = {}
    with file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = _to_int(row.get("step"))
            for key, text in row.items():
                if key in ("step", "epoch") or key is None or text in (None, ""):
                    continue
                try:
                    curves.setdefault(key, []).append((step, float(text)))
                except ValueError:
                    continue
    return {k: sorted(v, key=lambda sv: sv[0]) for k, v in curves.items()}


def _to_int(text: Any) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return -1


def _history_curves(history: list[dict[str, Any]]) -> dict[str, Curve]:
    curves: dict[str, Curve] = {}
    for row in history:
        step = _to_int(row.get("trainer/global_step", row.get("_step")))
        for key, value in row.items():
            if not key.startswith("_") and key not in ("epoch", "trainer/global_step") and _is_number(value):
                curves.setdefault(key, []).append((step, float(value)))
    return curves


def _read_plugin_histories(path: Path) -> dict[str, Curve]:
    curves: dict[str, Curve] = {}
    for file in sorted(path.glob("plugins/*/history.json")):
        try:
            entries = json.loads(file.read_text())
        except json.JSONDecodeError:
            continue
        for entry in entries if isinstance(entries, list) else []:
            step = _to_int(entry.get("step"))
            for key, value in entry.items():
                if "/" in key and _is_number(value):
                    curves.setdefault(key, []).append((step, float(value)))
    return curves


def compare_runs(
    paths: Sequence[str | Path], metrics: Sequence[str] | None = None, sort_by_config: bool = True
) -> Comparison:
    """Read the runs at ``paths`` (run directories or folders of runs) and compare them.

    Args:
        paths: run directories, or folders holding runs (``runs/edge_of_chaos_sweep``).
        metrics: metric names or globs (``val/acc``, ``hessian/*``); by default every metric in
            the runs' ``summary.json`` (``_step``/``_epoch`` twins left out).
        sort_by_config: order the runs by the config values that differ (a sweep's grid order);
            ``False`` keeps the order given.

    Unreadable paths become :attr:`Comparison.problems`; the others are compared. A metric asked
    for that no run has raises :class:`~tdl_lightning.errors.ConfigError`, naming those there are.

    Example:
        >>> comparison = compare_runs(["runs/edge_of_chaos_sweep"], metrics=["val/acc"])  # doctest: +SKIP
        >>> comparison.config_differences  # doctest: +SKIP
        {'model.model.sigma_w': [0.5, 1.0, 2.0], ...}
    """
    dirs, problems = find_run_dirs(paths)
    runs: list[RunRecord] = []
    for path in dirs:
        try:
            runs.append(load_run(path))
        except RunError as err:
            reason = str(err)
            prefix = f"{path}: "
            problems.append(RunProblem(path, reason[len(prefix) :] if reason.startswith(prefix) else reason))
    chosen = _choose_metrics(runs, metrics)
    comparison = Comparison.of(runs, chosen, problems)
    return comparison.sorted_by_config() if sort_by_config else comparison


def _choose_metrics(runs: list[RunRecord], metrics: Sequence[str] | None) -> list[str]:
    available = list(dict.fromkeys(n for run in runs for n in [*run.final, *run.curves, *run.plugin_curves]))
    if not metrics:
        from_summary = [k for run in runs for k in run.final if k not in run.plugin_curves]
        names = list(dict.fromkeys(from_summary))
        names = [n for n in names if _twin_of(n) not in names]
        order = {"val": 0, "test": 1, "train": 2}
        return sorted(names, key=lambda n: (order.get(n.split("/")[0], 3), n))
    chosen: list[str] = []
    for pattern in metrics:
        matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not matches and any(run.curve(pattern) for run in runs):
            matches = [pattern]
        if not matches and runs:
            raise ConfigError(
                f"metric {pattern!r} is in none of the runs: choose among {', '.join(sorted(available))}"
            )
        chosen += matches or [pattern]
    return list(dict.fromkeys(chosen))


def _twin_of(name: str) -> str | None:
    for suffix in ("_step", "_epoch"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _sort_key(value: Any) -> tuple[int, float, str]:
    if _is_number(value):
        return (0, float(value), "")
    return (1, 0.0, _canonical(value))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _display(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str) and "." in value and value.replace(".", "").replace("_", "").isalnum():
        return value.rsplit(".", 1)[-1] if value[0].isalpha() else value
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 7 else f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(_display(v) for v in value)
    return str(value)


def _short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            candidate = ".".join(parts[-n:])
            if not any(
                other != key and (other == candidate or other.endswith("." + candidate)) for other in keys
            ):
                break
        short[key] = candidate
    return short


def plot_comparison(comparison: Comparison, output: str | Path, plugins: Sequence[str] | None = None) -> Path:
    """Draw the runs' curves into one figure and save it at ``output`` (PNG, PDF or SVG).

    One panel per compared metric (value over steps), one per plugin scalar (its probes over
    steps; against the swept config value when each run probed it once), and one per per-layer
    plugin family such as ``init_statistics/q_layer_{l}``, drawn against the layer ``l`` (solid:
    last probe, dashed: first probe). A plugin's theory twins (``theory_<name>``, ``<name>_theory``)
    are drawn dotted in their quantity's panel. ``plugins`` (globs) chooses the plugin scalars;
    default all. Each run keeps its colour; values spanning decades get a log axis.

    Example:
        >>> run = RunRecord(Path("a"), "a", "s", {}, {}, curves={"val/acc": [(0, 0.1), (10, 0.8)]})
        >>> plot_comparison(Comparison.of([run], ["val/acc"]), "/tmp/compare.png").name
        'compare.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(comparison, plugins)
    if not panels:
        raise ConfigError("none of the runs has a curve to draw: choose metrics with --metric")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = comparison.labels()
    for ax, (title, kind, key) in zip(axes.flat, panels, strict=False):
        if kind == "final":
            _draw_final_against_config(ax, comparison, key, plt.get_cmap("viridis"))
        for i, run in enumerate(comparison.runs if kind != "final" else []):
            color = colors[i % len(colors)]
            if kind == "layers":
                _draw_layers(ax, run, key, color, labels[i])
                continue
            for curve_key, style in ((key, "-"), (_theory_twin(run, key), ":")):
                curve = run.curve(curve_key) if curve_key else []
                if curve:
                    xs, ys = zip(*curve, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        linestyle=style,
                        marker="." if len(curve) < 30 else None,
                        color=color,
                        label=labels[i] if style == "-" else None,
                    )
        _log_scale_if_needed(ax)
        ax.set_title(textwrap.fill(title, 60), fontsize=9)
        if kind != "final":
            ax.set_xlabel("layer l" if kind == "layers" else "step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    first = next((i for i, panel in enumerate(panels) if panel[1] != "final"), 0)
    handles, names = axes.flat[first].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=min(4, max(1, len(names))),
        fontsize=8,
        bbox_to_anchor=(0.5, 0.0),
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(names) / 4), 1, 1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _log_scale_if_needed(ax: Any) -> None:
    values = [float(y) for line in ax.get_lines() for y in line.get_ydata()]
    values = [v for v in values if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        ax.set_yscale("log")


def _theory_twin(run: RunRecord, key: str) -> str | None:
    """The plugin scalar holding the theory's value of ``key`` (``p/theory_x`` or ``p/x_theory``)."""
    head, _, name = key.rpartition("/")
    for twin in (f"{head}/theory_{name}", f"{head}/{name}_theory"):
        if twin in run.plugin_curves:
            return twin
    return None


def _is_theory_of_another(key: str, keys: Sequence[str]) -> bool:
    head, _, name = key.rpartition("/")
    base = name[len("theory_") :] if name.startswith("theory_") else name.removesuffix("_theory")
    return base != name and f"{head}/{base}" in keys


def _panels(comparison: Comparison, plugins: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    panels = [(m, "curve", m) for m in comparison.metrics if any(r.curve(m) for r in comparison.runs)]
    axis = _swept_axis(comparison)
    if axis is not None and panels:
        metric = panels[0][2]
        panels.insert(
            1,
            (
                f"final {metric} against {_short_names(list(comparison.config_differences))[axis]}",
                "final",
                metric,
            ),
        )
    plugin_keys = list(dict.fromkeys(k for r in comparison.runs for k in r.plugin_curves))
    if plugins is not None:
        plugin_keys = [k for k in plugin_keys if any(fnmatch.fnmatchcase(k, p) for p in plugins)]
    families: dict[str, list[str]] = {}
    for key in plugin_keys:
        family = _layer_family(key)
        if family:
            families.setdefault(family[0], []).append(key)
    families = {f: keys for f, keys in families.items() if len(keys) > 1}
    layered = {k for keys in families.values() for k in keys}
    for key in plugin_keys:
        if key in layered or key in comparison.metrics or _is_theory_of_another(key, plugin_keys):
            continue
        note = " (dotted: theory)" if any(_theory_twin(r, key) for r in comparison.runs) else ""
        once = all(len(r.curve(key)) <= 1 for r in comparison.runs)
        if once and axis is not None:
            short = _short_names(list(comparison.config_differences))[axis]
            panels.append((f"{key} (probed once) against {short}", "final", key))
        else:
            panels.append((f"{key}{note}", "curve", key))
    for family in families:
        theory = _theory_family(family)
        if family.endswith("_theory") and family[: -len("_theory")] in families:
            continue  # drawn dotted in the measured family's panel
        note = ", dotted: theory" if theory in families else ""
        panels.append((f"{family} over layers (solid: last probe, dashed: first{note})", "layers", family))
    return panels


def _layer_family(key: str) -> tuple[str, int] | None:
    """``("init_statistics/q_layer_{l}", 3)`` for ``init_statistics/q_layer_03``; else ``None``."""
    match = _LAYER_KEY.match(key)
    if match is None:
        return None
    return f"{match['head']}{{l}}{match['tail']}", int(match["layer"])


def _theory_family(family: str) -> str:
    return f"{family}_theory"


def _swept_axis(comparison: Comparison) -> str | None:
    """The config key to draw a final metric against: a numeric key among at most two that differ."""
    differences = comparison.config_differences
    numeric = [k for k, values in differences.items() if all(_is_number(v) for v in values)]
    if not numeric or len(differences) > 2 or len(comparison.runs) < 3:
        return None
    return max(reversed(numeric), key=lambda k: len({_canonical(v) for v in differences[k]}))


def _draw_final_against_config(ax: Any, comparison: Comparison, metric: str, cmap: Any) -> None:
    axis = _swept_axis(comparison)
    assert axis is not None
    short = _short_names(list(comparison.config_differences))
    other = next((k for k in comparison.config_differences if k != axis), None)
    groups: dict[str, list[tuple[float, float]]] = {}
    for i, run in enumerate(comparison.runs):
        value = run.value(metric, "final")
        if value is None:
            continue
        group = f"{short[other]}={_display(comparison.config_differences[other][i])}" if other else metric
        groups.setdefault(group, []).append((float(comparison.config_differences[axis][i]), value))
    for j, (group, points) in enumerate(groups.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="s", color=cmap(0.85 * j / max(1, len(groups) - 1)), label=group)
    ax.set_xlabel(short[axis])
    ax.legend(fontsize=8)


def _per_layer(run: RunRecord, family: str) -> dict[int, Curve]:
    per_layer = {}
    for key, curve in run.plugin_curves.items():
        found = _layer_family(key)
        if found and found[0] == family and curve:
            per_layer[found[1]] = curve
    return per_layer


def _draw_layers(ax: Any, run: RunRecord, family: str, color: str, label: str) -> None:
    per_layer = _per_layer(run, family)
    if not per_layer:
        return
    layers = sorted(per_layer)
    ax.plot(layers, [per_layer[l][-1][1] for l in layers], marker=".", color=color, label=label)
    if any(len(per_layer[l]) > 1 for l in layers):
        ax.plot(layers, [per_layer[l][0][1] for l in layers], linestyle="--", color=color, alpha=0.6)
    theory = _per_layer(run, _theory_family(family))
    if theory:
        layers = sorted(theory)
        ax.plot(layers, [theory[l][-1][1] for l in layers], linestyle=":", color=color, alpha=0.8)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdl compare",
        description="Compare local runs (no server needed): the config keys that differ, final and "
        "best metrics, and a figure of their curves and plugin curves.",
        epilog="example: tdl compare runs/edge_of_chaos_sweep --metric val/acc --output eoc.png",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories (runs/<experiment>/<id>) or folders of runs (runs/<experiment>)",
    )
    parser.add_argument(
        "--metric",
        "-m",
        action="extend",
        nargs="+",
        default=None,
        metavar="NAME",
        help="metrics to compare (names or globs such as 'hessian/*'); default: the "
        "metrics in the runs' summary.json",
    )
    parser.add_argument(
        "--plugins",
        action="extend",
        nargs="+",
        default=None,
        metavar="GLOB",
        help="plugin scalars to draw in the figure (e.g. 'init_statistics/q_layer_*'); default all",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON (for scripts)")
    parser.add_argument("--output", "-o", metavar="FIG", help="write a figure of the curves (.png/.pdf/.svg)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``tdl compare RUN_DIR... [--metric NAME ...] [--json] [--output FIG]``.

    Problems with single runs are printed to stderr and the others are compared; when no run
    can be read, the command fails with the list of reasons.

    Example:
        >>> main(["runs/edge_of_chaos_sweep", "--metric", "val/acc", "--output", "eoc.png"])  # doctest: +SKIP
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    comparison = compare_runs(args.runs, metrics=args.metric)
    for problem in comparison.problems:
        print(f"tdl compare: skipped {problem.message()}", file=sys.stderr)
    if not comparison.runs:
        raise TDLError("no run to compare: " + "; ".join(p.message() for p in comparison.problems))
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2, default=str))
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # a pipe or a file: no need to squeeze the table into 80 columns
            console = Console(width=max(80, Console(width=400).measure(comparison.table()).maximum))
        console.print(comparison.table())
    if args.output:
        path = plot_comparison(comparison, args.output, plugins=args.plugins)
        print(f"tdl compare: figure written to {path}", file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
