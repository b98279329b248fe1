"""``tdl sweep``: run a W&B sweep config locally, one ``tdl fit`` after another (or K at once).

The sweep configs in ``experiments/sweeps/`` are ordinary W&B sweep configs: ``wandb sweep`` +
``wandb agent`` run them online. With no server, ``tdl sweep CONFIG`` expands the same config
(``grid``: every combination; ``random``: ``--max-runs`` draws from a seeded generator; ``bayes``
needs the server, so it runs as ``random`` here) and runs its ``command`` once per point, with
``${args}`` replaced by ``--key=value`` exactly as ``wandb agent`` does. Every run is a normal run
of experiment ``<sweep name>``, so ``tdl compare runs/<sweep name>`` compares them.

It is not a scheduler: it stops cleanly on Ctrl-C (its runs are interrupted and left unfinished)
and the same command resumes: runs that finished (a ``summary.json`` whose config holds the
run's values) are skipped.

    tdl sweep experiments/sweeps/edge_of_chaos.yaml --parallel 2
    tdl sweep experiments/sweeps/optimizer_lr.yaml --max-runs 6 --dry-run

Example:
    >>> sweep = SweepConfig.from_dict({"name": "demo", "method": "grid",
    ...     "command": ["tdl", "fit", "--config", "base.yaml", "${args}"],
    ...     "parameters": {"optimizer.lr": {"values": [0.1, 0.01]}, "trainer.max_epochs": {"value": 2}}})
    >>> [point["optimizer.lr"] for point in expand_sweep(sweep)]
    [0.1, 0.01]
    >>> sweep_arguments({"optimizer.lr": 0.1, "run.experiment": "demo"})
    ['--optimizer.lr=0.1', '--run.experiment=demo']
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import random
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdl_lightning.errors import ConfigError, TDLError
from tdl_lightning.runs.reading import flatten_config
from tdl_lightning.sweep_plan import Slot, in_shard, parse_shard, plan_slots

__all__ = [
    "SweepConfig",
    "SweepReport",
    "SweepRun",
    "build_command",
    "config_matches",
    "expand_sweep",
    "expected_settings",
    "find_finished_runs",
    "main",
    "plan_sweep",
    "run_sweep",
    "sample_parameter",
    "sweep_arguments",
]

_METHODS = ("grid", "random", "bayes")
_DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_EXPERIMENT_KEY = "run.experiment"
_GRACE_SECONDS = 30.0


def _q(value: float, spec: dict[str, Any]) -> float:
    q = float(spec.get("q", 1))
    return round(value / q) * q


def _log_uniform_values(rng: random.Random, s: dict[str, Any]) -> float:
    return math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))


_SAMPLERS: dict[str, Callable[[random.Random, dict[str, Any]], Any]] = {
    "constant": lambda rng, s: s["value"],
    "categorical": lambda rng, s: rng.choices(s["values"], weights=s.get("probabilities"))[0],
    "int_uniform": lambda rng, s: rng.randint(int(s["min"]), int(s["max"])),
    "uniform": lambda rng, s: rng.uniform(s["min"], s["max"]),
    "q_uniform": lambda rng, s: _q(rng.uniform(s["min"], s["max"]), s),
    "log_uniform": lambda rng, s: math.exp(rng.uniform(s["min"], s["max"])),
    "q_log_uniform": lambda rng, s: _q(math.exp(rng.uniform(s["min"], s["max"])), s),
    "log_uniform_values": _log_uniform_values,
    "q_log_uniform_values": lambda rng, s: _q(_log_uniform_values(rng, s), s),
    "inv_log_uniform": lambda rng, s: 1.0 / math.exp(rng.uniform(s["min"], s["max"])),
    "inv_log_uniform_values": lambda rng, s: 1.0 / _log_uniform_values(rng, s),
    "normal": lambda rng, s: rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0)),
    "q_normal": lambda rng, s: _q(rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0)), s),
    "log_normal": lambda rng, s: math.exp(rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))),
    "q_log_normal": lambda rng, s: _q(math.exp(rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))), s),
    "beta": lambda rng, s: rng.betavariate(s.get("a", 1.0), s.get("b", 1.0)),
    "q_beta": lambda rng, s: _q(rng.betavariate(s.get("a", 1.0), s.get("b", 1.0)), s),
}


@dataclass
class SweepConfig:
    """A W&B sweep config, checked for what a local run needs.

    Attributes:
        name: the sweep's name (``name:``, else the file's stem): its runs' experiment.
        method: ``grid``, ``random`` or ``bayes``.
        parameters: ``name -> spec`` (``value``, ``values``, ``min``/``max``, ``distribution``, ...).
        command: the command, with W&B's macros (``${args}``, ``${program}``, ...).
        program: the ``program:`` key, if any.
        run_cap: the ``run_cap:`` key, if any (the number of runs W&B stops after).
        metric: the ``metric:`` key (``name``, ``goal``), if any.
        notes: what differs locally from the server (printed before the runs start).

    Example:
        >>> SweepConfig.from_dict({"method": "bayes", "parameters": {"lr": {"min": 0.1, "max": 1.0}},
        ...     "command": ["tdl", "fit", "${args}"]}, name="opt").notes[0][:40]
        'method bayes needs the W&B server: runni'
    """

    name: str
    method: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    program: str | None = None
    run_cap: int | None = None
    metric: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> SweepConfig:
        """Read and check a sweep config YAML.

        Example:
            >>> SweepConfig.load("experiments/sweeps/edge_of_chaos.yaml").method  # doctest: +SKIP
            'grid'
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"sweep config {path} not found: give the path of a W&B sweep YAML, "
                "e.g. experiments/sweeps/edge_of_chaos.yaml"
            )
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"sweep config {path} is not valid YAML: {err}") from None
        return cls.from_dict(raw, name=path.stem, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, name: str = "sweep", source: str = "the sweep config") -> SweepConfig:
        """Check a sweep config given as a dict (as loaded from YAML).

        Example:
            >>> SweepConfig.from_dict({"method": "grid", "parameters": {"lr": {"values": [1, 2]}},
            ...     "command": ["tdl", "fit", "${args}"]}).name
            'sweep'
        """
        if not isinstance(raw, dict) or "parameters" not in raw:
            raise ConfigError(
                f"{source} is not a W&B sweep config (it has no `parameters:` section); an "
                "experiment config runs with `tdl fit --config FILE`"
            )
        method = raw.get("method")
        if method not in _METHODS:
            raise ConfigError(f"{source}: method must be one of {', '.join(_METHODS)}, got {method!r}")
        notes = []
        if method == "bayes":
            notes.append(
                "method bayes needs the W&B server: running a seeded random search locally "
                "(`wandb sweep` + `wandb agent` run the Bayesian search)"
            )
        if raw.get("early_terminate"):
            notes.append("early_terminate is applied by the W&B server only: every local run goes to the end")
        parameters = raw["parameters"]
        if not isinstance(parameters, dict) or not parameters:
            raise ConfigError(f"{source}: `parameters:` must map each swept key to its values")
        checked = {str(k): _check_parameter(source, str(k), spec, method) for k, spec in parameters.items()}
        command = raw.get("command") or list(_DEFAULT_COMMAND)
        if not isinstance(command, list) or not all(isinstance(t, str) for t in command):
            raise ConfigError(
                f"{source}: `command:` must be a list of strings, e.g. "
                "[tdl, fit, --config, experiments/x.yaml, ${args}]"
            )
        if not any(t in ("${args}", "${args_no_hyphens}", "${args_json}") for t in command):
            raise ConfigError(
                f"{source}: `command:` has no ${{args}}, so the swept values would never "
                "reach the run: end it with ${args}"
            )
        program = raw.get("program")
        if any("${program}" in t for t in command) and not program:
            raise ConfigError(f"{source}: the command uses ${{program}} but there is no `program:` key")
        run_cap = raw.get("run_cap")
        if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
            raise ConfigError(f"{source}: run_cap must be a whole number >= 1, got {run_cap!r}")
        return cls(
            str(raw.get("name") or name),
            method,
            checked,
            list(command),
            program,
            run_cap,
            raw.get("metric"),
            notes,
        )

    @property
    def experiment(self) -> str:
        """The experiment its runs belong to: ``run.experiment`` if the sweep sets it, else its name.

        Example:
            >>> SweepConfig("eoc", "grid", {"lr": {"value": 1}}, ["${args}"]).experiment
            'eoc'
        """
        spec = self.parameters.get(_EXPERIMENT_KEY, {})
        return str(spec.get("value", self.name))


