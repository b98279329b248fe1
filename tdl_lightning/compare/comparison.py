"""What differs between runs: the config keys whose values differ, the metrics compared, the problems.

Example:
    >>> a = RunRecord(Path("runs/s/a"), "a", "s", {"lr": 0.1, "depth": 4}, {"val/acc": 0.5})
    >>> b = RunRecord(Path("runs/s/b"), "b", "s", {"lr": 0.1, "depth": 8}, {"val/acc": 0.7})
    >>> Comparison.of([a, b], ["val/acc"]).config_differences
    {'depth': [4, 8]}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdl_lightning.compare.table import comparison_table
from tdl_lightning.compare.twins import step_twin_of
from tdl_lightning.compare.values import canonical, display_value, short_names, sort_key
from tdl_lightning.errors import ConfigError
from tdl_lightning.runs.reading import RunError, RunProblem, find_run_dirs, flatten_config, load_run
from tdl_lightning.runs.record import RunRecord

__all__ = ["Comparison", "choose_metrics", "class_lists_expanded", "compare_runs"]

IDENTITY_KEYS = ("run.id", "weights_only")
"""Config keys that name a run or say how it was loaded rather than configure it: its id is the
table's first column, and ``weights_only`` is how a checkpoint was read. (``ckpt_path`` is left out
where it is the run's own checkpoint, that of a resume: :func:`_started_from`.)"""


def _started_from(run: RunRecord) -> dict[str, Any]:
    """``run.config`` without ``ckpt_path`` where it names a checkpoint of the run itself (a resumed run):
    a run that started from another's checkpoint keeps it, as a real difference.

    Example:
        >>> own = {"ckpt_path": "runs/x/r1/checkpoints/last.ckpt"}
        >>> _started_from(RunRecord(Path("runs/x/r1"), "r1", "x", own, {}))
        {}
    """
    start = run.config.get("ckpt_path")
    folder = Path(start).parent if isinstance(start, str) else None  # <run id>/checkpoints, from anywhere
    if folder is not None and folder.name == "checkpoints" and folder.parent.name == run.path.name:
        return {k: v for k, v in run.config.items() if k != "ckpt_path"}
    return run.config


def class_lists_expanded(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (flattened) with each list of classes, such as ``trainer.callbacks``, as the list of
    their names and one dotted key per argument of each (``trainer.callbacks.HessianEigenvalues.k``;
    a class listed twice has ``_2`` after its second name), so that runs differ by name where they
    differ and a table cell never holds a whole list of configs.

    Example:
        >>> callbacks = [{"class_path": "plugins.HessianEigenvalues", "init_args": {"k": 2, "tol": 1e-3}}]
        >>> class_lists_expanded({"seed_everything": 0, "trainer.callbacks": callbacks})
        ... # doctest: +NORMALIZE_WHITESPACE
        {'seed_everything': 0, 'trainer.callbacks': ['HessianEigenvalues'],
         'trainer.callbacks.HessianEigenvalues.k': 2, 'trainer.callbacks.HessianEigenvalues.tol': 0.001}
    """
    expanded: dict[str, Any] = {}
    for key, value in config.items():
        if not _is_class_list(value):
            expanded[key] = value
            continue
        names: list[str] = []
        expanded[key] = names  # before its arguments
        for item in value:
            name = str(item["class_path"]).rsplit(".", 1)[-1]
            count = sum(n == name or n.startswith(f"{name}_") for n in names)
            names.append(name if count == 0 else f"{name}_{count + 1}")
            arguments = item.get("init_args")
            for argument, setting in flatten_config(arguments if isinstance(arguments, dict) else {}).items():
                expanded[f"{key}.{names[-1]}.{argument}"] = setting
    return expanded


def _is_class_list(value: Any) -> bool:
    return (
        bool(value)
        and isinstance(value, list)
        and all(isinstance(v, dict) and "class_path" in v for v in value)
    )


def _differs_by_presence_only(key: str, differences: dict[str, list[Any]]) -> bool:
    """Whether ``key`` (an argument of a listed class) differs only in that some runs lack the class:
    the list's own key shows that already."""
    for owner, lists in differences.items():
        prefix = f"{owner}."
        if key.startswith(prefix) and all(n is None or isinstance(n, list) for n in lists):
            names = [n or [] for n in lists]  # a run without the key lists no class
            name = key[len(prefix) :].split(".", 1)[0]
            values = differences[key]
            present = [v for v, listed in zip(values, names, strict=True) if name in listed]
            if not present:  # not an argument of a listed class
                return False
            return all(canonical(v) == canonical(present[0]) for v in present) and all(
                v is None for v, listed in zip(values, names, strict=True) if name not in listed
            )
    return False


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
        configs = [class_lists_expanded(_started_from(run)) for run in runs]
        keys: list[str] = []
        for config in configs:
            keys += [k for k in config if k not in keys and k not in IDENTITY_KEYS]
        differences = {}
        for key in keys:
            values = [config.get(key) for config in configs]
            if any(canonical(v) != canonical(values[0]) for v in values[1:]):
                differences[key] = values
        for key in [k for k in differences if _differs_by_presence_only(k, differences)]:
            del differences[key]
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
            key=lambda i: (
                [sort_key(self.config_differences[k][i]) for k in keys] + [(2, 0.0, self.runs[i].run_id)]
            ),  # ties: by run id
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
        short = short_names(list(self.config_differences))
        keys = list(self.config_differences)[:3]
        labels = []
        for i, run in enumerate(self.runs):
            parts = [f"{short[k]}={display_value(self.config_differences[k][i])}" for k in keys]
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

        The best value of each metric column is shown in bold (see :func:`comparison_table`).

        Example:
            >>> a = RunRecord(Path("a"), "a", "s", {"lr": 0.1}, {"val/acc": 0.5})
            >>> Comparison.of([a], ["val/acc"]).table().row_count
            1
        """
        return comparison_table(self)


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
        >>> comparison = compare_runs(["/nonexistent/run"])
        >>> comparison.runs, comparison.problems[0].reason.split(":")[0]
        ([], 'no such file or directory')
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
    chosen = choose_metrics(runs, metrics)
    comparison = Comparison.of(runs, chosen, problems)
    return comparison.sorted_by_config() if sort_by_config else comparison


def choose_metrics(runs: list[RunRecord], metrics: Sequence[str] | None) -> list[str]:
    """The metrics to compare: those matching ``metrics`` (names or globs), else the runs' summary metrics.

    The default leaves out plugin scalars and the ``_step``/``_epoch`` twins of a metric, and puts
    ``val/`` first, then ``test/``, then ``train/``. A name or glob that no run has raises
    :class:`~tdl_lightning.errors.ConfigError` naming those there are.

    Example:
        >>> final = {"train/loss": 1.0, "train/loss_step": 1.1, "val/acc": 0.9}
        >>> run = RunRecord(Path("r"), "r", "e", {}, final)
        >>> choose_metrics([run], None), choose_metrics([run], ["train/*"])
        (['val/acc', 'train/loss'], ['train/loss', 'train/loss_step'])
    """
    available = list(dict.fromkeys(n for run in runs for n in [*run.final, *run.curves, *run.plugin_curves]))
    if not metrics:
        from_summary = [k for run in runs for k in run.final if k not in run.plugin_curves]
        names = list(dict.fromkeys(from_summary))
        names = [n for n in names if step_twin_of(n) not in names]
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