def _check_parameter(source: str, key: str, spec: Any, method: str) -> dict[str, Any]:
    where = f"{source}: parameter {key!r}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{values: [1, 2]}} or {{value: 1}}")
    if "parameters" in spec:
        raise ConfigError(
            f"{where} nests parameters, which tdl sweep does not expand: use dotted names "
            f"such as {key}.init_args.<name>"
        )
    spec = dict(spec)
    if "distribution" not in spec:
        if "value" in spec:
            spec["distribution"] = "constant"
        elif "values" in spec:
            spec["distribution"] = "categorical"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            spec["distribution"] = "int_uniform" if ints else "uniform"
        else:
            raise ConfigError(f"{where} needs `value`, `values`, `min`/`max` or a `distribution`")
    for bound in ("min", "max", "mu", "sigma", "q", "a", "b"):
        if isinstance(spec.get(bound), str):
            raise ConfigError(
                f"{where}: {bound} is the text {spec[bound]!r}, not a number: YAML reads 1e-4 as text, "
                "so write 1.0e-4"
            )
    distribution = spec["distribution"]
    if distribution not in _SAMPLERS:
        raise ConfigError(f"{where}: unknown distribution {distribution!r}; W&B's are {', '.join(_SAMPLERS)}")
    if distribution == "categorical" and (not isinstance(spec.get("values"), list) or not spec["values"]):
        raise ConfigError(f"{where}: `values` must be a non-empty list")
    if distribution == "constant" and "value" not in spec:
        raise ConfigError(f"{where}: a constant needs `value`")
    if method == "grid" and distribution not in ("constant", "categorical"):
        raise ConfigError(
            f"{where} has distribution {distribution!r}, which a grid cannot enumerate: "
            "give it `values: [...]`, or use method: random"
        )
    return spec


def sample_parameter(spec: dict[str, Any], rng: random.Random) -> Any:
    """One draw of a checked parameter spec (W&B's distributions) from ``rng``.

    Example:
        >>> rng = random.Random(0)
        >>> 1e-4 <= sample_parameter({"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        ...                          rng) <= 0.1
        True
    """
    return _SAMPLERS[spec["distribution"]](rng, spec)


def expand_sweep(sweep: SweepConfig, max_runs: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The points of a sweep: ``[{parameter: value}, ...]`` in the order they run.

    ``grid``: every combination (the last parameter varies fastest), cut at ``max_runs``;
    ``random``/``bayes``: ``max_runs`` (or ``run_cap``) draws from ``random.Random(seed)``, so the
    same seed gives the same points and an interrupted sweep resumes. Every point carries
    ``run.experiment`` (the sweep's name unless the sweep sets it).

    Example:
        >>> sweep = SweepConfig("s", "random", {"lr": {"distribution": "uniform", "min": 0, "max": 1}},
        ...                     ["${args}"])
        >>> expand_sweep(sweep, max_runs=3, seed=1) == expand_sweep(sweep, max_runs=3, seed=1)
        True
    """
    if max_runs is not None and max_runs < 1:
        raise ConfigError(f"--max-runs must be >= 1, got {max_runs}")
    limit = max_runs if max_runs is not None else sweep.run_cap
    keys = list(sweep.parameters)
    if sweep.method == "grid":
        axes = [_grid_values(sweep.parameters[k]) for k in keys]
        points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]
        points = points[:limit] if limit is not None else points
    else:
        if limit is None:
            raise ConfigError(
                f"sweep {sweep.name!r} is a {sweep.method} search, which never ends on its own: "
                "give --max-runs N (or run_cap: N in the config)"
            )
        rng = random.Random(seed)
        points = [{k: sample_parameter(sweep.parameters[k], rng) for k in keys} for _ in range(limit)]
    for point in points:
        point.setdefault(_EXPERIMENT_KEY, sweep.name)
    return points


def _grid_values(spec: dict[str, Any]) -> list[Any]:
    return [spec["value"]] if spec["distribution"] == "constant" else list(spec["values"])


def sweep_arguments(point: dict[str, Any]) -> list[str]:
    """``--key=value`` for every parameter of a point, formatted exactly as ``wandb agent`` does.

    Example:
        >>> sweep_arguments({"model.init_args.model.init_args.depth": 8, "trainer.logger": False})
        ['--model.init_args.model.init_args.depth=8', '--trainer.logger=False']
    """
    return [f"--{key}={value}" for key, value in point.items()]


def build_command(sweep: SweepConfig, point: dict[str, Any]) -> list[str]:
    """The command of one run: the sweep's ``command`` with W&B's macros filled in.

    ``${args}`` -> ``--key=value`` ..., ``${args_no_hyphens}`` -> ``key=value`` ...,
    ``${args_json}`` -> one JSON object, ``${interpreter}`` -> this Python, ``${program}`` -> the
    ``program:`` key, ``${env}`` -> dropped, ``${envvar:NAME}`` -> ``$NAME``.

    Example:
        >>> sweep = SweepConfig("s", "grid", {}, ["tdl", "fit", "--config", "x.yaml", "${args}"])
        >>> build_command(sweep, {"optimizer.lr": 0.1})
        ['tdl', 'fit', '--config', 'x.yaml', '--optimizer.lr=0.1']
    """
    command: list[str] = []
    for token in sweep.command:
        if token == "${args}":
            command += sweep_arguments(point)
        elif token == "${args_no_hyphens}":
            command += [arg[2:] for arg in sweep_arguments(point)]
        elif token == "${args_json}":
            command.append(json.dumps(point))
        elif token == "${env}":
            continue
        elif token == "${interpreter}":
            command.append(sys.executable)
        else:
            token = token.replace("${program}", str(sweep.program or ""))
            token = re.sub(r"\$\{envvar:([A-Za-z0-9_]+)\}", lambda m: os.environ.get(m[1], ""), token)
            if "${" in token:
                raise ConfigError(f"sweep {sweep.name!r}: unknown macro in command token {token!r}")
            command.append(token)
    return command


def _executable(command: list[str]) -> list[str]:
    """``tdl ...`` runs as ``<this python> -m tdl_lightning.cli ...``: the same installation."""
    if command and command[0] == "tdl":
        return [sys.executable, "-m", "tdl_lightning.cli", *command[1:]]
    return command


def _fixed_options(command: list[str]) -> dict[str, Any]:
    """``--key=value`` / ``--key value`` options of a command (``--config`` excluded), values parsed."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(command):
        token = command[i]
        if token.startswith("--") and len(token) > 2:
            if "=" in token:
                key, text = token[2:].split("=", 1)
            elif i + 1 < len(command) and not command[i + 1].startswith("--"):
                key, text = token[2:], command[i + 1]
                i += 1
            else:
                key, text = token[2:], "true"
            if key != "config":
                options[key] = _parse_value(text)
        i += 1
    return options


def _parse_value(text: str) -> Any:
    """A command-line value as LightningCLI reads it (YAML), with ``1e-05`` read as a number too."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _config_files(command: list[str]) -> list[Path]:
    files = []
    for i, token in enumerate(command):
        if token == "--config" and i + 1 < len(command):
            files.append(Path(command[i + 1]))
        elif token.startswith("--config="):
            files.append(Path(token.split("=", 1)[1]))
    return files


def _runs_root(command: list[str], options: dict[str, Any]) -> Path:
    """Where the runs go: ``run.root`` from the options, else from the config files, else ``runs``."""
    if "run.root" in options:
        return Path(str(options["run.root"]))
    root = "runs"
    for file in _config_files(command):
        loaded = yaml.safe_load(file.read_text()) if file.is_file() else None
        run_section = loaded.get("run") if isinstance(loaded, dict) else None
        if isinstance(run_section, dict) and run_section.get("root"):
            root = str(run_section["root"])
    return Path(root)


def _normal_key(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "init_args")


def _same_class(wanted: Any, class_path: Any) -> bool:
    return str(class_path) == str(wanted) or str(class_path).endswith(f".{wanted}")


def _same_value(wanted: Any, actual: Any) -> bool:
    if isinstance(wanted, str) and not isinstance(actual, str):
        wanted = _parse_value(wanted)
    numbers = (int, float)
    if isinstance(wanted, numbers) and isinstance(actual, numbers) and not isinstance(wanted, bool):
        return not isinstance(actual, bool) and math.isclose(wanted, actual, rel_tol=1e-9, abs_tol=1e-12)
    return wanted == actual or str(wanted).lower() == str(actual).lower()


def config_matches(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a run's resolved config (``config.yaml``) holds every ``wanted`` dotted key's value.

    Keys may be written with or without LightningCLI's ``init_args`` levels; a class given by
    name (``optimizer: SGD``) matches its ``class_path``; a list or mapping (``trainer.callbacks``)
    matches when the run's holds at least what it says.

    Example:
        >>> config = {"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}}
        >>> config_matches(config, {"optimizer": "SGD", "optimizer.init_args.lr": 0.1})
        True
        >>> config_matches(config, {"optimizer.lr": 0.2})
        False
        >>> config_matches(config, {"optimizer": {"class_path": "SGD", "init_args": {"lr": 0.1}}})
        True
        >>> config_matches(config, {"optimizer": {"class_path": "SGD", "lr": 0.2}})
        False
    """
    flat = flatten_config(config)
    for key, value in wanted.items():
        key = _normal_key(key)
        if isinstance(value, dict) and key not in flat:  # a swept mapping: each of its dotted keys
            same = config_matches(config, {f"{key}.{k}": v for k, v in value.items()})
        elif key in flat:
            same = (
                _same_class(value, flat[key])
                if key.split(".")[-1] == "class_path"
                else _contains(flat[key], value)
            )
        elif f"{key}.class_path" in flat:
            same = _same_class(value, flat[f"{key}.class_path"])
        else:
            same = False
        if not same:
            return False
    return True


def _contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` (a resolved config value) holds everything ``wanted`` (as written) says."""
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return False
        inner = actual.get("init_args") if isinstance(actual.get("init_args"), dict) else {}
        for key, value in wanted.items():
            if key == "class_path":
                same = _same_class(value, actual.get("class_path"))
            elif key in actual:
                same = _contains(actual[key], value)
            else:
                same = key in inner and _contains(inner[key], value)
            if not same:
                return False
        return True
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    if isinstance(actual, dict) and "class_path" in actual:
        return _same_class(wanted, actual["class_path"])
    return _same_value(wanted, actual)


def expected_settings(command: list[str]) -> dict[str, Any]:
    """What a finished run of ``command`` must hold: its config files' settings, then its options.

    Settings of later ``--config`` files and of ``--key=value`` options replace earlier ones, so a
    run made before the base config changed does not count as finished.

    Example:
        >>> expected_settings(["tdl", "fit", "--trainer.max_epochs=3", "--run.experiment=eoc"])
        {'trainer.max_epochs': 3, 'run.experiment': 'eoc'}
    """
    settings: dict[str, Any] = {}
    options = {_normal_key(k): v for k, v in _fixed_options(command).items()}
    for file in _config_files(command):
        loaded = yaml.safe_load(file.read_text()) if file.is_file() else None
        if isinstance(loaded, dict):
            settings.update(flatten_config(loaded))
    overridden = [k for k in settings if any(k == o or k.startswith(f"{o}.") for o in options)]
    for key in overridden:
        del settings[key]
    settings.update(options)
    return settings


def find_finished_runs(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(run dir, resolved config)`` of every finished run (with ``summary.json``) in ``runs_dir``.

    Example:
        >>> find_finished_runs(Path("/nonexistent"))
        []
    """
    finished = []
    if not runs_dir.is_dir():
        return finished
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file():
            try:
                config = yaml.safe_load((run_dir / "config.yaml").read_text())
            except yaml.YAMLError:
                continue
            if isinstance(config, dict):
                finished.append((run_dir, config))
    return finished


@dataclass
class SweepRun:
    """One point of a sweep and what became of it.

    Attributes:
        index: its place in the sweep (1-based).
        point: ``{parameter: value}``.
        command: the command as written for a person (``tdl fit ... --key=value``).
        status: ``planned``, ``skipped`` (finished before), ``done``, ``failed`` or ``interrupted``.
        run_dir: the run's directory, when known.
        seconds: how long it ran.
        log: the file holding its output.

    Example:
        >>> SweepRun(1, {"lr": 0.1}, ["tdl", "fit", "--lr=0.1"]).label()
        'lr=0.1'
    """

    index: int
    point: dict[str, Any]
    command: list[str]
    status: str = "planned"
    run_dir: Path | None = None
    seconds: float | None = None
    log: Path | None = None

    def label(self) -> str:
        """The swept values in short: ``sigma_w=1.5 depth=8`` (``run.experiment`` left out)."""
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.point.items() if k != _EXPERIMENT_KEY)


@dataclass
class SweepReport:
    """What :func:`run_sweep` did: every run with its status, and whether it was interrupted.

    Example:
        >>> report = SweepReport("eoc", Path("runs/eoc"), [SweepRun(1, {}, [], status="done")])
        >>> report.count("done"), report.interrupted
        (1, False)
    """

    name: str
    runs_dir: Path
    runs: list[SweepRun]
    interrupted: bool = False

    def count(self, status: str) -> int:
        """How many runs have ``status``."""
        return sum(run.status == status for run in self.runs)


def plan_sweep(
    config: str | Path | SweepConfig, max_runs: int | None = None, seed: int = 0
) -> tuple[SweepConfig, SweepReport]:
    """Expand a sweep and mark the runs that already finished (``skipped``); nothing is run.

    Example:
        >>> sweep, report = plan_sweep("experiments/sweeps/edge_of_chaos.yaml")  # doctest: +SKIP
        >>> [run.status for run in report.runs][:2]  # doctest: +SKIP
        ['planned', 'planned']
    """
    sweep = config if isinstance(config, SweepConfig) else SweepConfig.load(config)
    points = expand_sweep(sweep, max_runs=max_runs, seed=seed)
    first = build_command(sweep, points[0]) if points else []
    for file in _config_files(first):
        if not file.is_file():
            raise ConfigError(
                f"the sweep's command reads {file}, which is not there from {Path.cwd()}: run tdl sweep "
                "from the repository root (command paths are relative to it, as for `wandb agent`)"
            )
    runs_dir = _runs_root(first, _fixed_options(first)) / sweep.experiment
    finished = find_finished_runs(runs_dir)
    runs = []
    for index, point in enumerate(points, start=1):
        command = build_command(sweep, point)
        run = SweepRun(index, point, command)
        wanted = expected_settings(command)
        match = next((f for f in finished if config_matches(f[1], wanted)), None)
        if match is not None:
            finished.remove(match)  # one finished run stands for one point: duplicates run again
            run.status, run.run_dir = "skipped", match[0]
        runs.append(run)
    return sweep, SweepReport(sweep.name, runs_dir, runs)


def _say(line: str) -> None:
    print(line, flush=True)  # progress lines show up at once, also in a log file


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted()


def run_sweep(
    config: str | Path | SweepConfig,
    max_runs: int | None = None,
    parallel: int = 1,
    dry_run: bool = False,
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> SweepReport:
    """Run a sweep locally: each point a ``tdl fit`` subprocess, ``parallel`` at a time.

    With ``parallel > 1`` each run goes to a slot of :func:`~tdl_lightning.sweep_plan.plan_slots`
    (its own GPU round robin, its share of the usable CPUs); ``shard=(i, N)`` runs only the
    ``i``-th of ``N`` shares of the points (:func:`~tdl_lightning.sweep_plan.in_shard`).

    Finished runs are skipped; each run's output goes to ``<runs dir>/.sweep-logs/``, progress
    lines to ``echo`` (default: printed). Ctrl-C (or
    SIGTERM) interrupts the running runs (SIGINT, so Lightning shuts down cleanly; killed after
    30 s or at a second Ctrl-C), starts no more, and returns with ``interrupted=True``: the same
    call resumes.

    Example:
        >>> report = run_sweep("experiments/sweeps/edge_of_chaos.yaml", dry_run=True)  # doctest: +SKIP
        >>> report.count("planned")  # doctest: +SKIP
        9
    """
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    echo = echo or _say
    sweep, report = plan_sweep(config, max_runs=max_runs, seed=seed)
    report.runs = [run for run in report.runs if in_shard(run.index, shard)]
    slots = plan_slots(parallel) if parallel > 1 else []  # one at a time: the run has the whole host
    for note in sweep.notes:
        echo(f"note: {note}")
    total = len(report.runs) if shard is None else len(expand_sweep(sweep, max_runs=max_runs, seed=seed))
    todo = [run for run in report.runs if run.status == "planned"]
    skipped = len(report.runs) - len(todo)
    share = "" if shard is None else f", share {shard[0]}/{shard[1]}: {len(report.runs)} of them"
    echo(
        f"sweep {sweep.name} ({sweep.method}): {total} runs{share}, {skipped} finished before, "
        f"{len(todo)} to run; runs in {report.runs_dir}"
    )
    for slot in slots:
        echo(f"slot {slot.index + 1}/{len(slots)}: {slot.describe()}")
    if dry_run:
        for run in report.runs:
            state = f"skip (finished: {run.run_dir})" if run.status == "skipped" else "run "
            echo(f"[{run.index}/{total}] {state}  {shlex.join(run.command)}")
        return report
    logs = report.runs_dir / ".sweep-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # each run starts its own W&B service: attached to this process's one (a notebook that used
    # wandb, a test session), a run's file could be left unwritten when this process moves on
    env.pop("WANDB_SERVICE", None)
    busy: dict[int, Slot] = {}  # process id -> its slot
    running: list[tuple[SweepRun, subprocess.Popen[bytes], float, Any]] = []
    # Our own handlers, even where SIGINT was ignored (a sweep started with `&`): the runs, started
    # after this, get the default handlers back, so SIGINT reaches Lightning's clean shutdown.
    in_main_thread = threading.current_thread() is threading.main_thread()
    signums = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in signums}
    try:
        while todo or running:
            while todo and len(running) < parallel:
                run = todo.pop(0)
                run.log = logs / f"{run.index:03d}.log"
                handle = run.log.open("wb")
                slot = next((s for s in slots if s not in busy.values()), None)
                where = f" on slot {slot.index + 1}" if slot is not None else ""
                echo(f"[{run.index}/{total}] start {run.label()}{where}")
                point_env = {**env, "WANDB_RUN_ID": _run_identity(run, report.runs_dir)}
                process = subprocess.Popen(
                    _executable(run.command),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=point_env if slot is None else slot.env(point_env),
                    start_new_session=True,  # Ctrl-C reaches the sweep, which then stops its runs
                    preexec_fn=None
                    if slot is None
                    else functools.partial(os.sched_setaffinity, 0, slot.cpus),
                )
                if slot is not None:
                    busy[process.pid] = slot
                running.append((run, process, time.monotonic(), handle))
            time.sleep(0.2)
            for item in [item for item in running if item[1].poll() is not None]:
                running.remove(item)
                busy.pop(item[1].pid, None)
                _finish(item, total, echo, sweep.metric)
    except _Interrupted:
        report.interrupted = True
        echo(f"interrupted: stopping {len(running)} running run(s) ...")
        try:
            _stop(running)
        except _Interrupted:  # a second Ctrl-C: no more waiting
            for _, process, _, _ in running:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for item in running:
            item[0].status = "interrupted"
            item[3].close()
        echo(
            f"stopped. Resume with the same command: the {report.count('done') + skipped} finished runs "
            "are skipped"
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return report


def _finish(
    item: tuple[SweepRun, subprocess.Popen[bytes], float, Any],
    total: int,
    echo: Callable[[str], None],
    metric: dict[str, Any] | None,
) -> None:
    run, process, started, handle = item
    handle.close()
    run.seconds = time.monotonic() - started
    text = run.log.read_text(errors="replace") if run.log else ""
    if run.run_dir is not None and not run.run_dir.is_dir():
        run.run_dir = None  # found by its id (_run_identity), never in its printed output
    if process.returncode == 0:
        run.status = "done"
        extra = ""
        name = (metric or {}).get("name")
        summary = run.run_dir / "summary.json" if run.run_dir else None
        if name and summary and summary.is_file():
            value = json.loads(summary.read_text()).get("metrics", {}).get(name)
            extra = f", {name} {value:.4g}" if isinstance(value, (int, float)) else ""
        echo(f"[{run.index}/{total}] done  {run.label()} in {run.seconds:.1f} s{extra}: {run.run_dir}")
    else:
        run.status = "failed"
        tail = "\n".join("    " + line for line in text.splitlines()[-15:])
        echo(
            f"[{run.index}/{total}] FAILED (exit {process.returncode}) {run.label()}; log {run.log}:\n{tail}"
        )


def _run_identity(run: SweepRun, runs_dir: Path) -> str:
    """A fresh run id for one try of a point (``<sweep>-<index>-<random>``); sets where its run will be.

    It reaches the run as ``WANDB_RUN_ID``, the way ``wandb agent`` names its runs (and never the
    id this process inherited), so a point that failed or was interrupted runs again as a new run,
    never over the old one's files, and its run is found by its id, not in its printed output.
    """
    run_id = f"{runs_dir.name}-{run.index:03d}-{secrets.token_hex(3)}"
    run.run_dir = runs_dir / run_id
    return run_id


def _stop(running: list[tuple[SweepRun, subprocess.Popen[bytes], float, Any]]) -> None:
    """SIGINT each run's process group (Lightning shuts down cleanly), SIGKILL what is left after 30 s."""
    for _, process, _, _ in running:
        _signal_group(process, signal.SIGINT)
    deadline = time.monotonic() + _GRACE_SECONDS
    for _, process, _, _ in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdl sweep",
        description="Run a W&B sweep config locally: every point a normal `tdl fit` run of experiment "
        "<sweep name>; finished runs are skipped, so the same command resumes an interrupted sweep.",
        epilog="then: tdl compare runs/<sweep name> --output sweep.png. Online: wandb sweep CONFIG; "
        "wandb agent <sweep id>",
    )
    parser.add_argument(
        "config", help="a W&B sweep config (YAML), e.g. experiments/sweeps/edge_of_chaos.yaml"
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=None,
        metavar="N",
        help="run at most N points (random/bayes: how many to draw; default run_cap)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="K",
        help="runs at once (default 1), each on its own GPU (round robin over CUDA_VISIBLE_DEVICES) "
        "and its share of the usable CPUs",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        metavar="i/N",
        help="run only the i-th (from 0) of N shares of the points, e.g. one task of a SLURM job array",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random/bayes draws (default 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``tdl sweep CONFIG [--max-runs N] [--parallel K] [--seed S] [--dry-run]``.

    Exits 130 when interrupted, and with an error naming the logs when a run failed.

    Example:
        >>> main(["experiments/sweeps/edge_of_chaos.yaml", "--dry-run"])  # doctest: +SKIP
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    report = run_sweep(
        args.config,
        max_runs=args.max_runs,
        parallel=args.parallel,
        dry_run=args.dry_run,
        seed=args.seed,
        shard=args.shard,
    )
    if report.interrupted:
        raise SystemExit(130)
    failed = [run for run in report.runs if run.status == "failed"]
    if failed:
        raise TDLError(
            f"{len(failed)} of {len(report.runs)} runs failed; their logs: "
            + ", ".join(str(run.log) for run in failed)
            + ". Fix and rerun: finished runs are skipped"
        )
    if not args.dry_run:
        print(f"compare them: tdl compare {report.runs_dir} --output {report.name}.png")


if __name__ == "__main__":
    try:
        main()
    except TDLError as err:
        print(f"tdl sweep: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
